/*
 * test_outbox_pg_common.h — the outbox's crash and concurrency promises
 * with relay PROCESSES on the real PostgreSQL and a real broker. Included
 * by test_outbox_pg_kafka.c and test_outbox_pg_amqp.c, which define
 * OUTBOX_BUS_KIND ("kafka" / "amqp") so each builds only with its backend.
 *
 * The test binary is its own relay: run as `<exe> relay <table> <batch>`
 * it relays the outbox into the broker until nothing is pending. The
 * parent forks/execs such children, kills some with SIGKILL, and consumes
 * everything on a thread of its own, checking per key that first arrivals
 * come in exactly the written order and that every copy of a row carries
 * the row's id.
 */
#ifndef TEST_OUTBOX_PG_COMMON_H
#define TEST_OUTBOX_PG_COMMON_H

#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "msgbus/outbox.h"
#include "testutil.h"

#ifndef OUTBOX_BUS_KIND
#error "define OUTBOX_BUS_KIND"
#endif

static char g_exe[4096];

static PGconn *opg_connect(void)
{
    PGconn *c = PQconnectdb(tu_broker_url("pg"));
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "FAIL: PostgreSQL: %s\n", PQerrorMessage(c));
        exit(1);
    }
    return c;
}

static void opg_exec(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                  "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* ---- child mode ---- */

/* Relays until nothing is pending (or, `forever`, until killed). */
static int relay_child(const char *table, const char *topic, int batch, bool forever)
{
    PGconn *c = opg_connect();
    msgbus_outbox_t *ob = NULL;
    msgbus_t *bus = NULL;
    if (msgbus_outbox_open_pg(&ob, c, table) != MSGBUS_OK ||
        msgbus_open(&bus, tu_broker_url(OUTBOX_BUS_KIND), NULL) != MSGBUS_OK) {
        fprintf(stderr, "relay %d: %s\n", (int)getpid(), msgbus_last_error());
        return 2;
    }
    (void)topic;
    size_t total = 0;
    int idle = 0, errors = 0;
    while (idle < 3) {
        size_t n = 0;
        msgbus_err_t e = msgbus_outbox_relay(ob, bus, (size_t)batch, 15000, &n);
        total += n;
        if (e != MSGBUS_OK) {
            if (++errors > 50) {
                fprintf(stderr, "relay %d: giving up: %s\n", (int)getpid(), msgbus_last_error());
                return 3;
            }
            usleep(100000); /* back off */
            continue;
        }
        if (n == 0) {
            msgbus_outbox_stats_t st;
            if (msgbus_outbox_stats(ob, &st) != MSGBUS_OK)
                return 4;
            idle = st.pending == 0 && !forever ? idle + 1 : 0;
            usleep(20000);
        }
    }
    printf("relay %d: marked %zu rows sent (%d transient errors)\n", (int)getpid(), total, errors);
    fflush(stdout);
    msgbus_outbox_close(ob);
    msgbus_close(bus);
    PQfinish(c);
    return 0;
}

static pid_t spawn_relay(const char *table, const char *topic, int batch, bool forever)
{
    char b[16];
    snprintf(b, sizeof b, "%d", batch);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        execl(g_exe, g_exe, "relay", table, topic, b, forever ? "forever" : "idle", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* ---- the consumer side ---- */

struct consumer {
    msgbus_sub_t *sub;
    int nrows, nkeys;
    char **ids;           /* the id each row was written with */
    unsigned char *seen;
    int *last_seq;
    long received, unique, dup, order_errors, id_errors;
    volatile int stop;
};

static void *consume(void *p)
{
    struct consumer *c = p;
    while (!c->stop && c->unique < c->nrows) {
        msgbus_msg_t *in = NULL;
        msgbus_err_t e = msgbus_receive(c->sub, 500, &in);
        if (e == MSGBUS_ERR_TIMEOUT)
            continue;
        if (e != MSGBUS_OK) {
            fprintf(stderr, "receive: %s\n", msgbus_last_error());
            break;
        }
        size_t len;
        const char *pl = msgbus_msg_payload(in, &len);
        char text[32];
        snprintf(text, sizeof text, "%.*s", (int)len, pl);
        int i = atoi(text);
        c->received++;
        if (i < 0 || i >= c->nrows || !msgbus_msg_id(in) || strcmp(msgbus_msg_id(in), c->ids[i]) != 0) {
            c->id_errors++;
        } else if (c->seen[i]) {
            c->dup++;
        } else {
            c->seen[i] = 1;
            c->unique++;
            int k = i % c->nkeys, seq = i / c->nkeys;
            if (seq != c->last_seq[k] + 1)
                c->order_errors++;
            c->last_seq[k] = seq;
        }
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    return NULL;
}

struct scene {
    PGconn *app;
    msgbus_outbox_t *ob;
    msgbus_t *bus;
    char table[64], topic[64], group[64];
    struct consumer con;
    pthread_t th;
    int written;
};

/* Writes rows [s->written, upto): payload = row number, key = row % nkeys,
 * in transactions of up to 1000 rows. */
static void scene_put(struct scene *s, int upto)
{
    int nkeys = s->con.nkeys;
    for (int i = s->written; i < upto; i++) {
        if ((i - s->written) % 1000 == 0)
            opg_exec(s->app, "BEGIN");
        char key[16], text[32];
        snprintf(key, sizeof key, "key-%d", i % nkeys);
        snprintf(text, sizeof text, "%d", i);
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, text, strlen(text)));
        tu_ck_ok(msgbus_msg_set_key(m, key, strlen(key)));
        tu_ck_ok(msgbus_outbox_put(s->ob, s->topic, m));
        s->con.ids[i] = strdup(msgbus_msg_id(m));
        msgbus_msg_free(m);
        if ((i - s->written) % 1000 == 999 || i == upto - 1)
            opg_exec(s->app, "COMMIT");
    }
    s->written = upto;
}

/* Opens the outbox and the consumer for nrows rows, writes the first
 * `initial` of them and starts consuming. */
static void scene_open(struct scene *s, int nrows, int nkeys, int initial)
{
    memset(s, 0, sizeof *s);
    tu_unique(s->table, sizeof s->table, "obp");
    for (char *p = s->table; *p; p++)
        if (*p == '-')
            *p = '_';
    s->table[40] = '\0';
    tu_unique(s->topic, sizeof s->topic, "outbox");
    tu_unique(s->group, sizeof s->group, "check");
    s->app = opg_connect();
    tu_ck_ok(msgbus_outbox_open_pg(&s->ob, s->app, s->table));
    tu_ck_ok(msgbus_open(&s->bus, tu_broker_url(OUTBOX_BUS_KIND), NULL));
    tu_ck_ok(msgbus_declare(s->bus, s->topic, s->group));
    tu_ck_ok(msgbus_subscribe(s->bus, s->topic, s->group, &s->con.sub));
    s->con.nrows = nrows;
    s->con.nkeys = nkeys;
    s->con.ids = calloc((size_t)nrows, sizeof *s->con.ids);
    s->con.seen = calloc((size_t)nrows, 1);
    s->con.last_seq = malloc((size_t)nkeys * sizeof *s->con.last_seq);
    for (int k = 0; k < nkeys; k++)
        s->con.last_seq[k] = -1;
    scene_put(s, initial);
    ck_assert_int_eq(pthread_create(&s->th, NULL, consume, &s->con), 0);
}

/* Waits until every row arrived or `ms` passed without progress. */
static void scene_wait(struct scene *s, int ms)
{
    long last = -1;
    int64_t since = tu_now_ms();
    while (s->con.unique < s->con.nrows && tu_now_ms() - since < ms) {
        usleep(100000);
        if (s->con.unique != last) {
            last = s->con.unique;
            since = tu_now_ms();
        }
    }
    s->con.stop = 1;
    pthread_join(s->th, NULL);
}

static void scene_close(struct scene *s)
{
    msgbus_sub_close(s->con.sub);
    msgbus_outbox_close(s->ob);
    msgbus_close(s->bus);
    char sql[128];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS \"%s\"", s->table);
    opg_exec(s->app, sql);
    PQfinish(s->app);
    for (int i = 0; i < s->con.nrows; i++)
        free(s->con.ids[i]);
    free(s->con.ids);
    free(s->con.seen);
    free(s->con.last_seq);
}

static long pending_rows(struct scene *s)
{
    msgbus_outbox_stats_t st;
    tu_ck_ok(msgbus_outbox_stats(s->ob, &st));
    return (long)st.pending;
}

START_TEST(three_relay_processes_publish_50000_rows)
{
    struct scene s;
    enum { N = 50000, K = 100 };
    scene_open(&s, N, K, N);
    int64_t t0 = tu_now_ms();
    pid_t pid[3];
    for (int i = 0; i < 3; i++)
        pid[i] = spawn_relay(s.table, s.topic, 500, false);
    int ok = 0;
    for (int i = 0; i < 3; i++) {
        int st = 0;
        waitpid(pid[i], &st, 0);
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    scene_wait(&s, 60000);
    long pend = pending_rows(&s);
    printf("%s three relays: rows %d, received %ld, unique %ld, duplicates %ld, order errors %ld, "
           "id errors %ld, pending %ld, relays ok %d/3, %lld ms\n",
           OUTBOX_BUS_KIND, N, s.con.received, s.con.unique, s.con.dup, s.con.order_errors,
           s.con.id_errors, pend, ok, (long long)(tu_now_ms() - t0));
    ck_assert_int_eq(ok, 3);
    ck_assert_int_eq(s.con.unique, N);
    ck_assert_int_eq(s.con.order_errors, 0);
    ck_assert_int_eq(s.con.id_errors, 0);
    ck_assert_int_eq(pend, 0);
    scene_close(&s);
}
END_TEST

START_TEST(relay_killed_20_times_loses_nothing)
{
    struct scene s;
    enum { N = 20000, K = 50 };
    /* A quarter of the rows at first, the rest arriving between kills,
     * so every kill lands on a relay with work to do. */
    scene_open(&s, N, K, N / 4);
    int kills = 0, kills_busy = 0, spawned = 0;
    unsigned seed = (unsigned)getpid();
    /* Count only kills that land while rows are pending: keep killing (up
     * to 200 relays) until 20 of those happened, feeding rows in small
     * steps so there is work at each kill even on a fast, idle machine. */
    const int step = (N - N / 4) / 25;
    while (kills_busy < 20 && spawned < 200) {
        /* more rows arrive, then a relay that runs until killed, with
         * small batches so it is mid-batch most of the time */
        scene_put(&s, s.written + step < N ? s.written + step : N);
        pid_t pid = spawn_relay(s.table, s.topic, 25, true);
        spawned++;
        usleep((useconds_t)(20000 + rand_r(&seed) % 100000));
        long pend = pending_rows(&s);
        kill(pid, SIGKILL);
        int st = 0;
        waitpid(pid, &st, 0);
        if (WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) {
            kills++;
            kills_busy += pend > 0;
        }
        printf("kill %d: pending %ld, received %ld\n", kills, pend, s.con.received);
    }
    scene_put(&s, N);
    /* A last relay finishes the work. */
    pid_t pid = spawn_relay(s.table, s.topic, 500, false);
    int st = 0;
    waitpid(pid, &st, 0);
    scene_wait(&s, 60000);
    long pend = pending_rows(&s);
    printf("%s crash: kills %d (%d while rows were pending), rows %d, publishes %ld, "
           "duplicates %ld, unique %ld, order errors %ld, id errors %ld, pending %ld\n",
           OUTBOX_BUS_KIND, kills, kills_busy, N, s.con.received, s.con.dup, s.con.unique,
           s.con.order_errors, s.con.id_errors, pend);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert_int_ge(kills_busy, 20); /* killed mid-work at least 20 times */
    ck_assert_int_eq(s.con.unique, N);      /* every committed row published */
    ck_assert_int_eq(s.con.id_errors, 0);   /* every copy carries the row's id */
    ck_assert_int_eq(s.con.order_errors, 0);
    ck_assert_int_eq(pend, 0);
    scene_close(&s);
}
END_TEST

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", g_exe, sizeof g_exe - 1);
    if (n <= 0)
        return 1;
    g_exe[n] = '\0';
    if (argc == 6 && strcmp(argv[1], "relay") == 0)
        return relay_child(argv[2], argv[3], atoi(argv[4]), strcmp(argv[5], "forever") == 0);
    Suite *su = suite_create("outbox_pg_" OUTBOX_BUS_KIND);
    TCase *tc = tcase_create("outbox");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, three_relay_processes_publish_50000_rows);
    tcase_add_test(tc, relay_killed_20_times_loses_nothing);
    suite_add_tcase(su, tc);
    return tu_run_suite(su);
}

#endif
