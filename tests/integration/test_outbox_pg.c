/*
 * test_outbox_pg.c — the PostgreSQL outbox store against the real server
 * ($MSGBUS_TEST_PG_URL), relayed into the in-process mem:// broker so the
 * store's own promises are checked without a network broker: rollback,
 * commit, table checks, a poison row moved aside, and three relays — each
 * on its own connection, in threads — working one outbox of 50,000 rows at
 * once: every row published, none by two relays in one pass, per-key order
 * intact at the consumer. (The same with relay processes and real brokers:
 * test_outbox_pg_kafka.c / test_outbox_pg_amqp.c.)
 */
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msgbus/outbox.h"
#include "testutil.h"

static PGconn *pg_connect(void)
{
    PGconn *c = PQconnectdb(tu_broker_url("pg"));
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    return c;
}

static void pg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                  "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

static long pg_count(PGconn *c, const char *table, const char *where)
{
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM \"%s\" WHERE %s", table, where);
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    long n = atol(PQgetvalue(r, 0, 0));
    PQclear(r);
    return n;
}

static void unique_table(char *buf, size_t n)
{
    tu_unique(buf, n, "ob");
    for (char *p = buf; *p; p++)
        if (*p == '-')
            *p = '_';
    buf[40] = '\0';
}

static void drop_table(PGconn *c, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS \"%s\"", table);
    pg_exec(c, sql);
}

struct world {
    PGconn *app, *rel;
    msgbus_outbox_t *ob, *relay;
    msgbus_t *bus;
    msgbus_sub_t *sub;
    char table[64], topic[64];
};

static void world_open(struct world *w)
{
    memset(w, 0, sizeof *w);
    unique_table(w->table, sizeof w->table);
    w->app = pg_connect();
    w->rel = pg_connect();
    tu_ck_ok(msgbus_outbox_open_pg(&w->ob, w->app, w->table));
    tu_ck_ok(msgbus_outbox_open_pg(&w->relay, w->rel, w->table));
    char url[96];
    snprintf(url, sizeof url, "mem://%s", w->table);
    tu_ck_ok(msgbus_open(&w->bus, url, NULL));
    tu_unique(w->topic, sizeof w->topic, "orders");
    tu_ck_ok(msgbus_subscribe(w->bus, w->topic, NULL, &w->sub));
}

static void world_close(struct world *w)
{
    msgbus_sub_close(w->sub);
    msgbus_outbox_close(w->relay);
    msgbus_outbox_close(w->ob);
    msgbus_close(w->bus);
    drop_table(w->app, w->table);
    PQfinish(w->rel);
    PQfinish(w->app);
}

static void put(msgbus_outbox_t *ob, const char *topic, const char *key, const char *text)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, text, strlen(text)));
    if (key)
        tu_ck_ok(msgbus_msg_set_key(m, key, strlen(key)));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
    tu_ck_ok(msgbus_outbox_put(ob, topic, m));
    msgbus_msg_free(m);
}

START_TEST(pg_rollback_leaves_no_message_and_commit_publishes_once)
{
    struct world w;
    world_open(&w);
    pg_exec(w.app, "BEGIN");
    put(w.ob, w.topic, "k", "rolled-back");
    pg_exec(w.app, "ROLLBACK");
    pg_exec(w.app, "BEGIN");
    put(w.ob, w.topic, "k", "committed");
    size_t n = 9;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 2000, &n));
    ck_assert_uint_eq(n, 0); /* not committed yet */
    pg_exec(w.app, "COMMIT");
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
    ck_assert_uint_eq(n, 1);
    msgbus_msg_t *in = tu_receive(w.sub, 2000);
    ck_assert_ptr_nonnull(in);
    size_t len;
    const char *p = msgbus_msg_payload(in, &len);
    ck_assert_uint_eq(len, 9);
    ck_assert_mem_eq(p, "committed", 9);
    ck_assert_str_eq(msgbus_msg_header(in, "content-type"), "text/plain");
    msgbus_ack(in);
    msgbus_msg_free(in);
    ck_assert_ptr_null(tu_receive(w.sub, 200));
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 2000, &n));
    ck_assert_uint_eq(n, 0);
    printf("pg rollback/commit: 1 published, table rows left %ld\n",
           pg_count(w.app, w.table, "true"));
    ck_assert_int_eq(pg_count(w.app, w.table, "true"), 0);
    /* a relay on a connection inside a transaction is refused */
    pg_exec(w.rel, "BEGIN");
    tu_ck_err(msgbus_outbox_relay(w.relay, w.bus, 10, 100, &n), MSGBUS_ERR_STATE);
    pg_exec(w.rel, "ROLLBACK");
    world_close(&w);
}
END_TEST

/* A slice stops at 1 MiB of payload (MB_OUTBOX_SLICE_BYTES), chosen from
 * the rows' stored sizes before they are fetched; a capped slice does not
 * end the pass. The relay logs each capped slice at debug level. */
START_TEST(pg_large_rows_go_in_slices_bounded_by_bytes)
{
    struct world w;
    world_open(&w);
    enum { N = 12, SIZE = 300 * 1024 };
    char topic[64];
    tu_unique(topic, sizeof topic, "big"); /* no subscriber: nothing queued */
    pg_exec(w.app, "BEGIN");
    tu_outbox_put_sized(w.ob, topic, 2 * N, SIZE);
    pg_exec(w.app, "COMMIT");
    struct tu_capped_log cl = {0};
    msgbus_set_log(tu_capped_log_cb, &cl, MSGBUS_LOG_DEBUG);
    size_t first = 0, second = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, N, 5000, &first));
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 1000, 5000, &second));
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    printf("pg large rows: %zu + %zu of %d KiB relayed, %d capped slices of at most %zu rows\n",
           first, second, SIZE / 1024, cl.slices, cl.most_rows);
    ck_assert_uint_eq(first, N);
    ck_assert_uint_eq(second, N);
    ck_assert_int_eq(pg_count(w.app, w.table, "true"), 0);
    ck_assert_int_ge(cl.slices, N / 4);
    ck_assert_uint_eq(cl.most_rows, 4);
    world_close(&w);
}
END_TEST

START_TEST(pg_existing_table_is_checked)
{
    PGconn *c = pg_connect();
    char table[64];
    unique_table(table, sizeof table);
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE TABLE \"%s\" (id bigserial, msg_id text, topic text)", table);
    pg_exec(c, sql);
    msgbus_outbox_t *ob = NULL;
    tu_ck_err(msgbus_outbox_open_pg(&ob, c, table), MSGBUS_ERR_STORE);
    printf("pg table check: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "msg_key"));
    tu_ck_err(msgbus_outbox_open_pg(&ob, NULL, table), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_open_pg(&ob, c, "no way"), MSGBUS_ERR_INVALID);
    drop_table(c, table);
    PQfinish(c);
}
END_TEST

START_TEST(pg_poison_row_is_moved_aside_while_other_keys_flow)
{
    struct world w;
    world_open(&w);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO \"%s\" (topic, msg_key, payload) VALUES "
             "('bad topic!', 'A', 'A1'), ('%s', 'A', 'A2'), ('%s', 'B', 'B1'), ('%s', NULL, 'free')",
             w.table, w.topic, w.topic, w.topic);
    pg_exec(w.app, sql);
    size_t n = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
    ck_assert_uint_eq(n, 2);
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    printf("pg poison: published %zu, failed %llu, pending %llu\n", n,
           (unsigned long long)st.failed, (unsigned long long)st.pending);
    ck_assert_uint_eq(st.failed, 1);
    ck_assert_uint_eq(st.pending, 1);
    ck_assert_int_eq(pg_count(w.app, w.table, "state = 'failed' AND error <> ''"), 1);
    int got = 0;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    ck_assert_int_eq(got, 2);
    world_close(&w);
}
END_TEST

/* ---- three relays at once ---- */

enum { NROWS = 50000, NKEYS = 200, NRELAYS = 3 };

struct relay_arg {
    const char *table;
    msgbus_t *bus;
    size_t published;
    size_t passes;
    msgbus_err_t err;
    char why[256];
};

static void *relay_thread(void *p)
{
    struct relay_arg *a = p;
    PGconn *c = PQconnectdb(tu_broker_url("pg"));
    msgbus_outbox_t *ob = NULL;
    if (PQstatus(c) != CONNECTION_OK ||
        (a->err = msgbus_outbox_open_pg(&ob, c, a->table)) != MSGBUS_OK) {
        a->err = a->err ? a->err : MSGBUS_ERR_STORE;
        snprintf(a->why, sizeof a->why, "%s", msgbus_last_error());
        PQfinish(c);
        return NULL;
    }
    int idle = 0;
    while (idle < 20) {
        size_t n = 0;
        msgbus_err_t e = msgbus_outbox_relay(ob, a->bus, 500, 10000, &n);
        if (e != MSGBUS_OK) {
            a->err = e;
            snprintf(a->why, sizeof a->why, "%s", msgbus_last_error());
            break;
        }
        a->passes++;
        a->published += n;
        if (n == 0) {
            msgbus_outbox_stats_t st;
            msgbus_outbox_stats(ob, &st);
            idle = st.pending == 0 ? idle + 1 : 0;
            usleep(5000);
        }
    }
    msgbus_outbox_close(ob);
    PQfinish(c);
    return NULL;
}

START_TEST(pg_three_relays_keep_per_key_order_and_lose_nothing)
{
    struct world w;
    world_open(&w);
    /* The rows first, in transactions of 1000, keys interleaved. */
    int64_t t0 = tu_now_ms();
    for (int i = 0; i < NROWS; i++) {
        if (i % 1000 == 0)
            pg_exec(w.app, "BEGIN");
        char key[16], text[32];
        snprintf(key, sizeof key, "key-%d", i % NKEYS);
        snprintf(text, sizeof text, "%d", i);
        put(w.ob, w.topic, key, text);
        if (i % 1000 == 999)
            pg_exec(w.app, "COMMIT");
    }
    printf("pg three relays: %d rows written in %lld ms\n", NROWS, (long long)(tu_now_ms() - t0));
    struct relay_arg a[NRELAYS];
    pthread_t th[NRELAYS];
    t0 = tu_now_ms();
    for (int i = 0; i < NRELAYS; i++) {
        memset(&a[i], 0, sizeof a[i]);
        a[i].table = w.table;
        a[i].bus = w.bus;
        ck_assert_int_eq(pthread_create(&th[i], NULL, relay_thread, &a[i]), 0);
    }
    unsigned char *seen = calloc(NROWS, 1);
    int *last_seq = malloc(NKEYS * sizeof *last_seq);
    for (int k = 0; k < NKEYS; k++)
        last_seq[k] = -1;
    long received = 0, unique = 0, dup = 0, order_errors = 0;
    msgbus_msg_t *in;
    while (unique < NROWS && (in = tu_receive(w.sub, 20000)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        char text[32];
        snprintf(text, sizeof text, "%.*s", (int)len, p);
        int i = atoi(text);
        received++;
        if (seen[i]) {
            dup++;
        } else {
            seen[i] = 1;
            unique++;
            /* Rows of a key arrive (first time) in exactly their order. */
            int k = i % NKEYS, seq = i / NKEYS;
            if (seq != last_seq[k] + 1)
                order_errors++;
            last_seq[k] = seq;
        }
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    size_t published = 0;
    for (int i = 0; i < NRELAYS; i++) {
        pthread_join(th[i], NULL);
        printf("pg three relays: relay %d published %zu in %zu passes (%s)\n", i, a[i].published,
               a[i].passes, a[i].err ? a[i].why : "ok");
        ck_assert_msg(a[i].err == MSGBUS_OK, "relay %d: %s", i, a[i].why);
        published += a[i].published;
    }
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.ob, &st));
    printf("pg three relays: rows %d, marked sent %zu, received %ld, unique %ld, duplicates %ld, "
           "per-key order errors %ld, pending %llu, %lld ms\n",
           NROWS, published, received, unique, dup, order_errors, (unsigned long long)st.pending,
           (long long)(tu_now_ms() - t0));
    ck_assert_int_eq(unique, NROWS);
    ck_assert_int_eq(order_errors, 0);
    ck_assert_uint_eq(published, NROWS); /* no row marked by two relays */
    ck_assert_int_eq(dup, 0);            /* nothing failed: nothing published twice */
    ck_assert_uint_eq(st.pending, 0);
    int busy = 0;
    for (int i = 0; i < NRELAYS; i++)
        busy += a[i].published > 0;
    ck_assert_int_ge(busy, 2); /* the work was actually shared */
    free(seen);
    free(last_seq);
    world_close(&w);
}
END_TEST

/* ---- marks that fail after publishing (issue 16, item 8) ---- */

/* The application holds a SHARE lock on the outbox table (its own
 * transaction) longer than the relay's lock_timeout: the relay's claim
 * (SELECT … FOR UPDATE) gets through, its mark (DELETE) does not. Rows it
 * published must be marked before anything is claimed again, never
 * published a second time: once the lock is gone each row has arrived
 * exactly once. */
START_TEST(pg_table_lock_past_the_lock_timeout_publishes_each_row_once)
{
    struct world w;
    world_open(&w);
    enum { N = 50 };
    pg_exec(w.app, "BEGIN");
    for (int i = 0; i < N; i++) {
        char key[8], text[16];
        snprintf(key, sizeof key, "k%d", i % 5);
        snprintf(text, sizeof text, "%d", i);
        put(w.ob, w.topic, key, text);
    }
    pg_exec(w.app, "COMMIT");
    pg_exec(w.rel, "SET lock_timeout = '100ms'");
    PGconn *holder = pg_connect();
    char sql[160];
    snprintf(sql, sizeof sql, "LOCK TABLE \"%s\" IN SHARE MODE", w.table);
    pg_exec(holder, "BEGIN");
    pg_exec(holder, sql);
    int64_t t0 = tu_now_ms();
    int passes = 0, failed = 0;
    size_t during = 0;
    char last[1024] = "";
    while (tu_now_ms() - t0 < 1500) {
        size_t n = 0;
        msgbus_err_t e = msgbus_outbox_relay(w.relay, w.bus, 100, 300, &n);
        passes++;
        if (e != MSGBUS_OK) {
            failed++;
            snprintf(last, sizeof last, "%s", msgbus_last_error());
            ck_assert_msg(e == MSGBUS_ERR_STORE, "pass %d: %s: %s", passes, msgbus_err_name(e),
                          last);
            ck_assert_msg(strstr(last, "lock") != NULL, "%s", last);
        }
        during += n;
    }
    printf("pg table lock: %d passes under the lock, %d failed (last: %s)\n", passes, failed,
           last);
    pg_exec(holder, "COMMIT");
    PQfinish(holder);
    size_t after = 0, n = 0;
    do {
        tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
        after += n;
    } while (n > 0);
    static int seen[N];
    memset(seen, 0, sizeof seen);
    int got = 0, extra = 0;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        char text[16];
        snprintf(text, sizeof text, "%.*s", (int)(len < 15 ? len : 15), p);
        int i = atoi(text);
        ck_assert_int_ge(i, 0);
        ck_assert_int_lt(i, N);
        seen[i]++;
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_msg(seen[i] >= 1, "row %d never arrived", i);
        extra += seen[i] - 1;
    }
    printf("pg table lock: %d rows, %d deliveries, %d extra copies; %zu marked under the lock, "
           "%zu after\n",
           N, got, extra, during, after);
    ck_assert_int_gt(failed, 0);
    ck_assert_int_eq(extra, 0);
    ck_assert_uint_eq(during + after, N);
    ck_assert_int_eq(pg_count(w.app, w.table, "true"), 0);
    world_close(&w);
}
END_TEST

/* ---- opening ---- */

static void count_notice(void *arg, const PGresult *r)
{
    int *n = arg;
    (*n)++;
    printf("  notice: %s", PQresultErrorMessage(r));
}

/* Opening an outbox whose table and indexes exist sends the application's
 * connection no NOTICE ("relation … already exists, skipping"): the
 * application's own notice receiver sees nothing from msgbus. */
START_TEST(pg_open_sends_no_notice)
{
    PGconn *c = pg_connect();
    int notices = 0;
    PQsetNoticeReceiver(c, count_notice, &notices);
    char table[64];
    unique_table(table, sizeof table);
    msgbus_outbox_t *ob = NULL;
    tu_ck_ok(msgbus_outbox_open_pg(&ob, c, table));
    msgbus_outbox_close(ob);
    int first = notices;
    tu_ck_ok(msgbus_outbox_open_pg(&ob, c, table));
    msgbus_outbox_close(ob);
    printf("pg open: %d notices on the first open, %d on the second\n", first, notices - first);
    ck_assert_int_eq(first, 0);
    ck_assert_int_eq(notices, 0);
    /* and the receiver is still the application's */
    pg_exec(c, "DO $$ BEGIN RAISE NOTICE 'mine'; END $$");
    ck_assert_int_eq(notices, 1);
    drop_table(c, table);
    PQfinish(c);
}
END_TEST

/* Table names stop at 50 bytes: PostgreSQL cuts identifiers at 63, and the
 * longest index name is the table's plus "_failed_key" (11 bytes). At 50
 * the three indexes get their full names. */
START_TEST(pg_table_name_of_50_bytes_is_the_longest)
{
    PGconn *c = pg_connect();
    char table[64];
    unique_table(table, sizeof table); /* 40 bytes */
    size_t len = strlen(table);
    memset(table + len, 'x', 50 - len);
    table[50] = '\0';
    msgbus_outbox_t *ob = NULL;
    tu_ck_ok(msgbus_outbox_open_pg(&ob, c, table));
    msgbus_outbox_close(ob);
    char sql[400];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_indexes WHERE indexname IN"
             " ('%s_pending', '%s_failed_key', '%s_sent')",
             table, table, table);
    PGresult *r = PQexec(c, sql);
    ck_assert_int_eq(PQresultStatus(r), PGRES_TUPLES_OK);
    int found = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    printf("pg table name of 50 bytes: %d of 3 indexes under their full names\n", found);
    ck_assert_int_eq(found, 3);
    drop_table(c, table);
    table[50] = 'x';
    table[51] = '\0';
    tu_ck_err(msgbus_outbox_open_pg(&ob, c, table), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "1..50 bytes"));
    PQfinish(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("outbox_pg");
    TCase *tc = tcase_create("outbox_pg");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, pg_rollback_leaves_no_message_and_commit_publishes_once);
    tcase_add_test(tc, pg_existing_table_is_checked);
    tcase_add_test(tc, pg_large_rows_go_in_slices_bounded_by_bytes);
    tcase_add_test(tc, pg_poison_row_is_moved_aside_while_other_keys_flow);
    tcase_add_test(tc, pg_three_relays_keep_per_key_order_and_lose_nothing);
    suite_add_tcase(s, tc);
    /* CK_RUN_CASE=marks or =open runs these alone. */
    TCase *marks = tcase_create("marks");
    tcase_set_timeout(marks, 120);
    tcase_add_test(marks, pg_table_lock_past_the_lock_timeout_publishes_each_row_once);
    suite_add_tcase(s, marks);
    TCase *open = tcase_create("open");
    tcase_set_timeout(open, 120);
    tcase_add_test(open, pg_open_sends_no_notice);
    tcase_add_test(open, pg_table_name_of_50_bytes_is_the_longest);
    suite_add_tcase(s, open);
    return tu_run_suite(s);
}
