/*
 * bench_outbox.c — relay throughput of the SQLite outbox against direct
 * publishing with confirms, same bus, same run.
 *
 *   bench_outbox [messages=100000] [payload_bytes=64] [batch=10000] [rounds=5]
 *
 * For each bus that can be opened — mem:// always, Kafka and RabbitMQ when
 * $MSGBUS_TEST_KAFKA_URL / $MSGBUS_TEST_AMQP_URL are set (source
 * .brokers/env) and the backend is compiled in — it measures, in
 * alternating rounds:
 *   raw    : msgbus_publish of N messages + msgbus_flush (every confirm in);
 *   msgbus : msgbus_outbox_relay calls of `batch` rows draining N committed
 *            rows (written beforehand, untimed; the relay reads, publishes,
 *            waits for the confirms and deletes, slice by slice);
 *   alone  : SQLite by itself reading and deleting the same rows in the
 *            same transactions, no publishing: the ceiling of any relay on
 *            this table, printed as the highest ratio it allows.
 * Each phase also prints the CPU it used (this process, and the machine),
 * which says whether a side was short of CPU or waiting, and each bus
 * gets a CPU bound for the ratio (direct publishing's CPU per message,
 * the broker's included, plus SQLite alone's, over the cores there are)
 * and how much of it the relay reached (median over the rounds).
 * (RabbitMQ: the topic has no queue bound, so the URL gets unroutable=ok
 * and the broker confirms then drops; the same for both sides.)
 * and prints
 *   RESULT case=outbox_sqlite_<bus> msgbus=<msg/s> raw=<msg/s> ratio=<msgbus/raw>
 */
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "msgbus/outbox.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU use of a phase: this process (user+sys) and the whole machine
 * (every core, from /proc/stat), so a figure says whether the phase was
 * short of CPU or waiting. */
struct cpu_mark {
    double t, proc, busy, total;
};

static void cpu_mark(struct cpu_mark *m)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    m->t = now_s();
    m->proc = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
              (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    m->busy = m->total = 0;
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    if (f && fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                    &v[4], &v[5], &v[6], &v[7]) == 8) {
        for (int i = 0; i < 8; i++)
            m->total += (double)v[i];
        m->busy = m->total - (double)v[3] - (double)v[4];
    }
    if (f)
        fclose(f);
}

/* Prints a phase's CPU use; returns the core-seconds it took, of the whole
 * machine (broker included) when `machine_wide`, else of this process. */
static double cpu_report(const char *what, const struct cpu_mark *a, bool machine_wide)
{
    struct cpu_mark b;
    cpu_mark(&b);
    double wall = b.t - a->t;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double machine = b.total > a->total ? (b.busy - a->busy) / (b.total - a->total) : 0;
    double proc = b.proc - a->proc;
    printf("info: %s: %.3f s, this process %.2f cores, machine %.0f%% busy of %ld cores\n", what,
           wall, wall > 0 ? proc / wall : 0, machine * 100, ncpu);
    return machine_wide ? machine * (double)ncpu * wall : proc;
}

static int die(const char *what)
{
    fprintf(stderr, "bench_outbox: %s: %s\n", what, msgbus_last_error());
    exit(1);
}

/* A database file with its WAL and shared-memory files. */
static void remove_db(const char *path)
{
    char p[256];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

static msgbus_msg_t *make_msg(size_t i, size_t bytes)
{
    static char payload[65536];
    memset(payload, 'x', bytes < sizeof payload ? bytes : sizeof payload);
    msgbus_msg_t *m = NULL;
    if (msgbus_msg_new(&m, payload, bytes) != MSGBUS_OK)
        die("msg_new");
    char key[16];
    snprintf(key, sizeof key, "k%zu", i % 64);
    msgbus_msg_set_key(m, key, strlen(key));
    return m;
}

static double bench_raw(msgbus_t *bus, const char *topic, size_t n, size_t bytes, const char *tag,
                        double *cpu)
{
    struct cpu_mark cm;
    cpu_mark(&cm);
    double t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        msgbus_msg_t *m = make_msg(i, bytes);
        msgbus_err_t e;
        while ((e = msgbus_publish(bus, topic, m, NULL, NULL)) == MSGBUS_ERR_QUEUE_FULL)
            msgbus_poll(bus, 10, NULL);
        if (e != MSGBUS_OK)
            die("publish");
        msgbus_msg_free(m);
    }
    size_t failed = 0;
    if (msgbus_flush(bus, 120000, &failed) != MSGBUS_OK)
        die("flush");
    double rate = (double)n / (now_s() - t0);
    if (tag)
        *cpu = cpu_report(tag, &cm, true);
    return rate;
}

/* The store alone: the same rows read in id order and deleted by id range,
 * `batch` rows per transaction, as the relay's claim and mark do, with no
 * publishing at all. No relay on this table contract can go faster, so
 * floor/direct bounds the ratio whatever the broker. */
static double bench_store_alone(size_t n, size_t bytes, size_t batch, const char *tag,
                                double *cpu)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/msgbus-bench-outbox-%d-%s-alone.db", (int)getpid(), tag);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "bench_outbox: cannot open %s\n", path);
        exit(1);
    }
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    msgbus_outbox_t *ob = NULL;
    if (msgbus_outbox_open_sqlite(&ob, db, NULL) != MSGBUS_OK)
        die("outbox open");
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        msgbus_msg_t *m = make_msg(i, bytes);
        if (msgbus_outbox_put(ob, "bench-alone", m) != MSGBUS_OK)
            die("put");
        msgbus_msg_free(m);
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    msgbus_outbox_close(ob);
    sqlite3_stmt *sel = NULL, *del = NULL;
    if (sqlite3_prepare_v2(db,
                           "SELECT id, msg_id, topic, msg_key, headers, payload,"
                           " coalesce(msg_ts, created_at) FROM " MSGBUS_OUTBOX_TABLE
                           " NOT INDEXED WHERE id > ?2 AND state = 'pending' ORDER BY id LIMIT ?1",
                           -1, &sel, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "DELETE FROM " MSGBUS_OUTBOX_TABLE
                           " WHERE id BETWEEN ?1 AND ?2 AND state = 'pending'",
                           -1, &del, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_outbox: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
    struct cpu_mark cm;
    cpu_mark(&cm);
    double t0 = now_s();
    size_t total = 0, bytes_seen = 0;
    sqlite3_int64 after = 0;
    for (;;) {
        sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        sqlite3_bind_int64(sel, 1, (sqlite3_int64)batch);
        sqlite3_bind_int64(sel, 2, after);
        sqlite3_int64 lo = 0, hi = 0;
        size_t k = 0;
        while (sqlite3_step(sel) == SQLITE_ROW) {
            hi = sqlite3_column_int64(sel, 0);
            if (!k)
                lo = hi;
            for (int c = 1; c <= 5; c++)
                bytes_seen += (size_t)sqlite3_column_bytes(sel, c) +
                              (sqlite3_column_blob(sel, c) != NULL);
            bytes_seen += (size_t)sqlite3_column_int64(sel, 6) & 1;
            k++;
        }
        sqlite3_reset(sel);
        if (k) {
            sqlite3_bind_int64(del, 1, lo);
            sqlite3_bind_int64(del, 2, hi);
            if (sqlite3_step(del) != SQLITE_DONE || (size_t)sqlite3_changes(db) != k) {
                fprintf(stderr, "bench_outbox: delete: %s\n", sqlite3_errmsg(db));
                exit(1);
            }
            sqlite3_reset(del);
        }
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        if (!k)
            break;
        total += k;
        after = hi;
    }
    double rate = (double)total / (now_s() - t0);
    char what[64];
    snprintf(what, sizeof what, "%s SQLite alone", tag);
    *cpu = cpu_report(what, &cm, false);
    if (total != n || bytes_seen == 0) {
        fprintf(stderr, "bench_outbox: store alone read %zu of %zu rows\n", total, n);
        exit(1);
    }
    sqlite3_finalize(sel);
    sqlite3_finalize(del);
    sqlite3_close(db);
    remove_db(path);
    return rate;
}

/* `background`: the relay's own thread (msgbus_outbox_relay_start with
 * batch_max `batch`) instead of msgbus_outbox_relay calls of `batch` rows;
 * timed until its counters say all n rows were relayed. */
static double bench_relay(msgbus_t *bus, const char *topic, size_t n, size_t bytes, size_t batch,
                          const char *tag, bool background)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/msgbus-bench-outbox-%d-%s.db", (int)getpid(), tag);
    sqlite3 *app = NULL, *rel = NULL;
    if (sqlite3_open(path, &app) != SQLITE_OK || sqlite3_open(path, &rel) != SQLITE_OK) {
        fprintf(stderr, "bench_outbox: cannot open %s\n", path);
        exit(1);
    }
    sqlite3_exec(app, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    sqlite3_exec(rel, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    msgbus_outbox_t *ob = NULL, *relay = NULL;
    if (msgbus_outbox_open_sqlite(&ob, app, NULL) != MSGBUS_OK ||
        msgbus_outbox_open_sqlite(&relay, rel, NULL) != MSGBUS_OK)
        die("outbox open");
    double t0 = now_s();
    sqlite3_exec(app, "BEGIN", NULL, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        msgbus_msg_t *m = make_msg(i, bytes);
        if (msgbus_outbox_put(ob, topic, m) != MSGBUS_OK)
            die("put");
        msgbus_msg_free(m);
        if (i % 1000 == 999) {
            sqlite3_exec(app, "COMMIT", NULL, NULL, NULL);
            sqlite3_exec(app, "BEGIN", NULL, NULL, NULL);
        }
    }
    sqlite3_exec(app, "COMMIT", NULL, NULL, NULL);
    printf("info: %s: put %zu rows at %.0f rows/s (transactions of 1000)\n", tag, n,
           (double)n / (now_s() - t0));
    char what[64];
    snprintf(what, sizeof what, "%s %s", tag, background ? "background relay" : "relay");
    struct cpu_mark cm;
    cpu_mark(&cm);
    t0 = now_s();
    size_t total = 0;
    if (background) {
        msgbus_outbox_relay_opts_t o = {.batch_max = batch, .confirm_timeout_ms = 120000};
        if (msgbus_outbox_relay_start(relay, bus, &o) != MSGBUS_OK)
            die("relay start");
        msgbus_outbox_relay_counters_t c = {0};
        double give_up = t0 + 120;
        /* Looks every 2 ms: looking every 0.2 ms took enough of this
         * 2-core machine to slow the relay by ~10 %. */
        while (c.relayed < n && now_s() < give_up) {
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
            if (msgbus_outbox_relay_counters(relay, &c) != MSGBUS_OK)
                die("relay counters");
        }
        total = (size_t)c.relayed;
    } else {
        while (total < n) {
            size_t k = 0;
            if (msgbus_outbox_relay(relay, bus, batch, 120000, &k) != MSGBUS_OK)
                die("relay");
            if (k == 0)
                break;
            total += k;
        }
    }
    double rate = (double)total / (now_s() - t0);
    cpu_report(what, &cm, true);
    if (background && msgbus_outbox_relay_stop(relay) != MSGBUS_OK)
        die("relay stop");
    if (total != n) {
        fprintf(stderr, "bench_outbox: relayed %zu of %zu\n", total, n);
        exit(1);
    }
    msgbus_outbox_close(relay);
    msgbus_outbox_close(ob);
    sqlite3_close(rel);
    sqlite3_close(app);
    remove_db(path);
    return rate;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Rounds alternate direct and relay on the same bus and topic, so both
 * meet the same broker state (segment rolls, JIT, the other load on the
 * machine); the line reports each side's median. */
static void run(const char *tag, const char *url, size_t n, size_t bytes, size_t batch,
                size_t rounds)
{
    msgbus_t *bus = NULL;
    if (msgbus_open(&bus, url, NULL) != MSGBUS_OK) {
        printf("info: %s skipped: cannot open bus: %s\n", tag, msgbus_last_error());
        return;
    }
    char topic[96];
    snprintf(topic, sizeof topic, "bench-outbox-%s-%d-%ld", tag, (int)getpid(), (long)time(NULL));
    if (msgbus_declare(bus, topic, NULL) != MSGBUS_OK) {
        printf("info: %s skipped: declare: %s\n", tag, msgbus_last_error());
        msgbus_close(bus);
        return;
    }
    /* Warm-up: connections, metadata. */
    bench_raw(bus, topic, n / 20 + 1, bytes, NULL, NULL);
    double raw[64], relay[64], bg[64], alone[64], cbound[64], of_bound[64], bg_of_bound[64];
    char what[64];
    snprintf(what, sizeof what, "%s direct", tag);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    for (size_t r = 0; r < rounds; r++) {
        double direct_cpu = 0, alone_cpu = 0;
        raw[r] = bench_raw(bus, topic, n, bytes, what, &direct_cpu);
        relay[r] = bench_relay(bus, topic, n, bytes, batch, tag, false);
        bg[r] = bench_relay(bus, topic, n, bytes, batch, tag, true);
        alone[r] = bench_store_alone(n, bytes, batch, tag, &alone_cpu);
        /* The relay does what direct publishing does (with the broker's
         * share) plus the store's work; with every core busy it can reach
         * at most ncpu / (both costs per row). */
        cbound[r] = (double)ncpu / ((direct_cpu + alone_cpu) / (double)n) / raw[r];
        /* How much of that bound the relay reached in this round (the
         * issue's target is >= 0.9 as a median). */
        of_bound[r] = cbound[r] > 0 ? relay[r] / raw[r] / cbound[r] : 0;
        bg_of_bound[r] = cbound[r] > 0 ? bg[r] / raw[r] / cbound[r] : 0;
        printf("info: %s round %zu: relay %.0f/s background relay %.0f/s direct %.0f/s ratios "
               "%.2f / %.2f; SQLite alone %.0f/s\n",
               tag, r + 1, relay[r], bg[r], raw[r], relay[r] / raw[r], bg[r] / raw[r], alone[r]);
    }
    double mr = median(relay, rounds), md = median(raw, rounds), ma = median(alone, rounds);
    double mb = median(bg, rounds);
    printf("info: %s: SQLite alone (read + delete, no publishing) %.0f rows/s: no relay on this "
           "table passes ratio %.2f; with this machine's %ld cores shared by the broker, the "
           "CPU it all takes allows at most %.2f\n",
           tag, ma, ma / md, ncpu, median(cbound, rounds));
    printf("info: %s: the relay reached %.2f of that CPU bound in calls of %zu rows, %.2f as "
           "the background relay (medians of the rounds' relay/direct/bound)\n",
           tag, median(of_bound, rounds), batch, median(bg_of_bound, rounds));
    printf("RESULT case=outbox_sqlite_%s msgbus=%.0f raw=%.0f ratio=%.2f\n", tag, mr, md, mr / md);
    printf("RESULT case=outbox_sqlite_%s_background msgbus=%.0f raw=%.0f ratio=%.2f\n", tag, mb,
           md, mb / md);
    fflush(stdout);
    msgbus_close(bus);
    bench_delete(url, topic, NULL);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000;
    size_t bytes = argc > 2 ? strtoul(argv[2], NULL, 10) : 64;
    size_t batch = argc > 3 ? strtoul(argv[3], NULL, 10) : 10000;
    size_t rounds = argc > 4 ? strtoul(argv[4], NULL, 10) : 5;
    if (!n || !batch || bytes > 65536 || !rounds || rounds > 64) {
        fprintf(stderr,
                "usage: bench_outbox [messages] [payload_bytes<=65536] [batch] [rounds<=64]\n");
        return 2;
    }
    printf("info: %zu messages of %zu bytes, relay batch %zu, %zu rounds\n", n, bytes, batch,
           rounds);
    run("mem", "mem://bench-outbox", n, bytes, batch, rounds);
    const char *k = getenv("MSGBUS_TEST_KAFKA_URL");
    if (k && *k)
        run("kafka", k, n, bytes, batch, rounds);
    else
        printf("info: kafka skipped: MSGBUS_TEST_KAFKA_URL not set\n");
    const char *a = getenv("MSGBUS_TEST_AMQP_URL");
    if (a && *a) {
        /* No queue is bound to the bench topic: let the broker drop the
         * messages after confirming them, for both sides alike. */
        char url[512];
        snprintf(url, sizeof url, "%s%sunroutable=ok", a, strchr(a, '?') ? "&" : "?");
        run("amqp", url, n, bytes, batch, rounds);
    }
    else
        printf("info: amqp skipped: MSGBUS_TEST_AMQP_URL not set\n");
    return 0;
}
