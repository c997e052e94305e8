/*
 * test_cluster.c — msgbus on real 3-node clusters (issue 19): a stream of
 * keyed messages, half published directly with confirms and half through
 * a PostgreSQL outbox and its relay, consumed by a group of three members
 * that apply every message through the inbox, while the test SIGKILLs a
 * broker node leading the busiest partition / the quorum queue, the node
 * the publisher and one member are connected to, one member and the relay.
 * Afterwards every confirmed message must have been applied exactly once,
 * and (Kafka) in per-key order; the recovery time of each fault is
 * measured. See docs/clusters.md.
 *
 *   test_cluster kafka|amqp           the test (cluster from .brokers/env)
 *   test_cluster kafka|amqp smoke     the same against the single brokers,
 *                                     without node faults (a development aid)
 *
 * The binary is also every child process it starts (argv[1] names the
 * role): publisher, writer, relay, member. Children die with the test
 * (PR_SET_PDEATHSIG) and are killed on every exit path. What they share is
 * in PostgreSQL, in tables named after the run:
 *   <run>_effects    one row per APPLIED message, written in the inbox's
 *                    transaction; no unique constraint, so duplicates count
 *   <run>_confirmed  direct messages whose confirm arrived (retried: the
 *                    publisher had to publish it again after a failure)
 *   <run>_written    outbox messages, written in the outbox row's transaction
 *   <run>_outbox, <run>_inbox   msgbus's own tables
 * All are dropped at the end; so are the topic (Kafka) or the queue and
 * exchange (RabbitMQ).
 *
 * Environment: MSGBUS_TEST_{KAFKA,AMQP}_CLUSTER_URL and MSGBUS_TEST_PG_URL
 * (missing: FAIL); MSGBUS_CLUSTER_MESSAGES (default 50000) and
 * MSGBUS_CLUSTER_SECONDS (default 75: how long the stream is paced to
 * last).
 */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "msgbus/inbox.h"
#include "msgbus/msgbus.h"
#include "msgbus/outbox.h"

#ifdef CLUSTER_WITH_KAFKA
#include <librdkafka/rdkafka.h>
#endif
#ifdef CLUSTER_WITH_AMQP
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#ifndef CLUSTER_REPO
#error "CLUSTER_REPO must name the source tree (for scripts/brokers)"
#endif

enum { NKEYS = 64 };

static char g_exe[4096];
static volatile sig_atomic_t g_stop;

static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

/* Wall-clock microseconds: the payloads carry them from one process to
 * another and PostgreSQL's clock_timestamp() is compared with them. */
static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void on_term(int sig)
{
    (void)sig;
    g_stop = 1;
}

static const char *env_or_die(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        die("%s is not set: this test needs it (scripts/brokers up, scripts/brokers cluster up, "
            "then source .brokers/env; scripts/test does all of that)",
            name);
    return v;
}

static int env_int(const char *name, int def)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : def;
}

/* ---- PostgreSQL ------------------------------------------------------------ */

static PGconn *pg_connect(void)
{
    PGconn *c = PQconnectdb(env_or_die("MSGBUS_TEST_PG_URL"));
    if (PQstatus(c) != CONNECTION_OK)
        die("PostgreSQL: %s", PQerrorMessage(c));
    return c;
}

/* Runs one statement; dies on failure. */
static void pg_exec(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void pg_exec(PGconn *c, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        die("%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* One number from a query (NULL reads as -1). */
static double pg_num(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static double pg_num(PGconn *c, const char *fmt, ...)
{
    char sql[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        die("%s: %s", sql, PQresultErrorMessage(r));
    double v = PQgetisnull(r, 0, 0) ? -1 : atof(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* ---- messages -------------------------------------------------------------- */

/* Message i of a source ('d' direct, 'o' outbox): key i % NKEYS, per-key
 * seq i / NKEYS; id "<src>-<key>-<seq>" so that a stray is recognisable;
 * payload "<src> <key> <seq> <publish time µs>". */
static msgbus_msg_t *make_msg(char src, int i, int64_t pub_us)
{
    int key = i % NKEYS, seq = i / NKEYS;
    char id[64], k[16], text[96];
    snprintf(id, sizeof id, "%c-%d-%d", src, key, seq);
    snprintf(k, sizeof k, "k%d", key);
    snprintf(text, sizeof text, "%c %d %d %" PRId64, src, key, seq, pub_us);
    msgbus_msg_t *m = NULL;
    if (msgbus_msg_new(&m, text, strlen(text)) != MSGBUS_OK || msgbus_msg_set_id(m, id) != MSGBUS_OK ||
        msgbus_msg_set_key(m, k, strlen(k)) != MSGBUS_OK)
        die("making message %s: %s", id, msgbus_last_error());
    return m;
}

/* ---- child: the direct publisher ------------------------------------------- */

struct publisher {
    msgbus_t *bus;
    const char *topic;
    int n;
    unsigned char *state; /* per message: 0 unpublished, 1 in flight, 2 confirmed */
    unsigned char *retried;
    int64_t *pub_us;
    int *todo; /* failed, to publish again */
    int ntodo;
    int *done; /* confirmed, not yet recorded */
    int ndone;
    long confirmed, failures;
};

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
    while ((e = msgbus_publish(p->bus, p->topic, m, pub_report, p)) == MSGBUS_ERR_QUEUE_FULL)
        msgbus_poll(p->bus, 100, NULL);
    if (e != MSGBUS_OK)
        die("publisher: publish: %s: %s", msgbus_err_name(e), msgbus_last_error());
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
        pg_exec(pg, "%s", sql);
        off = end;
    }
    free(sql);
    p->ndone = 0;
}

static int publisher_main(const char *url, const char *topic, const char *run, int n, int seconds)
{
    struct publisher p = {.topic = topic, .n = n};
    PGconn *pg = pg_connect();
    if (msgbus_open(&p.bus, url, NULL) != MSGBUS_OK)
        die("publisher: open: %s", msgbus_last_error());
    p.state = calloc((size_t)n, 1);
    p.retried = calloc((size_t)n, 1);
    p.pub_us = calloc((size_t)n, sizeof *p.pub_us);
    p.todo = calloc((size_t)n, sizeof *p.todo);
    p.done = calloc((size_t)n, sizeof *p.done);
    int64_t t0 = now_us(), last_record = t0;
    int next = 0;
    while (p.confirmed < n && !g_stop) {
        int64_t now = now_us();
        /* Paced: message i is due at t0 + i × seconds / n. */
        while (next < n && t0 + (int64_t)next * seconds * 1000000 / n <= now) {
            p.pub_us[next] = now_us();
            pub_send(&p, next++);
        }
        while (p.ntodo > 0)
            pub_send(&p, p.todo[--p.ntodo]);
        msgbus_poll(p.bus, 5, NULL);
        if (now - last_record > 250000 || p.confirmed == n) {
            pub_record(&p, pg, run);
            last_record = now;
        }
        if (next == n && now - t0 > (int64_t)(seconds + 300) * 1000000)
            die("publisher: %ld of %d messages confirmed 300 s after the last was published",
                p.confirmed, n);
    }
    pub_record(&p, pg, run);
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
    return p.confirmed == n ? 0 : 2;
}

/* ---- child: the outbox writer ---------------------------------------------- */

/* Writes n outbox rows, paced like the publisher, each in a committed
 * transaction with its <run>_written row (the "business change"). */
static int writer_main(const char *topic, const char *run, int n, int seconds)
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

static int relay_main(const char *url, const char *run)
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
    while (!g_stop)
        usleep(50000);
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

static int member_main(const char *url, const char *topic, const char *group, const char *run, int idx)
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

/* ---- the orchestrator: children -------------------------------------------- */

struct child {
    pid_t pid;
    char role[16];
    char *argv[10];
};

enum { C_PUB, C_WRITER, C_RELAY, C_M0, C_M1, C_M2, NCHILD };
static struct child g_child[NCHILD];

static void spawn(struct child *c)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Never outlive the test, however it ends. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        execv(g_exe, c->argv);
        _exit(127);
    }
    c->pid = pid;
}

static void kill_children(void)
{
    for (int i = 0; i < NCHILD; i++)
        if (g_child[i].pid > 0) {
            kill(g_child[i].pid, SIGKILL);
            waitpid(g_child[i].pid, NULL, 0);
            g_child[i].pid = 0;
        }
}

static void on_fatal_signal(int sig)
{
    for (int i = 0; i < NCHILD; i++)
        if (g_child[i].pid > 0)
            kill(g_child[i].pid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* SIGTERM, then SIGKILL after `grace_ms`; returns the exit status. */
static int stop_child(struct child *c, int grace_ms)
{
    if (c->pid <= 0)
        return 0;
    kill(c->pid, SIGTERM);
    int st = 0;
    for (int waited = 0;; waited += 50) {
        pid_t r = waitpid(c->pid, &st, WNOHANG);
        if (r == c->pid)
            break;
        if (waited >= grace_ms) {
            fprintf(stderr, "%s %d did not stop within %d ms: killed\n", c->role, (int)c->pid, grace_ms);
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            break;
        }
        usleep(50000);
    }
    c->pid = 0;
    return st;
}

/* A child that ended on its own: fails the test unless it is the
 * publisher or the writer ending well. */
static void reap(bool *pub_done, bool *writer_done)
{
    for (int i = 0; i < NCHILD; i++) {
        struct child *c = &g_child[i];
        int st = 0;
        if (c->pid <= 0 || waitpid(c->pid, &st, WNOHANG) != c->pid)
            continue;
        c->pid = 0;
        bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (ok && i == C_PUB)
            *pub_done = true;
        else if (ok && i == C_WRITER)
            *writer_done = true;
        else
            die("%s ended unexpectedly (%s %d)", c->role, WIFEXITED(st) ? "exit" : "signal",
                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
}

/* ---- the orchestrator: the cluster ----------------------------------------- */

/* Runs `scripts/brokers cluster <args>`; its whole output goes to `out`
 * (may be NULL). Dies when it fails. */
static void cluster_cmd(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void cluster_cmd(char *out, size_t n, const char *fmt, ...)
{
    char args[512], cmd[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "%s/scripts/brokers cluster %s 2>&1", CLUSTER_REPO, args);
    FILE *f = popen(cmd, "r");
    if (!f)
        die("%s: %s", cmd, strerror(errno));
    char line[512], all[4096] = "";
    while (fgets(line, sizeof line, f))
        if (strlen(all) + strlen(line) < sizeof all)
            strcat(all, line);
    int st = pclose(f);
    if (st != 0)
        die("'%s' failed (status %d): %s", cmd, st, all);
    fprintf(stderr, "cluster %s: %s", args, all[0] ? all : "(no output)\n");
    if (out)
        snprintf(out, n, "%s", all);
}

/* The first word of a command's output: a node name. */
static void cluster_node(char *node, size_t n, const char *fmt, const char *a, const char *b)
{
    char out[4096];
    cluster_cmd(out, sizeof out, fmt, a, b);
    snprintf(node, n, "%.*s", (int)strcspn(out, " \t\r\n"), out);
    if (!node[0])
        die("'cluster %s' named no node", fmt);
}

/* The cluster URL's hosts, in order; node i is <prefix><i+1> (k1…k3 for
 * Kafka, r1…r3 for RabbitMQ: scripts/brokers writes them in node order). */
struct cluster_url {
    char scheme_auth[256]; /* "kafka://" or "amqp://user:pass@" */
    char hosts[3][64];
    int nhosts;
    char rest[512]; /* "/vhost?…" or "?…" or "" */
};

static void parse_url(const char *url, struct cluster_url *u)
{
    memset(u, 0, sizeof *u);
    const char *p = strstr(url, "://");
    if (!p)
        die("malformed cluster URL");
    p += 3;
    const char *at = strchr(p, '@'), *end = p + strcspn(p, "/?");
    if (at && at < end)
        p = at + 1;
    snprintf(u->scheme_auth, sizeof u->scheme_auth, "%.*s", (int)(p - url), url);
    snprintf(u->rest, sizeof u->rest, "%s", end);
    while (p < end && u->nhosts < 3) {
        size_t l = strcspn(p, ",/?");
        snprintf(u->hosts[u->nhosts++], sizeof u->hosts[0], "%.*s", (int)l, p);
        p += l + (*(p + l) == ',');
    }
}

/* The URL with host `first` first, then the others in order, plus extra
 * options. */
static void url_from(char *buf, size_t n, const struct cluster_url *u, int first, const char *extra)
{
    int len = snprintf(buf, n, "%s%s", u->scheme_auth, u->hosts[first]);
    for (int i = 0; i < u->nhosts; i++)
        if (i != first)
            len += snprintf(buf + len, n - (size_t)len, ",%s", u->hosts[i]);
    const char *rest = u->rest;
    bool kafka = strncmp(u->scheme_auth, "kafka", 5) == 0;
    if (!kafka && !*rest)
        rest = "/";
    len += snprintf(buf + len, n - (size_t)len, "%s", rest);
    if (extra && *extra)
        snprintf(buf + len, n - (size_t)len, "%s%s", strchr(buf, '?') ? "&" : "?", extra);
}

#ifdef CLUSTER_WITH_KAFKA
/* The partition of `topic` with the highest high watermark. */
static int busiest_partition(const struct cluster_url *u, const char *topic, int64_t *hw)
{
    char brokers[256] = "", err[512];
    for (int i = 0; i < u->nhosts; i++)
        snprintf(brokers + strlen(brokers), sizeof brokers - strlen(brokers), "%s%s", i ? "," : "",
                 u->hosts[i]);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk)
        die("rd_kafka_new: %s", err);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topic, NULL);
    if (rd_kafka_metadata(rk, 0, t, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1)
        die("metadata of %s: failed", topic);
    int best = -1;
    *hw = -1;
    for (int p = 0; p < md->topics[0].partition_cnt; p++) {
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            die("watermarks of %s [%d]: %s", topic, p, rd_kafka_err2str(e));
        fprintf(stderr, "partition %d: high watermark %" PRId64 "\n", p, hi);
        if (hi > *hw) {
            *hw = hi;
            best = p;
        }
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    rd_kafka_destroy(rk);
    return best;
}

static void delete_topic(const struct cluster_url *u, const char *topic)
{
    char brokers[256] = "", err[512];
    for (int i = 0; i < u->nhosts; i++)
        snprintf(brokers + strlen(brokers), sizeof brokers - strlen(brokers), "%s%s", i ? "," : "",
                 u->hosts[i]);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (!rk)
        die("rd_kafka_new: %s", err);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DeleteTopic_t *dt = rd_kafka_DeleteTopic_new(topic);
    rd_kafka_DeleteTopics(rk, &dt, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 15000);
    const char *why = !ev ? "timed out" : rd_kafka_event_error(ev) ? rd_kafka_event_error_string(ev) : NULL;
    if (ev && !why) {
        size_t cnt = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_DeleteTopics_result_topics(rd_kafka_event_DeleteTopics_result(ev), &cnt);
        if (cnt == 1 && rd_kafka_topic_result_error(res[0]))
            why = rd_kafka_topic_result_error_string(res[0]);
    }
    if (why)
        fprintf(stderr, "deleting topic %s: %s (left behind)\n", topic, why);
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_DeleteTopic_destroy(dt);
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy(rk);
}
#endif

#ifdef CLUSTER_WITH_AMQP
/* Deletes the group's queue and the topic's exchange (msgbus has no call
 * for it), through host `h` of the cluster URL. */
static void delete_queue(const struct cluster_url *u, int h, const char *topic, const char *group)
{
    char url[1024], q[256];
    snprintf(url, sizeof url, "%s%s%s", u->scheme_auth, u->hosts[h], u->rest);
    char *query = strchr(url, '?');
    if (query)
        *query = 0;
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        fprintf(stderr, "deleting queue: cannot parse the cluster URL\n");
        return;
    }
    if (!ci.vhost[0])
        ci.vhost = "/"; /* amqp_parse_url reads ".../" as the vhost "" */
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(conn);
    snprintf(q, sizeof q, "%s.%s", topic, group);
    const char *why = NULL;
    if (!s || amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK)
        why = "cannot connect";
    else if (amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password)
                 .reply_type != AMQP_RESPONSE_NORMAL)
        why = "login failed";
    else if (!amqp_channel_open(conn, 1))
        why = "channel.open failed";
    else if (!amqp_queue_delete(conn, 1, amqp_cstring_bytes(q), 0, 0))
        why = "queue.delete failed";
    else if (!amqp_exchange_delete(conn, 1, amqp_cstring_bytes(topic), 0))
        why = "exchange.delete failed";
    if (why)
        fprintf(stderr, "deleting queue %s: %s (left behind)\n", q, why);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}
#endif

/* ---- the orchestrator: the run --------------------------------------------- */

struct fault {
    const char *name;
    int at_percent;
    int64_t kill_us;
    char node[16];
    double rejoin_s; /* node faults: what `cluster start` said */
    double recover_s, first_s;
};

/* From the kill until, for EVERY (path, key), the first applied message
 * published after the kill: the time by which the whole stream flows
 * again (a fault that stops one partition would otherwise look recovered
 * at once through the others). Also the first such message of any key. */
static void measure(PGconn *pg, const char *run, struct fault *f)
{
    f->recover_s = pg_num(pg,
                          "SELECT max(t) FROM (SELECT min(extract(epoch FROM applied_at) * 1e6) - %" PRId64
                          " AS t FROM %s_effects WHERE pub_us > %" PRId64 " GROUP BY source, key) x",
                          f->kill_us, run, f->kill_us) /
                   1e6;
    f->first_s = pg_num(pg,
                        "SELECT min(extract(epoch FROM applied_at) * 1e6) - %" PRId64
                        " FROM %s_effects WHERE pub_us > %" PRId64,
                        f->kill_us, run, f->kill_us) /
                 1e6;
    double keys = pg_num(pg, "SELECT count(DISTINCT (source, key)) FROM %s_effects WHERE pub_us > %" PRId64,
                         run, f->kill_us);
    fprintf(stderr, "%s%s%s: first applied message published after the kill %.2f s after it, every "
            "path and key %.2f s (%d of %d keys)\n",
            f->name, f->node[0] ? " " : "", f->node, f->first_s, f->recover_s, (int)keys, 2 * NKEYS);
    if ((int)keys != 2 * NKEYS)
        die("%s: only %d of %d keys had a message published after the kill: the fault was not "
            "mid-stream (raise MSGBUS_CLUSTER_SECONDS)",
            f->name, (int)keys, 2 * NKEYS);
}

static double run_start(const char *node)
{
    char out[4096];
    int64_t t0 = now_us();
    cluster_cmd(out, sizeof out, "start %s", node);
    /* `cluster start` says "k2: rejoined in 12.3 s"; without that line,
     * the command's own duration stands in. */
    const char *p = strstr(out, "rejoined in ");
    return p ? atof(p + 12) : (double)(now_us() - t0) / 1e6;
}

static int orchestrate(const char *kind, bool smoke)
{
    bool kafka = strcmp(kind, "kafka") == 0;
    char var[64];
    snprintf(var, sizeof var, smoke ? "MSGBUS_TEST_%s_URL" : "MSGBUS_TEST_%s_CLUSTER_URL",
             kafka ? "KAFKA" : "AMQP");
    const char *base = env_or_die(var);
    env_or_die("MSGBUS_TEST_PG_URL");
    int total = env_int("MSGBUS_CLUSTER_MESSAGES", 50000), seconds = env_int("MSGBUS_CLUSTER_SECONDS", 75);
    int ndirect = total / 2, noutbox = total - ndirect;
    struct cluster_url u;
    parse_url(base, &u);
    if (!smoke && u.nhosts != 3)
        die("%s names %d hosts, want 3", var, u.nhosts);

    /* Options every process of the run uses: replicated topics (until
     * msgbus chooses min(3, brokers) itself) and a member session that
     * notices a killed member in 10 s instead of librdkafka's 45; quorum
     * queues on RabbitMQ (until a multi-host URL makes them the default). */
    const char *opts = kafka ? (smoke ? "" : "replication_factor=3")
                             : (smoke ? "" : "queue_type=quorum");
    char member_opts[128];
    snprintf(member_opts, sizeof member_opts, "%s%s%s", opts, *opts && kafka ? "&" : "",
             kafka ? "session.timeout.ms=10000" : "");
    /* The publisher and member 0 connect to node 1 first; the other
     * processes, and the declare (which places the quorum queue's leader
     * on the node it is declared through), to node 2 first. */
    int conn_node = 0, other = u.nhosts > 1 ? 1 : 0;
    char url_conn[1024], url_conn_m[1024], url_other[1024], url_other_m[1024];
    url_from(url_conn, sizeof url_conn, &u, conn_node, opts);
    url_from(url_conn_m, sizeof url_conn_m, &u, conn_node, member_opts);
    url_from(url_other, sizeof url_other, &u, other, opts);
    url_from(url_other_m, sizeof url_other_m, &u, other, member_opts);
    char conn_name[16] = "none";
    if (!smoke)
        cluster_node(conn_name, sizeof conn_name, "node-of %s%s", strrchr(u.hosts[conn_node], ':') + 1, "");

    char run[40], topic[64], group[] = "members", rid[32];
    snprintf(rid, sizeof rid, "%d_%06x", (int)getpid(), (unsigned)(now_us() & 0xffffff));
    snprintf(run, sizeof run, "cl_%s", rid);
    snprintf(topic, sizeof topic, "cluster-%s-%s", kind, rid);
    fprintf(stderr, "run %s: %s, %d messages (%d direct, %d outbox) over ~%d s, topic %s%s\n", run,
            kind, total, ndirect, noutbox, seconds, topic, smoke ? ", SMOKE: no node faults" : "");

    PGconn *pg = pg_connect();
    pg_exec(pg, "SET client_min_messages = warning");
    pg_exec(pg, "CREATE TABLE %s_effects (serial bigserial PRIMARY KEY, id text NOT NULL, source char(1) "
            "NOT NULL, key int NOT NULL, seq int NOT NULL, member int NOT NULL, pub_us bigint NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT clock_timestamp())", run);
    pg_exec(pg, "CREATE INDEX ON %s_effects(id)", run);
    pg_exec(pg, "CREATE TABLE %s_confirmed (id text NOT NULL, retried bool NOT NULL)", run);
    pg_exec(pg, "CREATE TABLE %s_written (id text NOT NULL)", run);
    char table[96];
    /* Created once here, so that the children's opens find them. */
    msgbus_outbox_t *ob = NULL;
    msgbus_inbox_t *ib = NULL;
    snprintf(table, sizeof table, "%s_outbox", run);
    if (msgbus_outbox_open_pg(&ob, pg, table) != MSGBUS_OK)
        die("outbox: %s", msgbus_last_error());
    msgbus_outbox_close(ob);
    snprintf(table, sizeof table, "%s_inbox", run);
    if (msgbus_inbox_open_pg(&ib, pg, group, table) != MSGBUS_OK)
        die("inbox: %s", msgbus_last_error());
    msgbus_inbox_close(ib);

    msgbus_t *bus = NULL;
    if (msgbus_open(&bus, url_other, NULL) != MSGBUS_OK || msgbus_declare(bus, topic, group) != MSGBUS_OK)
        die("declaring %s/%s: %s", topic, group, msgbus_last_error());
    msgbus_close(bus);

    char sn[16], so[16], smi[3][8];
    snprintf(sn, sizeof sn, "%d", ndirect);
    snprintf(so, sizeof so, "%d", noutbox);
    char ss[16];
    snprintf(ss, sizeof ss, "%d", seconds);
    struct child *c;
    for (int i = 0; i < 3; i++) {
        c = &g_child[C_M0 + i];
        snprintf(c->role, sizeof c->role, "member %d", i);
        snprintf(smi[i], sizeof smi[i], "%d", i);
        char **a = c->argv;
        a[0] = g_exe, a[1] = "member", a[2] = i == 0 ? url_conn_m : url_other_m, a[3] = topic,
        a[4] = group, a[5] = run, a[6] = smi[i], a[7] = NULL;
    }
    c = &g_child[C_PUB];
    snprintf(c->role, sizeof c->role, "publisher");
    c->argv[0] = g_exe, c->argv[1] = "publisher", c->argv[2] = url_conn, c->argv[3] = topic,
    c->argv[4] = run, c->argv[5] = sn, c->argv[6] = ss, c->argv[7] = NULL;
    c = &g_child[C_WRITER];
    snprintf(c->role, sizeof c->role, "writer");
    c->argv[0] = g_exe, c->argv[1] = "writer", c->argv[2] = topic, c->argv[3] = run, c->argv[4] = so,
    c->argv[5] = ss, c->argv[6] = NULL;
    c = &g_child[C_RELAY];
    snprintf(c->role, sizeof c->role, "relay");
    c->argv[0] = g_exe, c->argv[1] = "relay", c->argv[2] = url_other, c->argv[3] = run, c->argv[4] = NULL;

    for (int i = C_M0; i <= C_M2; i++)
        spawn(&g_child[i]);
    /* Let the group form before the stream starts, so that the first
     * seconds do not measure three members joining one after another. */
    sleep(kafka ? 5 : 1);
    spawn(&g_child[C_RELAY]);
    spawn(&g_child[C_WRITER]);
    int64_t t0 = now_us();
    spawn(&g_child[C_PUB]);

    struct fault f[4] = {{"leader_kill", 15, 0, "", 0, 0, 0},
                         {"conn_kill", 35, 0, "", 0, 0, 0},
                         {"member_kill", 55, 0, "", 0, 0, 0},
                         {"relay_kill", 70, 0, "", 0, 0, 0}};
    int next_fault = 0;
    bool pub_done = false, writer_done = false;
    int64_t last_print = 0;
    for (;;) {
        reap(&pub_done, &writer_done);
        double applied = pg_num(pg, "SELECT count(*) FROM %s_effects", run);
        if (now_us() - last_print > 5000000) {
            fprintf(stderr, "%5.1f s: %d applied (%.0f %%)\n", (double)(now_us() - t0) / 1e6,
                    (int)applied, 100.0 * applied / total);
            last_print = now_us();
        }
        if (next_fault < 4 && applied * 100 >= (double)total * f[next_fault].at_percent) {
            struct fault *x = &f[next_fault++];
            if (pub_done || writer_done)
                die("%s: the stream ended before the fault was due (raise MSGBUS_CLUSTER_SECONDS)",
                    x->name);
            fprintf(stderr, "%5.1f s: %s at %d %% applied\n", (double)(now_us() - t0) / 1e6, x->name,
                    x->at_percent);
            if (next_fault <= 2) {
                if (smoke) {
                    fprintf(stderr, "smoke: no node to kill\n");
#ifdef CLUSTER_WITH_KAFKA
                    if (kafka && next_fault == 1) {
                        int64_t hw;
                        int p = busiest_partition(&u, topic, &hw);
                        fprintf(stderr, "busiest partition %d (%" PRId64 ")\n", p, hw);
                    }
#endif
                    x->kill_us = now_us();
                    continue;
                }
                if (next_fault == 1) {
                    if (kafka) {
#ifdef CLUSTER_WITH_KAFKA
                        int64_t hw;
                        int p = busiest_partition(&u, topic, &hw);
                        char ps[16];
                        snprintf(ps, sizeof ps, "%d", p);
                        cluster_node(x->node, sizeof x->node, "leader kafka %s %s", topic, ps);
#endif
                    } else {
                        char q[160];
                        snprintf(q, sizeof q, "%s.%s", topic, group);
                        cluster_node(x->node, sizeof x->node, "leader rabbitmq %s%s", q, "");
                    }
                } else {
                    snprintf(x->node, sizeof x->node, "%s", conn_name);
                }
                cluster_cmd(NULL, 0, "kill %s", x->node);
                x->kill_us = now_us();
                /* The cluster works on two nodes for a while before the
                 * third comes back. */
                sleep(5);
                x->rejoin_s = run_start(x->node);
            } else {
                struct child *v = &g_child[next_fault == 3 ? C_M2 : C_RELAY];
                kill(v->pid, SIGKILL);
                x->kill_us = now_us();
                waitpid(v->pid, NULL, 0);
                v->pid = 0;
                sleep(next_fault == 3 ? 3 : 1);
                spawn(v);
            }
            continue;
        }
        if (pub_done && writer_done)
            break;
        usleep(250000);
    }
    if (next_fault < 4)
        die("the stream ended after %d faults of 4 (raise MSGBUS_CLUSTER_SECONDS)", next_fault);

    /* Everything confirmed or committed must be applied; bounded. */
    char missing_sql[512];
    snprintf(missing_sql, sizeof missing_sql,
             "SELECT count(*) FROM (SELECT id FROM %s_confirmed UNION SELECT id FROM %s_written) a "
             "WHERE NOT EXISTS (SELECT 1 FROM %s_effects e WHERE e.id = a.id)",
             run, run, run);
    double lost = 0;
    for (int64_t t = now_us(); (lost = pg_num(pg, "%s", missing_sql)) > 0 && now_us() - t < 180000000;) {
        reap(&pub_done, &writer_done);
        sleep(1);
    }
    double total_s = (double)(now_us() - t0) / 1e6;
    sleep(2); /* late copies, if any, get their chance to show up as duplicates */

    int rc_members = 0;
    for (int i = C_M0; i <= C_M2; i++)
        rc_members |= stop_child(&g_child[i], 20000);
    stop_child(&g_child[C_RELAY], 20000);

    double confirmed = pg_num(pg, "SELECT count(*) FROM %s_confirmed", run);
    double written = pg_num(pg, "SELECT count(*) FROM %s_written", run);
    double dup = pg_num(pg, "SELECT count(*) FROM (SELECT id FROM %s_effects GROUP BY id HAVING count(*) > 1) x",
                        run);
    double stray = pg_num(pg,
                          "SELECT count(*) FROM %s_effects e WHERE NOT EXISTS (SELECT 1 FROM %s_confirmed c "
                          "WHERE c.id = e.id) AND NOT EXISTS (SELECT 1 FROM %s_written w WHERE w.id = e.id)",
                          run, run, run);
    double retried = pg_num(pg, "SELECT count(*) FROM %s_confirmed WHERE retried", run);
    /* Per (source, key), in the order applied (serial), each seq must be
     * above the one before; messages published again after a failed
     * confirm are left out (they come after later ones by design). */
    double order = pg_num(pg,
                          "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY source, key ORDER "
                          "BY serial) AS prev FROM %s_effects e WHERE NOT EXISTS (SELECT 1 FROM %s_confirmed "
                          "c WHERE c.id = e.id AND c.retried)) x WHERE prev IS NOT NULL AND seq <= prev",
                          run, run);
    for (int i = 0; i < 4; i++)
        measure(pg, run, &f[i]);
    double leader_recover = f[0].recover_s, conn_recover = f[1].recover_s;
    printf("CLUSTER backend=%s messages=%d direct=%d outbox=%d lost=%d dup=%d stray=%d "
           "order_violations=%d leader_kill=%s leader_recover_s=%.1f leader_rejoin_s=%.1f conn_kill=%s "
           "conn_recover_s=%.1f conn_rejoin_s=%.1f member_recover_s=%.1f relay_recover_s=%.1f "
           "total_s=%.1f%s\n",
           kind, total, (int)confirmed, (int)written, (int)lost, (int)dup, (int)stray, (int)order,
           smoke ? "none" : f[0].node, leader_recover, f[0].rejoin_s, smoke ? "none" : f[1].node,
           conn_recover, f[1].rejoin_s, f[2].recover_s, f[3].recover_s, total_s, smoke ? " smoke=1" : "");
    fflush(stdout);
    fprintf(stderr, "direct messages published again after a failed confirm: %d\n", (int)retried);

    bool ok = lost == 0 && dup == 0 && stray == 0 && confirmed == ndirect && written == noutbox &&
              rc_members == 0 && (!kafka || order == 0);
    if (!ok)
        fprintf(stderr, "FAIL: lost %d, duplicates %d, stray %d, order violations %d%s, confirmed %d of "
                "%d, written %d of %d, members' exit %d\n",
                (int)lost, (int)dup, (int)stray, (int)order, kafka ? "" : " (counted only)",
                (int)confirmed, ndirect, (int)written, noutbox, rc_members);

    for (const char *t = "effects confirmed written outbox inbox"; *t;) {
        size_t l = strcspn(t, " ");
        pg_exec(pg, "DROP TABLE IF EXISTS %s_%.*s", run, (int)l, t);
        t += l + (t[l] == ' ');
    }
    PQfinish(pg);
#ifdef CLUSTER_WITH_KAFKA
    if (kafka)
        delete_topic(&u, topic);
#endif
#ifdef CLUSTER_WITH_AMQP
    if (!kafka)
        delete_queue(&u, other, topic, group);
#endif
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    ssize_t l = readlink("/proc/self/exe", g_exe, sizeof g_exe - 1);
    if (l <= 0)
        die("readlink /proc/self/exe: %s", strerror(errno));
    g_exe[l] = 0;
    setvbuf(stderr, NULL, _IOLBF, 0);
    if (argc >= 2 && (strcmp(argv[1], "kafka") == 0 || strcmp(argv[1], "amqp") == 0)) {
#ifndef CLUSTER_WITH_KAFKA
        if (strcmp(argv[1], "kafka") == 0)
            die("built without Kafka");
#endif
#ifndef CLUSTER_WITH_AMQP
        if (strcmp(argv[1], "amqp") == 0)
            die("built without AMQP");
#endif
        atexit(kill_children);
        signal(SIGTERM, on_fatal_signal);
        signal(SIGINT, on_fatal_signal);
        return orchestrate(argv[1], argc >= 3 && strcmp(argv[2], "smoke") == 0);
    }
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    if (argc == 7 && strcmp(argv[1], "publisher") == 0)
        return publisher_main(argv[2], argv[3], argv[4], atoi(argv[5]), atoi(argv[6]));
    if (argc == 6 && strcmp(argv[1], "writer") == 0)
        return writer_main(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc == 4 && strcmp(argv[1], "relay") == 0)
        return relay_main(argv[2], argv[3]);
    if (argc == 7 && strcmp(argv[1], "member") == 0)
        return member_main(argv[2], argv[3], argv[4], argv[5], atoi(argv[6]));
    fprintf(stderr, "usage: %s kafka|amqp [smoke]\n", argv[0]);
    return 2;
}
