/*
 * test_outbox_sqlite.c — the outbox's promises on the SQLite store, relayed
 * into the in-process mem:// broker: a rollback leaves no message, a commit
 * publishes once with the stored id, order holds (overall and per key),
 * retention and purge, a poison row is moved aside while other keys flow,
 * table checks, the background relay, and bad arguments.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "msgbus/outbox.h"
#include "testutil.h"
#include "tu_sqlite.h"

/* One test's world: a database file with two connections (the
 * application's and the relay's), an outbox on each, and a mem:// bus
 * with a broadcast subscriber on the topic. */
struct world {
    char path[128];
    sqlite3 *app, *rel;
    msgbus_outbox_t *ob, *relay;
    msgbus_t *bus;
    msgbus_sub_t *sub;
    char topic[64];
};

static sqlite3 *open_db(const char *path)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    tu_sql_exec(db, "PRAGMA journal_mode=WAL");
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void world_open_opts(struct world *w, const char *bus_opts)
{
    memset(w, 0, sizeof *w);
    char name[64];
    tu_unique(name, sizeof name, "ob");
    snprintf(w->path, sizeof w->path, "/tmp/msgbus-%s.db", name);
    w->app = open_db(w->path);
    w->rel = open_db(w->path);
    tu_ck_ok(msgbus_outbox_open_sqlite(&w->ob, w->app, NULL));
    tu_ck_ok(msgbus_outbox_open_sqlite(&w->relay, w->rel, NULL));
    char url[160];
    snprintf(url, sizeof url, "mem://%s%s", name, bus_opts);
    tu_ck_ok(msgbus_open(&w->bus, url, NULL));
    tu_unique(w->topic, sizeof w->topic, "orders");
    tu_ck_ok(msgbus_subscribe(w->bus, w->topic, NULL, &w->sub));
}

static void world_open(struct world *w)
{
    world_open_opts(w, "");
}

static void world_close(struct world *w)
{
    msgbus_sub_close(w->sub);
    msgbus_outbox_close(w->relay);
    msgbus_outbox_close(w->ob);
    msgbus_close(w->bus);
    sqlite3_close(w->rel);
    sqlite3_close(w->app);
    char p[160];
    unlink(w->path);
    snprintf(p, sizeof p, "%s-wal", w->path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", w->path);
    unlink(p);
}

/* Puts a message with payload `text` and optional key; returns its id
 * (static buffer). */
static const char *put(struct world *w, const char *key, const char *text)
{
    static char id[64];
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, text, strlen(text)));
    if (key)
        tu_ck_ok(msgbus_msg_set_key(m, key, strlen(key)));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
    tu_ck_ok(msgbus_outbox_put(w->ob, w->topic, m));
    snprintf(id, sizeof id, "%s", msgbus_msg_id(m));
    msgbus_msg_free(m);
    return id;
}

static size_t relay_all(struct world *w, size_t batch)
{
    size_t total = 0, n = 0;
    do {
        tu_ck_ok(msgbus_outbox_relay(w->relay, w->bus, batch, 5000, &n));
        total += n;
    } while (n > 0);
    return total;
}

static int count_rows(sqlite3 *db, const char *where)
{
    return (int)tu_sql_count(db, "SELECT count(*) FROM msgbus_outbox WHERE %s", where);
}

START_TEST(rollback_leaves_no_message)
{
    struct world w;
    world_open(&w);
    tu_sql_exec(w.app, "BEGIN");
    put(&w, "k", "never");
    tu_sql_exec(w.app, "ROLLBACK");
    size_t n = 99;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 1000, &n));
    printf("rollback: relayed %zu, rows %d\n", n, count_rows(w.app, "1"));
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    ck_assert_ptr_null(tu_receive(w.sub, 100));
    world_close(&w);
}
END_TEST

START_TEST(commit_publishes_once_with_the_stored_id)
{
    struct world w;
    world_open(&w);
    tu_sql_exec(w.app, "BEGIN");
    char id[64];
    snprintf(id, sizeof id, "%s", put(&w, "order-7", "hello"));
    /* Not committed yet: the relay's connection must not see it. */
    size_t n = 99;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 1000, &n));
    ck_assert_uint_eq(n, 0);
    tu_sql_exec(w.app, "COMMIT");
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
    ck_assert_uint_eq(n, 1);
    msgbus_msg_t *in = tu_receive(w.sub, 2000);
    ck_assert_ptr_nonnull(in);
    size_t len, klen;
    const char *p = msgbus_msg_payload(in, &len);
    const char *k = msgbus_msg_key(in, &klen);
    ck_assert_uint_eq(len, 5);
    ck_assert_mem_eq(p, "hello", 5);
    ck_assert_uint_eq(klen, 7);
    ck_assert_mem_eq(k, "order-7", 7);
    ck_assert_str_eq(msgbus_msg_id(in), id);
    ck_assert_str_eq(msgbus_msg_header(in, "content-type"), "text/plain");
    msgbus_ack(in);
    msgbus_msg_free(in);
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 1000, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(tu_receive(w.sub, 100));
    ck_assert_int_eq(count_rows(w.app, "1"), 0); /* default retention: deleted */
    world_close(&w);
}
END_TEST

START_TEST(cloudevents_attributes_travel_through_the_outbox)
{
    /* What the application set is what the relay publishes; unset, the
     * relay's bus writes its defaults (the topic as type). */
    struct world w;
    world_open(&w);
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_ok(msgbus_msg_set_type(m, "com.example.order.created"));
    tu_ck_ok(msgbus_msg_set_source(m, "//shop/orders"));
    tu_ck_ok(msgbus_msg_set_subject(m, "order-7"));
    tu_ck_ok(msgbus_outbox_put(w.ob, w.topic, m));
    msgbus_msg_free(m);
    put(&w, "k", "plain");
    ck_assert_uint_eq(relay_all(&w, 100), 2);
    msgbus_msg_t *in = tu_receive(w.sub, 2000);
    ck_assert_str_eq(msgbus_msg_type(in), "com.example.order.created");
    ck_assert_str_eq(msgbus_msg_source(in), "//shop/orders");
    ck_assert_str_eq(msgbus_msg_subject(in), "order-7");
    ck_assert_uint_eq(msgbus_msg_header_count(in), 0);
    msgbus_ack(in);
    msgbus_msg_free(in);
    in = tu_receive(w.sub, 2000);
    ck_assert_str_eq(msgbus_msg_type(in), w.topic);
    ck_assert_ptr_null(msgbus_msg_subject(in));
    msgbus_ack(in);
    msgbus_msg_free(in);
    world_close(&w);
}
END_TEST

START_TEST(autocommit_put_is_its_own_transaction)
{
    struct world w;
    world_open(&w);
    put(&w, NULL, "auto");
    ck_assert_int_eq(count_rows(w.rel, "state = 'pending'"), 1);
    ck_assert_uint_eq(relay_all(&w, 10), 1);
    world_close(&w);
}
END_TEST

START_TEST(rows_are_published_in_commit_order)
{
    struct world w;
    world_open(&w);
    enum { N = 300 };
    for (int t = 0; t < N / 30; t++) {
        tu_sql_exec(w.app, "BEGIN");
        for (int i = 0; i < 30; i++) {
            char key[8], text[16];
            snprintf(key, sizeof key, "k%d", (t * 30 + i) % 7);
            snprintf(text, sizeof text, "%d", t * 30 + i);
            put(&w, (i % 5) ? key : NULL, text);
        }
        tu_sql_exec(w.app, "COMMIT");
    }
    size_t sent = relay_all(&w, 17); /* batches that cut transactions apart */
    int got = 0;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 500)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        char text[16];
        snprintf(text, sizeof text, "%.*s", (int)len, p);
        ck_assert_int_eq(atoi(text), got);
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    printf("order: put %d, relayed %zu, received in order %d\n", N, sent, got);
    ck_assert_uint_eq(sent, N);
    ck_assert_int_eq(got, N);
    world_close(&w);
}
END_TEST

START_TEST(retention_keeps_sent_rows_until_purged)
{
    struct world w;
    world_open(&w);
    tu_ck_ok(msgbus_outbox_set_retention(w.relay, 60000));
    for (int i = 0; i < 10; i++)
        put(&w, "k", "x");
    ck_assert_uint_eq(relay_all(&w, 4), 10);
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    ck_assert_uint_eq(st.sent, 10);
    ck_assert_uint_eq(st.pending, 0);
    size_t purged = 99;
    tu_ck_ok(msgbus_outbox_purge(w.relay, &purged));
    ck_assert_uint_eq(purged, 0); /* younger than a minute */
    tu_ck_ok(msgbus_outbox_set_retention(w.relay, 1));
    usleep(20000);
    tu_ck_ok(msgbus_outbox_purge(w.relay, &purged));
    printf("retention: kept 10 sent rows, purged %zu\n", purged);
    ck_assert_uint_eq(purged, 10);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    tu_ck_err(msgbus_outbox_set_retention(w.relay, -2), MSGBUS_ERR_INVALID);
    world_close(&w);
}
END_TEST

START_TEST(stats_report_pending_count_and_age)
{
    struct world w;
    world_open(&w);
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    ck_assert_uint_eq(st.pending, 0);
    ck_assert_int_eq(st.oldest_pending_age_ms, 0);
    put(&w, NULL, "a");
    put(&w, NULL, "b");
    usleep(30000);
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    printf("stats: pending %llu, oldest %lld ms\n", (unsigned long long)st.pending,
           (long long)st.oldest_pending_age_ms);
    ck_assert_uint_eq(st.pending, 2);
    ck_assert_int_ge(st.oldest_pending_age_ms, 30);
    world_close(&w);
}
END_TEST

/* Rows written by another language's code, straight into the table. */
static void raw_row(struct world *w, const char *topic, const char *key, const char *headers,
                    const char *payload)
{
    char *sql = sqlite3_mprintf("INSERT INTO msgbus_outbox (topic, msg_key, headers, payload) "
                                "VALUES (%Q, CAST(%Q AS BLOB), %Q, CAST(%Q AS BLOB))",
                                topic, key, headers ? headers : "{}", payload);
    tu_sql_exec(w->app, sql);
    sqlite3_free(sql);
}

START_TEST(poison_row_is_moved_aside_while_other_keys_flow)
{
    struct world w;
    world_open(&w);
    raw_row(&w, "bad topic!", "A", NULL, "poison-A1"); /* invalid topic: never deliverable */
    raw_row(&w, w.topic, "A", NULL, "A2");             /* same key: must wait behind it */
    raw_row(&w, w.topic, "B", NULL, "B1");
    raw_row(&w, w.topic, "C", "[1,2]", "poison-C1"); /* headers not an object */
    raw_row(&w, w.topic, NULL, "{\"x-trace\":\"t1\"}", "free");
    raw_row(&w, w.topic, "B", NULL, "B2");
    size_t n = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
    ck_assert_uint_eq(n, 3); /* B1, free, B2 */
    char got[4][16];
    int ngot = 0;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        ck_assert_int_lt(ngot, 4);
        snprintf(got[ngot++], 16, "%.*s", (int)len, p);
        if (strcmp(got[ngot - 1], "free") == 0)
            ck_assert_str_eq(msgbus_msg_header(in, "x-trace"), "t1");
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    ck_assert_int_eq(ngot, 3);
    ck_assert_str_eq(got[0], "B1");
    ck_assert_str_eq(got[1], "free");
    ck_assert_str_eq(got[2], "B2");
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    printf("poison: published %zu, failed %llu, pending %llu\n", n,
           (unsigned long long)st.failed, (unsigned long long)st.pending);
    ck_assert_uint_eq(st.failed, 2);
    ck_assert_uint_eq(st.pending, 1); /* A2 waits behind the failed A1 */
    ck_assert_int_eq(count_rows(w.app, "state = 'failed' AND error LIKE '%topic%'"), 1);
    ck_assert_int_eq(count_rows(w.app, "state = 'failed' AND error LIKE '%JSON object%'"), 1);
    /* Not retried forever: another pass publishes nothing and changes nothing. */
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 1000, &n));
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(count_rows(w.app, "state = 'failed' AND attempts = 1"), 2);
    /* The operator fixes A1 and retries: A1 then A2 flow, in order. */
    char *fix = sqlite3_mprintf("UPDATE msgbus_outbox SET topic = %Q WHERE topic = 'bad topic!'",
                                w.topic);
    tu_sql_exec(w.app, fix);
    sqlite3_free(fix);
    tu_sql_exec(w.app, "DELETE FROM msgbus_outbox WHERE payload = CAST('poison-C1' AS BLOB)");
    size_t retried = 0;
    tu_ck_ok(msgbus_outbox_retry_failed(w.relay, &retried));
    ck_assert_uint_eq(retried, 1);
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
    ck_assert_uint_eq(n, 2);
    in = tu_receive(w.sub, 1000);
    ck_assert_ptr_nonnull(in);
    size_t len;
    ck_assert_mem_eq(msgbus_msg_payload(in, &len), "poison-A1", 9);
    msgbus_ack(in);
    msgbus_msg_free(in);
    in = tu_receive(w.sub, 1000);
    ck_assert_ptr_nonnull(in);
    ck_assert_mem_eq(msgbus_msg_payload(in, &len), "A2", 2);
    msgbus_ack(in);
    msgbus_msg_free(in);
    world_close(&w);
}
END_TEST

START_TEST(too_large_row_is_moved_aside_and_blocks_only_its_key)
{
    struct world w;
    world_open_opts(&w, "?max_message_bytes=2000");
    static char big[5000];
    memset(big, 'x', sizeof big - 1);
    put(&w, "K", "K1");
    put(&w, "K", big); /* the broker will never take it */
    put(&w, "K", "K3");
    put(&w, "L", "L1");
    put(&w, NULL, "free");
    size_t n = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
    ck_assert_uint_eq(n, 3); /* K1, L1, free */
    int got = 0;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        ck_assert_uint_lt(len, 100); /* never the big one, never K3 */
        ck_assert(!(len == 2 && memcmp(p, "K3", 2) == 0));
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    printf("too large: published %zu, received %d, failed %llu, pending %llu\n", n, got,
           (unsigned long long)st.failed, (unsigned long long)st.pending);
    ck_assert_int_eq(got, 3);
    ck_assert_uint_eq(st.failed, 1);
    ck_assert_uint_eq(st.pending, 1); /* K3 waits behind the failed row */
    ck_assert_int_eq(count_rows(w.app, "state = 'failed' AND length(payload) = 4999 AND error <> ''"), 1);
    /* deleting the failed row unblocks its key */
    tu_sql_exec(w.app, "DELETE FROM msgbus_outbox WHERE state = 'failed'");
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 100, 5000, &n));
    ck_assert_uint_eq(n, 1);
    in = tu_receive(w.sub, 1000);
    ck_assert_ptr_nonnull(in);
    size_t len;
    ck_assert_mem_eq(msgbus_msg_payload(in, &len), "K3", 2);
    msgbus_ack(in);
    msgbus_msg_free(in);
    world_close(&w);
}
END_TEST

/* A pass of 1000 rows works in slices of 125 with four in flight: the
 * failed row's key must be held across slices (its earlier rows sent, its
 * later rows not published), every other key must flow in order, and the
 * failed row's earlier same-key rows, published in the same slice, must
 * still be marked sent. */
START_TEST(overlapping_slices_keep_order_and_hold_a_failed_key)
{
    struct world w;
    world_open_opts(&w, "?max_message_bytes=2000");
    enum { N = 400, BAD = 150 };
    static char big[3000];
    memset(big, 'x', sizeof big - 1);
    tu_sql_exec(w.app, "BEGIN");
    for (int i = 0; i < N; i++) {
        char key[8], text[16];
        snprintf(key, sizeof key, "K%d", i % 10);
        snprintf(text, sizeof text, "%d", i);
        put(&w, key, i == BAD ? big : text);
    }
    tu_sql_exec(w.app, "COMMIT");
    size_t n = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 1000, 5000, &n));
    int last[10], got = 0, held_back = 0;
    for (int k = 0; k < 10; k++)
        last[k] = -1;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        ck_assert_uint_lt(len, 16);
        char text[16];
        snprintf(text, sizeof text, "%.*s", (int)len, p);
        int i = atoi(text);
        ck_assert_int_gt(i, last[i % 10]); /* per-key order */
        ck_assert(!(i % 10 == BAD % 10 && i > BAD)); /* nothing after the failed row */
        last[i % 10] = i;
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    for (int i = BAD + 10; i < N; i += 10)
        held_back++;
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    printf("slices: %d rows, relayed %zu, received %d, failed %llu, pending %llu\n", N, n, got,
           (unsigned long long)st.failed, (unsigned long long)st.pending);
    ck_assert_uint_eq(n, (size_t)(N - 1 - held_back));
    ck_assert_int_eq(got, N - 1 - held_back);
    ck_assert_int_eq(last[BAD % 10], BAD - 10); /* the earlier rows of the key went */
    ck_assert_uint_eq(st.failed, 1);
    ck_assert_uint_eq(st.pending, (unsigned long long)held_back);
    /* With the failed row gone, its key follows, in order. */
    tu_sql_exec(w.app, "DELETE FROM msgbus_outbox WHERE state = 'failed'");
    ck_assert_uint_eq(relay_all(&w, 1000), (size_t)held_back);
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        char text[16];
        snprintf(text, sizeof text, "%.*s", (int)len, p);
        int i = atoi(text);
        ck_assert_int_eq(i % 10, BAD % 10);
        ck_assert_int_gt(i, last[i % 10]);
        last[i % 10] = i;
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    ck_assert_int_eq(got, N - 1);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    world_close(&w);
}
END_TEST

/* Whole slices are marked by id range; with retention the range must mark
 * exactly the pass's rows sent, and a second pass find nothing. */
START_TEST(retention_marks_overlapping_slices_sent)
{
    struct world w;
    world_open(&w);
    tu_ck_ok(msgbus_outbox_set_retention(w.relay, 60000));
    tu_sql_exec(w.app, "BEGIN");
    for (int i = 0; i < 1000; i++)
        put(&w, i % 3 ? "k" : NULL, "x");
    tu_sql_exec(w.app, "COMMIT");
    size_t n = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 800, 5000, &n));
    ck_assert_uint_eq(n, 800);
    put(&w, "k", "late");
    ck_assert_uint_eq(relay_all(&w, 800), 201);
    int got = 0;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    printf("retention slices: received %d, sent %llu, pending %llu\n", got,
           (unsigned long long)st.sent, (unsigned long long)st.pending);
    ck_assert_int_eq(got, 1001);
    ck_assert_uint_eq(st.sent, 1001);
    ck_assert_uint_eq(st.pending, 0);
    world_close(&w);
}
END_TEST

/* A long pass keeps the store on a worker thread (relay.c). When marking a
 * slice fails there, the pass must stop with MSGBUS_ERR_STORE naming the
 * cause and count only the rows it really marked; every other row stays
 * pending in the table, and the rows already published are held by the
 * handle and marked by the next pass, not published again. */
START_TEST(store_failure_in_a_long_pass_loses_nothing)
{
    struct world w;
    world_open(&w);
    enum { N = 3000, BOOM = 1700 };
    tu_sql_exec(w.app, "BEGIN");
    for (int i = 0; i < N; i++) {
        char key[8], text[16];
        snprintf(key, sizeof key, "K%d", i % 7);
        snprintf(text, sizeof text, i == BOOM ? "boom" : "%d", i);
        put(&w, key, text);
    }
    tu_sql_exec(w.app, "COMMIT");
    tu_sql_exec(w.app, "CREATE TRIGGER boom BEFORE DELETE ON msgbus_outbox"
                " WHEN old.payload = CAST('boom' AS BLOB) BEGIN SELECT RAISE(ABORT, 'boom'); END");
    size_t n = 0;
    tu_ck_err(msgbus_outbox_relay(w.relay, w.bus, N, 5000, &n), MSGBUS_ERR_STORE);
    printf("store failure: %zu marked, error: %s\n", n, msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "boom"));
    ck_assert_uint_lt(n, BOOM);
    ck_assert_int_eq(count_rows(w.app, "state = 'pending'"), N - (int)n);
    tu_sql_exec(w.app, "DROP TRIGGER boom");
    ck_assert_uint_eq(relay_all(&w, N), (size_t)(N - (int)n));
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    /* Every row arrived exactly once (the published, unmarked ones were
     * marked, not published again), each key in order. */
    static int seen[N];
    memset(seen, 0, sizeof seen);
    int last[7], got = 0;
    for (int k = 0; k < 7; k++)
        last[k] = -1;
    msgbus_msg_t *in;
    while ((in = tu_receive(w.sub, 300)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        char text[16];
        snprintf(text, sizeof text, "%.*s", (int)(len < 15 ? len : 15), p);
        int i = strcmp(text, "boom") == 0 ? BOOM : atoi(text);
        ck_assert_int_ge(i, 0);
        ck_assert_int_lt(i, N);
        if (!seen[i]++) {
            ck_assert_int_gt(i, last[i % 7]);
            last[i % 7] = i;
        }
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    printf("store failure: %d deliveries of %d rows\n", got, N);
    for (int i = 0; i < N; i++)
        ck_assert_msg(seen[i] == 1, "row %d arrived %d times", i, seen[i]);
    world_close(&w);
}
END_TEST

/* A slice stops at MB_OUTBOX_SLICE_BYTES (1 MiB) of payload, so a pass
 * over large rows holds a few slices' worth, not max_rows of them; a
 * capped slice does not end the pass. The relay logs each capped slice at
 * debug level. */
START_TEST(large_rows_go_in_slices_bounded_by_bytes)
{
    struct world w;
    world_open(&w);
    enum { N = 12, SIZE = 300 * 1024 };
    char topic[64];
    tu_unique(topic, sizeof topic, "big"); /* no subscriber: nothing queued */
    tu_sql_exec(w.app, "BEGIN");
    tu_outbox_put_sized(w.ob, topic, 2 * N, SIZE);
    tu_sql_exec(w.app, "COMMIT");
    /* A pass of N rows relays N rows, though each slice holds 4. */
    size_t first = 0, second = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, N, 5000, &first));
    struct tu_capped_log cl = {0};
    msgbus_set_log(tu_capped_log_cb, &cl, MSGBUS_LOG_DEBUG);
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 1000, 5000, &second));
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    printf("large rows: %zu + %zu of %d KiB relayed, %d capped slices of at most %zu rows and "
           "%zu bytes in the second pass\n",
           first, second, SIZE / 1024, cl.slices, cl.most_rows, cl.most_bytes);
    ck_assert_uint_eq(first, N);
    ck_assert_uint_eq(second, N);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    /* 1 MiB is reached with the 4th row: slices of 4 rows. */
    ck_assert_int_ge(cl.slices, N / 4 - 1);
    ck_assert_uint_eq(cl.most_rows, 4);
    ck_assert_uint_lt(cl.most_bytes, (size_t)(1 << 20) + SIZE);
    world_close(&w);
}
END_TEST

/* ---- the write lock held past the busy timeout (issue 16, item 8) ---- */

/* Counts the deliveries of payloads "0".."n-1" waiting on the subscriber:
 * seen[i] gets how often row i arrived; returns the total. */
static int drain_counts(struct world *w, int *seen, int n)
{
    int got = 0;
    msgbus_msg_t *in;
    while ((in = tu_receive(w->sub, 300)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        char text[16];
        snprintf(text, sizeof text, "%.*s", (int)(len < 15 ? len : 15), p);
        int i = atoi(text);
        ck_assert_int_ge(i, 0);
        ck_assert_int_lt(i, n);
        seen[i]++;
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    return got;
}

/* Puts rows "0".."n-1" (keys k0..k4) in one transaction. */
static void put_numbered(struct world *w, int n)
{
    tu_sql_exec(w->app, "BEGIN");
    for (int i = 0; i < n; i++) {
        char key[8], text[16];
        snprintf(key, sizeof key, "k%d", i % 5);
        snprintf(text, sizeof text, "%d", i);
        put(w, key, text);
    }
    tu_sql_exec(w->app, "COMMIT");
}

/* The relay's store sets a 5 s busy timeout on its connection at its
 * first claim, once; shorten it afterwards so a test need not hold the
 * write lock for more than 5 s to outlast it. */
static void short_busy_timeout(struct world *w)
{
    size_t n = 0;
    tu_ck_ok(msgbus_outbox_relay(w->relay, w->bus, 10, 1000, &n));
    sqlite3_busy_timeout(w->rel, 100);
}

/* Another connection holds the write lock (BEGIN IMMEDIATE) longer than
 * the relay's busy timeout while the relay runs passes: each pass may read
 * and publish, but cannot mark. Rows published and not yet marked must be
 * marked before anything is claimed again, never published a second time:
 * once the lock is released every row has arrived exactly once. */
START_TEST(write_lock_held_past_the_busy_timeout_publishes_each_row_once)
{
    struct world w;
    world_open(&w);
    short_busy_timeout(&w);
    enum { N = 50 };
    put_numbered(&w, N);
    sqlite3 *holder = open_db(w.path);
    tu_sql_exec(holder, "BEGIN IMMEDIATE");
    int64_t t0 = tu_now_ms();
    int passes = 0, failed = 0;
    size_t during = 0;
    while (tu_now_ms() - t0 < 1500) {
        size_t n = 0;
        msgbus_err_t e = msgbus_outbox_relay(w.relay, w.bus, 100, 300, &n);
        passes++;
        if (e != MSGBUS_OK) {
            failed++;
            ck_assert_msg(e == MSGBUS_ERR_STORE, "pass %d: %s: %s", passes, msgbus_err_name(e),
                          msgbus_last_error());
            ck_assert_msg(strstr(msgbus_last_error(), "locked") != NULL, "%s",
                          msgbus_last_error());
        }
        during += n;
    }
    printf("write lock: %d passes under the lock, %d failed (last: %s)\n", passes, failed,
           msgbus_last_error());
    tu_sql_exec(holder, "COMMIT");
    sqlite3_close(holder);
    size_t after = relay_all(&w, 100);
    static int seen[N];
    memset(seen, 0, sizeof seen);
    int got = drain_counts(&w, seen, N);
    int extra = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_msg(seen[i] >= 1, "row %d never arrived", i);
        extra += seen[i] - 1;
    }
    printf("write lock: %d rows, %d deliveries, %d extra copies; %zu marked under the lock, "
           "%zu after\n",
           N, got, extra, during, after);
    ck_assert_int_gt(failed, 0); /* the lock did stop the marking */
    ck_assert_int_eq(extra, 0);
    ck_assert_uint_eq(during + after, N);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    world_close(&w);
}
END_TEST

/* The same hold under the background relay (short back-off): it retries
 * its failing passes, and still publishes each row once. */
START_TEST(background_relay_under_a_held_write_lock_publishes_each_row_once)
{
    struct world w;
    world_open(&w);
    short_busy_timeout(&w);
    enum { N = 50 };
    put_numbered(&w, N);
    sqlite3 *holder = open_db(w.path);
    tu_sql_exec(holder, "BEGIN IMMEDIATE");
    msgbus_outbox_relay_opts_t o = {.batch_max = 100,
                                    .confirm_timeout_ms = 300,
                                    .poll_interval_ms = 50,
                                    .backoff_min_ms = 20,
                                    .backoff_max_ms = 100};
    tu_ck_ok(msgbus_outbox_relay_start(w.relay, w.bus, &o));
    usleep(1500 * 1000);
    tu_sql_exec(holder, "COMMIT");
    sqlite3_close(holder);
    int64_t t0 = tu_now_ms();
    msgbus_outbox_stats_t st;
    do {
        usleep(50 * 1000);
        tu_ck_ok(msgbus_outbox_stats(w.ob, &st));
    } while (st.pending > 0 && tu_now_ms() - t0 < 10000);
    tu_ck_ok(msgbus_outbox_relay_stop(w.relay));
    static int seen[N];
    memset(seen, 0, sizeof seen);
    int got = drain_counts(&w, seen, N);
    int extra = 0;
    for (int i = 0; i < N; i++) {
        ck_assert_msg(seen[i] >= 1, "row %d never arrived", i);
        extra += seen[i] - 1;
    }
    printf("background, write lock: %d rows, %d deliveries, %d extra copies, %llu pending\n", N,
           got, extra, (unsigned long long)st.pending);
    ck_assert_uint_eq(st.pending, 0);
    ck_assert_int_eq(extra, 0);
    world_close(&w);
}
END_TEST

struct error_log {
    int errors;
    char line[1024];
};

static void error_log_cb(void *opaque, msgbus_log_level_t level, const char *line)
{
    struct error_log *l = opaque;
    if (level != MSGBUS_LOG_ERROR || !strstr(line, "unmarked"))
        return;
    l->errors++;
    snprintf(l->line, sizeof l->line, "%s", line);
}

/* A relay handle closed while published rows still wait to be marked says
 * so at error level, with the count; the rows stay pending and the next
 * relay publishes them again (duplicates, same ids — never a loss). */
START_TEST(closing_with_unmarked_rows_logs_them_and_loses_nothing)
{
    struct world w;
    world_open(&w);
    short_busy_timeout(&w);
    enum { N = 50 };
    put_numbered(&w, N);
    sqlite3 *holder = open_db(w.path);
    tu_sql_exec(holder, "BEGIN IMMEDIATE");
    size_t n = 0;
    tu_ck_err(msgbus_outbox_relay(w.relay, w.bus, 100, 300, &n), MSGBUS_ERR_STORE);
    printf("close with unmarked rows: pass failed: %s\n", msgbus_last_error());
    struct error_log l = {0};
    msgbus_set_log(error_log_cb, &l, MSGBUS_LOG_ERROR);
    msgbus_outbox_close(w.relay);
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    printf("close with unmarked rows: %d error lines: %s\n", l.errors, l.line);
    ck_assert_int_eq(l.errors, 1);
    ck_assert_msg(strstr(l.line, "50 confirmed rows") != NULL, "%s", l.line);
    tu_sql_exec(holder, "COMMIT");
    sqlite3_close(holder);
    tu_ck_ok(msgbus_outbox_open_sqlite(&w.relay, w.rel, NULL));
    ck_assert_int_eq(count_rows(w.app, "state = 'pending'"), N);
    ck_assert_uint_eq(relay_all(&w, 100), N);
    static int seen[N];
    memset(seen, 0, sizeof seen);
    int got = drain_counts(&w, seen, N);
    for (int i = 0; i < N; i++)
        ck_assert_msg(seen[i] == 2, "row %d arrived %d times", i, seen[i]);
    printf("close with unmarked rows: %d deliveries of %d rows\n", got, N);
    world_close(&w);
}
END_TEST

/* Table names stop at 50 bytes: PostgreSQL cuts identifiers at 63, and the
 * longest index name is the table's plus "_failed_key" (11 bytes). */
START_TEST(table_name_of_50_bytes_is_the_longest)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(":memory:", &db), SQLITE_OK);
    char name[64];
    memset(name, 't', 50);
    name[50] = '\0';
    msgbus_outbox_t *ob = NULL;
    tu_ck_ok(msgbus_outbox_open_sqlite(&ob, db, name));
    msgbus_outbox_close(ob);
    ob = NULL;
    name[50] = 't';
    name[51] = '\0';
    tu_ck_err(msgbus_outbox_open_sqlite(&ob, db, name), MSGBUS_ERR_INVALID);
    printf("table name of 51 bytes: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "1..50 bytes"));
    ck_assert_ptr_null(ob);
    sqlite3_close(db);
}
END_TEST

START_TEST(existing_table_is_checked)
{
    sqlite3 *db = NULL;
    ck_assert_int_eq(sqlite3_open(":memory:", &db), SQLITE_OK);
    tu_sql_exec(db, "CREATE TABLE legacy (id INTEGER PRIMARY KEY, msg_id TEXT, topic TEXT, payload BLOB)");
    msgbus_outbox_t *ob = NULL;
    tu_ck_err(msgbus_outbox_open_sqlite(&ob, db, "legacy"), MSGBUS_ERR_STORE);
    printf("table check: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "msg_key"));
    ck_assert_ptr_null(ob);
    tu_ck_err(msgbus_outbox_open_sqlite(&ob, db, "bad-name"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_open_sqlite(&ob, db, "x\"; DROP TABLE legacy; --"), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_open_sqlite(&ob, db, ""), MSGBUS_ERR_INVALID);
    /* A custom name works and a second open checks it fine. */
    tu_ck_ok(msgbus_outbox_open_sqlite(&ob, db, "events_out"));
    msgbus_outbox_close(ob);
    tu_ck_ok(msgbus_outbox_open_sqlite(&ob, db, "events_out"));
    msgbus_outbox_close(ob);
    sqlite3_close(db);
}
END_TEST

START_TEST(relay_refuses_a_connection_inside_a_transaction)
{
    struct world w;
    world_open(&w);
    tu_sql_exec(w.rel, "BEGIN");
    size_t n;
    tu_ck_err(msgbus_outbox_relay(w.relay, w.bus, 10, 100, &n), MSGBUS_ERR_STATE);
    tu_sql_exec(w.rel, "ROLLBACK");
    world_close(&w);
}
END_TEST

START_TEST(bad_arguments_are_refused)
{
    struct world w;
    world_open(&w);
    msgbus_outbox_t *ob = NULL;
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    tu_ck_err(msgbus_outbox_open_sqlite(NULL, w.app, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_open_sqlite(&ob, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_put(NULL, "t", m), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_put(w.ob, NULL, m), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_put(w.ob, "t", NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_put(w.ob, "no spaces", m), MSGBUS_ERR_INVALID);
    tu_ck_ok(msgbus_msg_set_header(m, "bin", "\xff\xfe"));
    tu_ck_err(msgbus_outbox_put(w.ob, "t", m), MSGBUS_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "UTF-8"));
    ck_assert_int_eq(count_rows(w.app, "1"), 0); /* nothing written by a refused put */
    size_t n = 7;
    tu_ck_err(msgbus_outbox_relay(NULL, w.bus, 10, 100, &n), MSGBUS_ERR_INVALID);
    ck_assert_uint_eq(n, 0);
    tu_ck_err(msgbus_outbox_relay(w.relay, NULL, 10, 100, &n), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_relay(w.relay, w.bus, 0, 100, &n), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_relay(w.relay, w.bus, 10, -5, &n), MSGBUS_ERR_INVALID);
    msgbus_outbox_stats_t st;
    tu_ck_err(msgbus_outbox_stats(NULL, &st), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_stats(w.relay, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_purge(NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_relay_start(NULL, w.bus, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_relay_start(w.relay, NULL, NULL), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_relay_stop(w.relay), MSGBUS_ERR_STATE);
    msgbus_outbox_relay_wake(NULL);
    msgbus_outbox_close(NULL);
    msgbus_msg_free(m);
    world_close(&w);
}
END_TEST

/* Takes what the subscriber has (up to `want`, waiting up to 5 s for each
 * message): each payload is its row's number, which must be new and come
 * in order. Returns how many arrived. */
static int take_in_order(struct world *w, int *next, int want)
{
    int got = 0;
    msgbus_msg_t *in;
    while (got < want && (in = tu_receive(w->sub, 5000)) != NULL) {
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        char text[16];
        snprintf(text, sizeof text, "%.*s", (int)(len < 15 ? len : 15), p);
        ck_assert_int_eq(atoi(text), *next);
        (*next)++;
        got++;
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    return got;
}

START_TEST(background_relay_publishes_on_wake_and_drains_on_stop)
{
    struct world w;
    world_open(&w);
    msgbus_outbox_relay_opts_t o = {.batch_max = 50, .poll_interval_ms = 60000};
    tu_ck_ok(msgbus_outbox_relay_start(w.relay, w.bus, &o));
    tu_ck_err(msgbus_outbox_relay_start(w.relay, w.bus, &o), MSGBUS_ERR_STATE);
    size_t n;
    tu_ck_err(msgbus_outbox_relay(w.relay, w.bus, 10, 100, &n), MSGBUS_ERR_STATE);
    enum { N = 500 };
    tu_sql_exec(w.app, "BEGIN");
    for (int i = 0; i < N; i++) {
        char text[16], key[8];
        snprintf(text, sizeof text, "%d", i);
        snprintf(key, sizeof key, "k%d", i % 3);
        put(&w, key, text);
    }
    tu_sql_exec(w.app, "COMMIT");
    int64_t t0 = tu_now_ms();
    msgbus_outbox_relay_wake(w.relay); /* the poll interval is a minute: only the wake can do it */
    int got = 0;
    take_in_order(&w, &got, N);
    printf("background: %d of %d received in order within %lld ms\n", got, N,
           (long long)(tu_now_ms() - t0));
    ck_assert_int_eq(got, N);
    tu_ck_ok(msgbus_outbox_relay_stop(w.relay));
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    ck_assert_uint_eq(st.pending, 0);
    /* What the background relay did is counted: 500 rows in passes of 50,
     * none failed (the passes that found nothing count too). */
    msgbus_outbox_relay_counters_t c;
    tu_ck_ok(msgbus_outbox_relay_counters(w.relay, &c));
    ck_assert_uint_eq(c.relayed, N);
    ck_assert_uint_ge(c.passes, N / 50);
    ck_assert_uint_eq(c.failures, 0);
    ck_assert(c.last_success_ms > 0);
    tu_ck_err(msgbus_outbox_relay_counters(NULL, &c), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_outbox_relay_counters(w.relay, NULL), MSGBUS_ERR_INVALID);
    /* stopped: a new row stays pending */
    put(&w, NULL, "late");
    usleep(50000);
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    ck_assert_uint_eq(st.pending, 1);
    /* close stops a running relay itself */
    tu_ck_ok(msgbus_outbox_relay_start(w.relay, w.bus, NULL));
    world_close(&w);
}
END_TEST

/* A pass of more slices than the store worker's ring reuses its slots
 * (rows of 256 KiB: slices of 4 rows, capped at 1 MiB); the claims queued
 * after the table ran dry come back empty, and must not count the rows of
 * the slice that used their slot before (they did: n_published said 70
 * for 62 rows). */
START_TEST(a_long_pass_counts_each_row_once)
{
    struct world w;
    world_open(&w);
    enum { N = 62, SIZE = 256 * 1024 };
    char topic[64];
    tu_unique(topic, sizeof topic, "big"); /* no subscriber: nothing queued */
    tu_sql_exec(w.app, "BEGIN");
    tu_outbox_put_sized(w.ob, topic, N, SIZE);
    tu_sql_exec(w.app, "COMMIT");
    size_t n = 0;
    tu_ck_ok(msgbus_outbox_relay(w.relay, w.bus, 1000, 30000, &n));
    ck_assert_uint_eq(n, N);
    msgbus_outbox_relay_counters_t c;
    tu_ck_ok(msgbus_outbox_relay_counters(w.relay, &c));
    ck_assert_uint_eq(c.relayed, N);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    world_close(&w);
}
END_TEST

/* The background relay streams: while full slices come it claims past
 * batch_max instead of ending a pass (and waiting for its last confirms
 * and marks) every batch_max rows, so 6,000 rows take a few passes, not
 * one per 500. A stop in the middle of a stream ends it with every row
 * either relayed (and counted) or still pending, none twice. */
START_TEST(background_relay_streams_past_batch_max_and_stops_in_the_middle)
{
    struct world w;
    world_open(&w);
    enum { N = 6000, BATCH = 500 };
    put_numbered(&w, N);
    msgbus_outbox_relay_opts_t o = {.batch_max = BATCH, .poll_interval_ms = 60000};
    tu_ck_ok(msgbus_outbox_relay_start(w.relay, w.bus, &o));
    int next = 0;
    ck_assert_int_eq(take_in_order(&w, &next, 1000), 1000);
    tu_ck_ok(msgbus_outbox_relay_stop(w.relay));
    msgbus_outbox_relay_counters_t c;
    tu_ck_ok(msgbus_outbox_relay_counters(w.relay, &c));
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(w.relay, &st));
    printf("stream: stopped after %llu rows in %llu passes, %llu pending\n",
           (unsigned long long)c.relayed, (unsigned long long)c.passes,
           (unsigned long long)st.pending);
    ck_assert_uint_eq(c.relayed + st.pending, N);
    ck_assert_uint_eq(c.failures, 0);
    /* Everything relayed arrived once, in order; nothing more is coming. */
    take_in_order(&w, &next, N);
    ck_assert_uint_eq((uint64_t)next, c.relayed);

    tu_ck_ok(msgbus_outbox_relay_start(w.relay, w.bus, &o));
    take_in_order(&w, &next, N - next);
    ck_assert_int_eq(next, N);
    tu_ck_ok(msgbus_outbox_relay_stop(w.relay));
    tu_ck_ok(msgbus_outbox_relay_counters(w.relay, &c));
    printf("stream: %llu rows in %llu passes (batch_max %d)\n", (unsigned long long)c.relayed,
           (unsigned long long)c.passes, BATCH);
    ck_assert_uint_eq(c.relayed, N);
    ck_assert_uint_lt(c.passes, N / BATCH);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    ck_assert_ptr_null(tu_receive(w.sub, 100));
    world_close(&w);
}
END_TEST

/* A streaming pass adds its rows to the relay counters as it marks them,
 * so an operator sees progress while it runs (confirms delayed 20 ms: the
 * 6,000 rows take a pass of a few hundred ms); at its end the rest is
 * added, and nothing twice. */
START_TEST(a_streaming_pass_counts_rows_as_it_marks_them)
{
    struct world w;
    world_open_opts(&w, "?fault.confirm_delay_ms=20");
    enum { N = 6000, BATCH = 500 };
    put_numbered(&w, N);
    msgbus_outbox_relay_opts_t o = {.batch_max = BATCH, .poll_interval_ms = 60000};
    tu_ck_ok(msgbus_outbox_relay_start(w.relay, w.bus, &o));
    msgbus_outbox_relay_counters_t c = {0};
    int64_t until = tu_now_ms() + 20000;
    while (c.relayed == 0 && tu_now_ms() < until) {
        usleep(2000);
        tu_ck_ok(msgbus_outbox_relay_counters(w.relay, &c));
    }
    printf("stream: %llu rows counted while %llu passes had ended\n",
           (unsigned long long)c.relayed, (unsigned long long)c.passes);
    ck_assert_uint_gt(c.relayed, 0);
    ck_assert_uint_eq(c.passes, 0);
    ck_assert_uint_lt(c.relayed, N);
    int next = 0;
    ck_assert_int_eq(take_in_order(&w, &next, N), N);
    tu_ck_ok(msgbus_outbox_relay_stop(w.relay));
    tu_ck_ok(msgbus_outbox_relay_counters(w.relay, &c));
    ck_assert_uint_eq(c.relayed, N);
    ck_assert_int_eq(count_rows(w.app, "1"), 0);
    world_close(&w);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("outbox_sqlite");
    TCase *tc = tcase_create("outbox");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, rollback_leaves_no_message);
    tcase_add_test(tc, commit_publishes_once_with_the_stored_id);
    tcase_add_test(tc, cloudevents_attributes_travel_through_the_outbox);
    tcase_add_test(tc, autocommit_put_is_its_own_transaction);
    tcase_add_test(tc, rows_are_published_in_commit_order);
    tcase_add_test(tc, retention_keeps_sent_rows_until_purged);
    tcase_add_test(tc, stats_report_pending_count_and_age);
    tcase_add_test(tc, poison_row_is_moved_aside_while_other_keys_flow);
    tcase_add_test(tc, too_large_row_is_moved_aside_and_blocks_only_its_key);
    tcase_add_test(tc, overlapping_slices_keep_order_and_hold_a_failed_key);
    tcase_add_test(tc, retention_marks_overlapping_slices_sent);
    tcase_add_test(tc, store_failure_in_a_long_pass_loses_nothing);
    tcase_add_test(tc, large_rows_go_in_slices_bounded_by_bytes);
    tcase_add_test(tc, write_lock_held_past_the_busy_timeout_publishes_each_row_once);
    tcase_add_test(tc, background_relay_under_a_held_write_lock_publishes_each_row_once);
    tcase_add_test(tc, closing_with_unmarked_rows_logs_them_and_loses_nothing);
    tcase_add_test(tc, existing_table_is_checked);
    tcase_add_test(tc, table_name_of_50_bytes_is_the_longest);
    tcase_add_test(tc, relay_refuses_a_connection_inside_a_transaction);
    tcase_add_test(tc, bad_arguments_are_refused);
    tcase_add_test(tc, background_relay_publishes_on_wake_and_drains_on_stop);
    tcase_add_test(tc, a_long_pass_counts_each_row_once);
    tcase_add_test(tc, background_relay_streams_past_batch_max_and_stops_in_the_middle);
    tcase_add_test(tc, a_streaming_pass_counts_rows_as_it_marks_them);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
