/*
 * test_outbox_outage_kafka_amqp.c — a broker outage while the outbox relay
 * works: the broker is stopped and started again (scripts/brokers
 * restart-kafka / restart-rabbitmq) while the application keeps committing
 * outbox rows. Publishes during the outage fail (short message timeouts),
 * so rows must stay pending — not moved aside as poison — and the relay
 * must retry with backoff until the broker is back. At the end every row
 * committed was published: the test prints rows / pending peak / received.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "msgbus/outbox.h"
#include "testutil.h"

#define MAX_ROWS 4000

static void sql(sqlite3 *db, const char *q)
{
    char *err = NULL;
    int rc = sqlite3_exec(db, q, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "sql '%s': %s", q, err ? err : "?");
}

static sqlite3 *open_db(const char *path)
{
    sqlite3 *db;
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    sql(db, "PRAGMA journal_mode=WAL");
    return db;
}

static char *ids[MAX_ROWS];
static int nids;

/* One transaction with `n` outbox rows; their ids are remembered. */
static void put_rows(sqlite3 *db, msgbus_outbox_t *ob, const char *topic, int n)
{
    sql(db, "BEGIN");
    for (int i = 0; i < n && nids < MAX_ROWS; i++) {
        char body[32];
        snprintf(body, sizeof body, "row %d", nids);
        msgbus_msg_t *m;
        tu_ck_ok(msgbus_msg_new(&m, body, strlen(body)));
        tu_ck_ok(msgbus_outbox_put(ob, topic, m));
        ids[nids++] = strdup(msgbus_msg_id(m));
        msgbus_msg_free(m);
    }
    sql(db, "COMMIT");
}

static uint64_t pending(msgbus_outbox_t *ob, uint64_t *failed)
{
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(ob, &st));
    if (failed)
        *failed = st.failed;
    return st.pending;
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void run_outage(const char *kind, const char *restart_cmd, const char *timeout_opt)
{
    const char *base = tu_broker_url(kind);
    char url[600];
    snprintf(url, sizeof url, "%s%s%s", base, strchr(base, '?') ? "&" : "?", timeout_opt);
    char repo[512];
    snprintf(repo, sizeof repo, "%s", __FILE__); /* <repo>/tests/integration/x.c */
    for (int i = 0; i < 3; i++)
        *strrchr(repo, '/') = 0;
    char script[600];
    snprintf(script, sizeof script, "%s/scripts/brokers", repo);
    ck_assert_msg(access(script, R_OK) == 0, "cannot find %s", script);

    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    char topic[96];
    tu_unique(topic, sizeof topic, "outage");
    tu_ck_ok(msgbus_declare(bus, topic, "g"));

    char dir[] = "/tmp/msgbus-outage-XXXXXX", path[256];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/app.db", dir);
    sqlite3 *app = open_db(path), *relay_db = open_db(path);
    msgbus_outbox_t *ob, *relay;
    tu_ck_ok(msgbus_outbox_open_sqlite(&ob, app, NULL));
    tu_ck_ok(msgbus_outbox_open_sqlite(&relay, relay_db, NULL));
    msgbus_outbox_relay_opts_t opts = {.batch_max = 100,
                                       .confirm_timeout_ms = 5000,
                                       .poll_interval_ms = 100,
                                       .backoff_min_ms = 100,
                                       .backoff_max_ms = 1000};
    tu_ck_ok(msgbus_outbox_relay_start(relay, bus, &opts));

    nids = 0;
    for (int i = 0; i < 10; i++)
        put_rows(app, ob, topic, 20);
    msgbus_outbox_relay_wake(relay);
    int64_t t0 = tu_now_ms();
    while (pending(ob, NULL) > 0 && tu_now_ms() - t0 < 30000)
        usleep(50000);
    ck_assert_msg(pending(ob, NULL) == 0, "relay did not drain before the outage");

    /* The outage: the broker goes down and comes back while rows commit. */
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/bash", "bash", script, restart_cmd, (char *)NULL);
        _exit(127);
    }
    uint64_t peak = 0, failed = 0;
    int64_t pending_ms = 0, last = tu_now_ms();
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        put_rows(app, ob, topic, 10);
        msgbus_outbox_relay_wake(relay);
        usleep(100000);
        uint64_t p = pending(ob, &failed);
        int64_t now = tu_now_ms();
        if (p > 0)
            pending_ms += now - last;
        last = now;
        if (p > peak)
            peak = p;
        ck_assert_msg(failed == 0, "%llu row(s) moved aside during an outage",
                      (unsigned long long)failed);
    }
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s %s failed", script,
                  restart_cmd);
    int outage_rows = nids - 200;
    put_rows(app, ob, topic, 50); /* after the broker is back */
    msgbus_outbox_relay_wake(relay);
    t0 = tu_now_ms();
    while (pending(ob, &failed) > 0 && tu_now_ms() - t0 < 90000)
        usleep(100000);
    uint64_t left = pending(ob, &failed);

    /* Every committed row reaches a consumer of the declared group. */
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    char **got = calloc(MAX_ROWS * 4, sizeof *got);
    int ngot = 0;
    int64_t deadline = tu_now_ms() + 90000;
    int unique = 0;
    while (tu_now_ms() < deadline && ngot < MAX_ROWS * 4) {
        msgbus_msg_t *m = tu_receive(sub, 2000);
        if (!m) {
            /* quiet: count what we have */
            qsort(got, (size_t)ngot, sizeof *got, cmp);
            unique = 0;
            for (int i = 0; i < ngot; i++)
                unique += i == 0 || strcmp(got[i], got[i - 1]) != 0;
            if (unique >= nids)
                break;
            continue;
        }
        got[ngot++] = strdup(msgbus_msg_id(m));
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    qsort(got, (size_t)ngot, sizeof *got, cmp);
    qsort(ids, (size_t)nids, sizeof *ids, cmp);
    int missing = 0;
    for (int i = 0, j = 0; i < nids; i++) {
        while (j < ngot && strcmp(got[j], ids[i]) < 0)
            j++;
        if (j >= ngot || strcmp(got[j], ids[i]) != 0)
            missing++;
    }
    printf("%s outage: rows %d (%d committed during the outage), pending peak %llu, pending "
           "for %lld ms, moved aside %llu, left pending %llu, received %d, missing %d, "
           "duplicates %d\n",
           kind, nids, outage_rows, (unsigned long long)peak, (long long)pending_ms,
           (unsigned long long)failed, (unsigned long long)left, ngot, missing,
           ngot - (nids - missing));
    msgbus_sub_close(sub);
    tu_ck_ok(msgbus_outbox_relay_stop(relay));
    msgbus_outbox_close(relay);
    msgbus_outbox_close(ob);
    msgbus_close(bus);
    sqlite3_close(relay_db);
    sqlite3_close(app);
    for (int i = 0; i < ngot; i++)
        free(got[i]);
    free(got);
    for (int i = 0; i < nids; i++)
        free(ids[i]);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);

    ck_assert_int_gt(outage_rows, 0);
    ck_assert_msg(peak > 0 && pending_ms >= 1000,
                  "rows never stayed pending: the outage was not observed (peak %llu, %lld ms)",
                  (unsigned long long)peak, (long long)pending_ms);
    ck_assert_int_eq(failed, 0);
    ck_assert_int_eq(left, 0);
    ck_assert_int_eq(missing, 0);
}

START_TEST(kafka_outage_rows_stay_pending_then_all_published)
{
    run_outage("kafka", "restart-kafka", "message.timeout.ms=2000&session.timeout.ms=6000");
}
END_TEST

START_TEST(amqp_outage_rows_stay_pending_then_all_published)
{
    run_outage("amqp", "restart-rabbitmq", "message_timeout_ms=1500");
}
END_TEST

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    Suite *s = suite_create("outbox_outage");
    TCase *tc = tcase_create("outage");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, kafka_outage_rows_stay_pending_then_all_published);
    tcase_add_test(tc, amqp_outage_rows_stay_pending_then_all_published);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
