/* cluster_roles.c — the child processes of test_cluster: the direct
 * publisher, the outbox writer, the relay and a group member. Each is the
 * test binary run with its role as argv[1]; SIGTERM asks it to finish. */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
#include "msgbus/inbox.h"
#include "msgbus/outbox.h"

/* ---- child: the direct publisher ------------------------------------------- */

struct publisher {
    msgbus_t *bus;
    const char *url, *topic, *run;
    PGconn *pg;
    int n;
    unsigned char *state; /* per message: 0 unpublished, 1 in flight, 2 confirmed */
    unsigned char *retried;
    int64_t *pub_us;
    int *todo; /* failed, to publish again */
    int ntodo;
    int *done; /* confirmed, not yet recorded */
    int ndone;
    long confirmed, failures;
    long replaced; /* producer replacements recorded, on this bus */
};

/* True when the bus is DOWN for good with a fatal (Kafka idempotent)
 * producer error: msgbus says to reopen the bus then. */
static bool fatal_down(msgbus_t *bus, char *reason, size_t size)
{
    return msgbus_state(bus, reason, size) == MSGBUS_STATE_DOWN && strstr(reason, "fatal") != NULL;
}

/* How many producers the bus replaced after a fatal error (Kafka's
 * detail.producers_replaced; 0 where there is no such figure). */
static long producers_replaced(msgbus_t *bus)
{
    char *json = NULL;
    long n = 0;
    if (msgbus_stats_json(bus, &json) != MSGBUS_OK)
        return 0;
    const char *p = strstr(json, "\"producers_replaced\"");
    if (p) {
        p += strlen("\"producers_replaced\"");
        while (*p == ':' || *p == ' ')
            p++;
        n = strtol(p, NULL, 10);
    }
    msgbus_stats_free(json);
    return n;
}

/* Records producer replacements not recorded yet (*seen: those that were). */
static void record_replaced(msgbus_t *bus, PGconn *pg, const char *run, const char *who, long *seen)
{
    long n = producers_replaced(bus);
    for (; *seen < n; (*seen)++) {
        fprintf(stderr, "%s: msgbus replaced its producer after a fatal error\n", who);
        pg_exec(pg, "INSERT INTO %s_events(who, what) VALUES ('%s', 'producer_replaced')", run, who);
    }
}

/* Records that a child had to reopen its bus, for the CLUSTER line. */
static void record_reopen(PGconn *pg, const char *run, const char *who, const char *reason)
{
    fprintf(stderr, "%s: reopening the bus (%s)\n", who, reason);
    pg_exec(pg, "INSERT INTO %s_events(who, what) VALUES ('%s', 'reopen')", run, who);
}

static void pub_report(void *opaque, const msgbus_report_t *r)
{
    struct publisher *p = opaque;
    int i = -1, key, seq;
    if (sscanf(r->msg_id, "d-%d-%d", &key, &seq) == 2)
        i = seq * NKEYS + key;
    if (i < 0 || i >= p->n || p->state[i] != 1) {
        fprintf(stderr, "publisher: report for an unknown message '%s'\n", r->msg_id);
        return;
    }
    if (r->status == MSGBUS_OK) {
        p->state[i] = 2;
        p->done[p->ndone++] = i;
        p->confirmed++;
    } else {
        /* A failed confirm: the broker may or may not have it. Publish it
         * again with the same id (the inbox absorbs a copy) and leave it
         * out of the order check, since it comes after later messages. */
        if (p->failures++ < 10)
            fprintf(stderr, "publisher: %s failed (%s: %s); publishing it again\n", r->msg_id,
                    msgbus_err_name(r->status), r->error);
        p->state[i] = 0;
        p->retried[i] = 1;
        p->todo[p->ntodo++] = i;
    }
}

static void pub_send(struct publisher *p, int i)
{
    msgbus_msg_t *m = make_msg('d', i, p->pub_us[i]);
    msgbus_err_t e;
    char reason[1024];
    while ((e = msgbus_publish(p->bus, p->topic, m, pub_report, p)) != MSGBUS_OK) {
        if (e == MSGBUS_ERR_QUEUE_FULL) {
            msgbus_poll(p->bus, 100, NULL);
        } else if (fatal_down(p->bus, reason, sizeof reason)) {
            /* The documented recipe: messages still in flight are
             * reported failed by the close (and go again), then a new bus. */
            record_reopen(p->pg, p->run, "publisher", reason);
            record_replaced(p->bus, p->pg, p->run, "publisher", &p->replaced);
            p->replaced = 0;
            msgbus_close(p->bus);
            if (msgbus_open(&p->bus, p->url, NULL) != MSGBUS_OK)
                die("publisher: reopen: %s", msgbus_last_error());
        } else {
            die("publisher: publish: %s: %s", msgbus_err_name(e), msgbus_last_error());
        }
    }
    p->state[i] = 1;
    msgbus_msg_free(m);
}

/* Records the confirmed ids in <run>_confirmed, one INSERT per batch. */
static void pub_record(struct publisher *p, PGconn *pg, const char *run)
{
    size_t cap = 64 + (size_t)p->ndone * 40;
    char *sql = malloc(cap);
    for (int off = 0; off < p->ndone;) {
        size_t len = (size_t)snprintf(sql, cap, "INSERT INTO %s_confirmed(id, retried) VALUES ", run);
        int end = off + 1000 < p->ndone ? off + 1000 : p->ndone;
        for (int j = off; j < end; j++) {
            int i = p->done[j];
            len += (size_t)snprintf(sql + len, cap - len, "%s('d-%d-%d',%s)", j > off ? "," : "",
                                    i % NKEYS, i / NKEYS, p->retried[i] ? "true" : "false");
        }
        pg_run(pg, sql);
        off = end;
    }
    free(sql);
    p->ndone = 0;
}

int publisher_main(const char *url, const char *topic, const char *run, int n, int seconds)
{
    PGconn *pg = pg_connect();
    struct publisher p = {.url = url, .topic = topic, .run = run, .pg = pg, .n = n};
    if (msgbus_open(&p.bus, url, NULL) != MSGBUS_OK)
        die("publisher: open: %s", msgbus_last_error());
    p.state = calloc((size_t)n, 1);
    p.retried = calloc((size_t)n, 1);
    p.pub_us = calloc((size_t)n, sizeof *p.pub_us);
    p.todo = calloc((size_t)n, sizeof *p.todo);
    p.done = calloc((size_t)n, sizeof *p.done);
    int *retry = calloc((size_t)n, sizeof *retry);
    int64_t t0 = now_us(), last_record = t0, last_retry = t0, last_stats = t0;
    int next = 0;
    while (p.confirmed < n && !g_stop) {
        int64_t now = now_us();
        /* Paced: message i is due at t0 + i × seconds / n. */
        while (next < n && t0 + (int64_t)next * seconds * 1000000 / n <= now) {
            p.pub_us[next] = now_us();
            pub_send(&p, next++);
        }
        /* Failed messages go again, in their order, at most every 100 ms
         * (while a queue has no leader, RabbitMQ refuses them at once). */
        if (p.ntodo > 0 && now - last_retry > 100000) {
            int k = p.ntodo;
            memcpy(retry, p.todo, (size_t)k * sizeof *retry);
            p.ntodo = 0;
            for (int j = 0; j < k; j++)
                pub_send(&p, retry[j]);
            last_retry = now;
        }
        msgbus_poll(p.bus, 5, NULL);
        if (now - last_record > 250000 || p.confirmed == n) {
            pub_record(&p, pg, run);
            last_record = now;
        }
        if (now - last_stats > 1000000) {
            record_replaced(p.bus, pg, run, "publisher", &p.replaced);
            last_stats = now;
        }
        if (next == n && now - t0 > (int64_t)(seconds + 300) * 1000000)
            die("publisher: %ld of %d messages confirmed 300 s after the last was published",
                p.confirmed, n);
    }
    pub_record(&p, pg, run);
    record_replaced(p.bus, pg, run, "publisher", &p.replaced);
    long retried = 0;
    for (int i = 0; i < n; i++)
        retried += p.retried[i];
    fprintf(stderr, "publisher: %ld confirmed, %ld failed confirms, %ld messages published again\n",
            p.confirmed, p.failures, retried);
    msgbus_close(p.bus);
    PQfinish(pg);
    free(p.state);
    free(p.retried);
    free(p.pub_us);
    free(p.todo);
    free(p.done);
    free(retry);
    return p.confirmed == n ? 0 : 2;
}

/* ---- child: the outbox writer ---------------------------------------------- */

/* Writes n outbox rows, paced like the publisher, each in a committed
 * transaction with its <run>_written row (the "business change"). */
int writer_main(const char *topic, const char *run, int n, int seconds)
{
    PGconn *pg = pg_connect();
    msgbus_outbox_t *ob = NULL;
    char table[96];
    snprintf(table, sizeof table, "%s_outbox", run);
    if (msgbus_outbox_open_pg(&ob, pg, table) != MSGBUS_OK)
        die("writer: outbox: %s", msgbus_last_error());
    int64_t t0 = now_us();
    int next = 0;
    while (next < n && !g_stop) {
        int64_t now = now_us();
        int due = next;
        while (due < n && t0 + (int64_t)due * seconds * 1000000 / n <= now)
            due++;
        if (due > next) {
            pg_exec(pg, "BEGIN");
            for (int i = next; i < due; i++) {
                msgbus_msg_t *m = make_msg('o', i, now_us());
                if (msgbus_outbox_put(ob, topic, m) != MSGBUS_OK)
                    die("writer: put: %s", msgbus_last_error());
                pg_exec(pg, "INSERT INTO %s_written(id) VALUES ('%s')", run, msgbus_msg_id(m));
                msgbus_msg_free(m);
            }
            pg_exec(pg, "COMMIT");
            next = due;
        }
        usleep(10000);
    }
    fprintf(stderr, "writer: %d outbox rows committed\n", next);
    msgbus_outbox_close(ob);
    PQfinish(pg);
    return next == n ? 0 : 2;
}

/* ---- child: the relay ------------------------------------------------------ */

int relay_main(const char *url, const char *run)
{
    PGconn *pg = pg_connect();
    msgbus_outbox_t *ob = NULL;
    msgbus_t *bus = NULL;
    char table[96];
    snprintf(table, sizeof table, "%s_outbox", run);
    if (msgbus_outbox_open_pg(&ob, pg, table) != MSGBUS_OK || msgbus_open(&bus, url, NULL) != MSGBUS_OK)
        die("relay: %s", msgbus_last_error());
    /* The writer is another process, so no wake-ups reach this relay: poll
     * often. A failed pass (a node just died) is retried within a second,
     * not after the default back-off that doubles up to 30 s. */
    msgbus_outbox_relay_opts_t o = {.poll_interval_ms = 50, .backoff_max_ms = 1000};
    if (msgbus_outbox_relay_start(ob, bus, &o) != MSGBUS_OK)
        die("relay: start: %s", msgbus_last_error());
    char reason[1024];
    long replaced = 0;
    for (int tick = 0; !g_stop; tick++) {
        usleep(50000);
        if (tick % 20 == 0)
            record_replaced(bus, pg, run, "relay", &replaced);
        if (fatal_down(bus, reason, sizeof reason)) {
            /* Rows published on the dead bus and not confirmed stay
             * pending: the new bus publishes them again (same ids). */
            record_reopen(pg, run, "relay", reason);
            msgbus_outbox_relay_stop(ob);
            record_replaced(bus, pg, run, "relay", &replaced);
            replaced = 0;
            msgbus_close(bus);
            if (msgbus_open(&bus, url, NULL) != MSGBUS_OK ||
                msgbus_outbox_relay_start(ob, bus, &o) != MSGBUS_OK)
                die("relay: reopen: %s", msgbus_last_error());
        }
    }
    msgbus_outbox_relay_stop(ob);
    msgbus_outbox_relay_counters_t rc;
    msgbus_outbox_relay_counters(ob, &rc);
    fprintf(stderr, "relay %d: %" PRIu64 " rows relayed in %" PRIu64 " passes, %" PRIu64 " failed\n",
            (int)getpid(), rc.relayed, rc.passes, rc.failures);
    msgbus_outbox_close(ob);
    msgbus_close(bus);
    PQfinish(pg);
    return 0;
}

/* ---- child: a group member ------------------------------------------------- */

struct member {
    PGconn *pg;
    const char *run;
    int idx;
};

/* Applies one message: its effects row, in the inbox's transaction. */
static int apply(void *opaque, msgbus_msg_t *m)
{
    struct member *mb = opaque;
    size_t len;
    const char *pl = msgbus_msg_payload(m, &len);
    char text[128], src;
    int key, seq;
    long long pub;
    snprintf(text, sizeof text, "%.*s", (int)(len < 127 ? len : 127), pl);
    if (sscanf(text, "%c %d %d %lld", &src, &key, &seq, &pub) != 4) {
        fprintf(stderr, "member %d: malformed payload '%s'\n", mb->idx, text);
        return 1;
    }
    char sql[512];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s_effects(id, source, key, seq, member, pub_us) "
             "VALUES ($1, '%c', %d, %d, %d, %lld)",
             mb->run, src, key, seq, mb->idx, pub);
    const char *id = msgbus_msg_id(m);
    PGresult *r = PQexecParams(mb->pg, sql, 1, NULL, &id, NULL, NULL, 0);
    int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : 1;
    if (rc)
        fprintf(stderr, "member %d: %s\n", mb->idx, PQresultErrorMessage(r));
    PQclear(r);
    return rc;
}

int member_main(const char *url, const char *topic, const char *group, const char *run, int idx)
{
    struct member mb = {.pg = pg_connect(), .run = run, .idx = idx};
    msgbus_inbox_t *ib = NULL;
    msgbus_t *bus = NULL;
    msgbus_sub_t *sub = NULL;
    char table[96];
    snprintf(table, sizeof table, "%s_inbox", run);
    if (msgbus_inbox_open_pg(&ib, mb.pg, group, table) != MSGBUS_OK)
        die("member %d: inbox: %s", idx, msgbus_last_error());
    if (msgbus_open(&bus, url, NULL) != MSGBUS_OK)
        die("member %d: open: %s", idx, msgbus_last_error());
    /* Retrying forever: a message this member cannot apply now (the
     * database said no) must never become a dead letter in this test. */
    if (msgbus_subscribe_ex(bus, topic, group, "retry_max_attempts=0&dlq=off&retry_initial_ms=100",
                            &sub) != MSGBUS_OK)
        die("member %d: subscribe: %s", idx, msgbus_last_error());
    fprintf(stderr, "member %d (%d): subscribed\n", idx, (int)getpid());
    long n[3] = {0}, errors = 0;
    while (!g_stop) {
        msgbus_msg_t *m = NULL;
        msgbus_err_t e = msgbus_receive(sub, 200, &m);
        if (e == MSGBUS_ERR_TIMEOUT)
            continue;
        if (e != MSGBUS_OK)
            die("member %d: receive: %s: %s", idx, msgbus_err_name(e), msgbus_last_error());
        msgbus_inbox_outcome_t out = MSGBUS_INBOX_REJECTED;
        e = msgbus_inbox_handle(ib, m, apply, &mb, &out);
        if (e != MSGBUS_OK && errors++ < 10)
            fprintf(stderr, "member %d: inbox: %s: %s\n", idx, msgbus_err_name(e), msgbus_last_error());
        n[out]++;
        msgbus_msg_free(m);
    }
    fprintf(stderr, "member %d (%d): applied %ld, duplicates %ld, rejected %ld, errors %ld\n", idx,
            (int)getpid(), n[0], n[1], n[2], errors);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    msgbus_inbox_close(ib);
    PQfinish(mb.pg);
    return 0;
}
