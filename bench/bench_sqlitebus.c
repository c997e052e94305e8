/*
 * bench_sqlitebus.c — throughput of sqlite:// (a broker in a file), next
 * to SQLite alone doing the same writes.
 *
 *   bench_sqlitebus [messages=100000] [payload_bytes=100] [one_by_one=3000]
 *
 * For synchronous=full (the default: a confirmed message is on disk) and
 * synchronous=normal, each on a fresh file in $TMPDIR (default /tmp):
 *   publish_batched   msgbus_publish of N messages, then msgbus_flush (the
 *                     bus writes what is queued in transactions of up to
 *                     batch_max=2000 rows, confirming each on commit);
 *   publish_one       publish + flush, one message at a time (a commit
 *                     per message): `one_by_one` messages;
 *   consume_batched   a group's backlog of N: msgbus_receive + msgbus_ack
 *                     each, until the last ack is written (sub closed);
 *   consume_one       the same with prefetch=1 (one message claimed per
 *                     transaction, the next only after the ack):
 *                     `one_by_one` messages;
 *   pipeline          a producer process publishing N while this process
 *                     consumes them (group declared first): N / time from
 *                     the start to the last receive.
 * raw is SQLite by itself on a plain table (seq, payload) in the same
 * file mode: for the publish cases INSERTs in transactions of 2000 rows
 * (batched) or one each; for the consume cases SELECT + DELETE by seq, in
 * transactions of 1000 (batched) or one each; for pipeline the batched
 * INSERTs. It is the ceiling of anything built on that file.
 * Prints per case
 *   RESULT case=sqlite_<case>_<sync> msgbus=<msg/s> raw=<msg/s> ratio=<msgbus/raw>
 *          cpu=<seconds> cpu_msgbus=<µs> cpu_raw=<µs> cpu_ratio=<msgbus/raw>
 * cpu= is the CPU this process used for the msgbus side; cpu_msgbus= and
 * cpu_raw= are each side's CPU per message in µs (bench_util.h; one run
 * per case, so no median). For pipeline, cpu_msgbus is the consuming
 * process's only (the producer is a process of its own) and cpu_raw the
 * raw batched INSERTs'.
 */
#include <sqlite3.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "msgbus/msgbus.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what, msgbus_err_t e)
{
    fprintf(stderr, "bench_sqlitebus: %s: %s (%s)\n", what, msgbus_err_name(e),
            msgbus_last_error());
    exit(1);
}

static char dir[200];
static size_t payload_len;
static char *payload;

static void rm_file(const char *path)
{
    char p[300];
    unlink(path);
    snprintf(p, sizeof p, "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof p, "%s-shm", path);
    unlink(p);
}

static void fresh(char *path, size_t n, const char *what, const char *sync)
{
    snprintf(path, n, "%s/msgbus-bench-%s-%s-%d.db", dir, what, sync, (int)getpid());
    rm_file(path);
}

static msgbus_t *open_bus(const char *path, const char *sync, const char *extra)
{
    char url[512];
    snprintf(url, sizeof url, "sqlite://%s?synchronous=%s%s%s", path, sync, *extra ? "&" : "",
             extra);
    msgbus_t *bus = NULL;
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    if (e)
        die("open", e);
    return bus;
}

static void publish(msgbus_t *bus, const char *topic, long i)
{
    msgbus_msg_t *m = NULL;
    char key[16];
    snprintf(key, sizeof key, "k%ld", i % 16);
    msgbus_err_t e;
    if ((e = msgbus_msg_new(&m, payload, payload_len)) ||
        (e = msgbus_msg_set_key(m, key, strlen(key))))
        die("message", e);
    while ((e = msgbus_publish(bus, topic, m, NULL, NULL)) == MSGBUS_ERR_QUEUE_FULL)
        msgbus_poll(bus, 10, NULL);
    if (e)
        die("publish", e);
    msgbus_msg_free(m);
}

static void flush(msgbus_t *bus)
{
    msgbus_err_t e = msgbus_flush(bus, 120000, NULL);
    if (e)
        die("flush", e);
}

/* Receives and acks n messages; the sub is closed (its acks written). */
static void consume(msgbus_t *bus, msgbus_sub_t *sub, long n)
{
    (void)bus;
    for (long i = 0; i < n; i++) {
        msgbus_msg_t *m = NULL;
        msgbus_err_t e = msgbus_receive(sub, 30000, &m);
        if (e)
            die("receive", e);
        if ((e = msgbus_ack(m)))
            die("ack", e);
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub);
}

/* ---- raw SQLite on a plain table ---- */

static sqlite3 *raw_open(const char *path, const char *sync)
{
    sqlite3 *db = NULL;
    char sql[200];
    if (sqlite3_open(path, &db) != SQLITE_OK)
        exit(1);
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s;"
             "CREATE TABLE IF NOT EXISTS t(seq INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
             sync);
    sqlite3_exec(db, sql, NULL, NULL, NULL);
    return db;
}

static double raw_insert(const char *path, const char *sync, long n, long per_tx)
{
    sqlite3 *db = raw_open(path, sync);
    sqlite3_stmt *s;
    sqlite3_prepare_v2(db, "INSERT INTO t(seq,payload) VALUES(?1,?2)", -1, &s, NULL);
    double t0 = now_s();
    for (long i = 0; i < n; i++) {
        if (i % per_tx == 0)
            sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        sqlite3_bind_int64(s, 1, i + 1);
        sqlite3_bind_blob(s, 2, payload, (int)payload_len, SQLITE_STATIC);
        sqlite3_step(s);
        sqlite3_reset(s);
        if (i % per_tx == per_tx - 1 || i == n - 1)
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    double rate = (double)n / (now_s() - t0);
    sqlite3_finalize(s);
    sqlite3_close(db);
    return rate;
}

/* Reads and deletes the rows raw_insert wrote. */
static double raw_consume(const char *path, const char *sync, long n, long per_tx)
{
    sqlite3 *db = raw_open(path, sync);
    sqlite3_stmt *sel, *del;
    sqlite3_prepare_v2(db, "SELECT payload FROM t WHERE seq=?1", -1, &sel, NULL);
    sqlite3_prepare_v2(db, "DELETE FROM t WHERE seq=?1", -1, &del, NULL);
    double t0 = now_s();
    size_t sum = 0;
    for (long i = 0; i < n; i++) {
        if (i % per_tx == 0)
            sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
        sqlite3_bind_int64(sel, 1, i + 1);
        if (sqlite3_step(sel) == SQLITE_ROW)
            sum += (size_t)sqlite3_column_bytes(sel, 0);
        sqlite3_reset(sel);
        sqlite3_bind_int64(del, 1, i + 1);
        sqlite3_step(del);
        sqlite3_reset(del);
        if (i % per_tx == per_tx - 1 || i == n - 1)
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    double rate = (double)n / (now_s() - t0);
    sqlite3_finalize(sel);
    sqlite3_finalize(del);
    sqlite3_close(db);
    if (sum != (size_t)n * payload_len)
        fprintf(stderr, "bench_sqlitebus: raw read %zu bytes, want %zu\n", sum,
                (size_t)n * payload_len);
    return rate;
}

/* cpu / raw_cpu: seconds over n messages. */
static void result(const char *name, const char *sync, double rate, double raw, double cpu,
                   long n, double raw_cpu)
{
    printf("RESULT case=sqlite_%s_%s msgbus=%.0f raw=%.0f ratio=%.2f cpu=%.2f ", name, sync,
           rate, raw, raw > 0 ? rate / raw : 0, cpu);
    bench_print_cpu(cpu * 1e6 / (double)n, raw_cpu * 1e6 / (double)n);
    fflush(stdout);
}

static void run(const char *sync, long n, long one)
{
    char path[300], rpath[300];
    const char *topic = "bench";

    /* publish_batched, then consume_batched on its backlog */
    fresh(path, sizeof path, "batched", sync);
    fresh(rpath, sizeof rpath, "raw", sync);
    msgbus_t *bus = open_bus(path, sync, "");
    msgbus_err_t e = msgbus_declare(bus, topic, "g");
    if (e)
        die("declare", e);
    double c0 = cpu_s(), t0 = now_s();
    for (long i = 0; i < n; i++)
        publish(bus, topic, i);
    flush(bus);
    double rate = (double)n / (now_s() - t0), cpu = cpu_s() - c0;
    double rc0 = cpu_s();
    double raw_pub = raw_insert(rpath, sync, n, 2000), raw_pub_cpu = cpu_s() - rc0;
    result("publish_batched", sync, rate, raw_pub, cpu, n, raw_pub_cpu);
    msgbus_sub_t *sub = NULL;
    c0 = cpu_s();
    t0 = now_s();
    if ((e = msgbus_subscribe(bus, topic, "g", &sub)))
        die("subscribe", e);
    consume(bus, sub, n);
    rate = (double)n / (now_s() - t0);
    cpu = cpu_s() - c0;
    rc0 = cpu_s();
    double raw = raw_consume(rpath, sync, n, 1000);
    result("consume_batched", sync, rate, raw, cpu, n, cpu_s() - rc0);
    msgbus_close(bus);
    rm_file(path);
    rm_file(rpath);

    /* publish_one, then consume_one with prefetch=1 */
    fresh(path, sizeof path, "one", sync);
    bus = open_bus(path, sync, "prefetch=1");
    if ((e = msgbus_declare(bus, topic, "g")))
        die("declare", e);
    c0 = cpu_s();
    t0 = now_s();
    for (long i = 0; i < one; i++) {
        publish(bus, topic, i);
        flush(bus);
    }
    rate = (double)one / (now_s() - t0);
    cpu = cpu_s() - c0;
    rc0 = cpu_s();
    double raw_one = raw_insert(rpath, sync, one, 1);
    result("publish_one", sync, rate, raw_one, cpu, one, cpu_s() - rc0);
    c0 = cpu_s();
    t0 = now_s();
    if ((e = msgbus_subscribe(bus, topic, "g", &sub)))
        die("subscribe", e);
    consume(bus, sub, one);
    rate = (double)one / (now_s() - t0);
    cpu = cpu_s() - c0;
    rc0 = cpu_s();
    raw = raw_consume(rpath, sync, one, 1);
    result("consume_one", sync, rate, raw, cpu, one, cpu_s() - rc0);
    msgbus_close(bus);
    rm_file(path);
    rm_file(rpath);

    /* pipeline: a producer process, this one consuming. Forked while no
     * bus is open here (a fork of a process whose bus threads hold locks
     * could inherit them held); it starts once the group exists. */
    fresh(path, sizeof path, "pipe", sync);
    int go[2];
    if (pipe(go) != 0)
        exit(1);
    pid_t child = fork();
    if (child == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1)
            _exit(1);
        msgbus_t *pb = open_bus(path, sync, "");
        for (long i = 0; i < n; i++)
            publish(pb, topic, i);
        flush(pb);
        msgbus_close(pb);
        _exit(0);
    }
    close(go[0]);
    bus = open_bus(path, sync, "");
    if ((e = msgbus_declare(bus, topic, "g")) || (e = msgbus_subscribe(bus, topic, "g", &sub)))
        die("subscribe", e);
    c0 = cpu_s();
    t0 = now_s();
    if (write(go[1], "x", 1) != 1)
        exit(1);
    close(go[1]);
    consume(bus, sub, n);
    rate = (double)n / (now_s() - t0);
    cpu = cpu_s() - c0;
    int st;
    waitpid(child, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st))
        fprintf(stderr, "bench_sqlitebus: the producer process failed\n");
    result("pipeline", sync, rate, raw_pub, cpu, n, raw_pub_cpu);
    msgbus_close(bus);
    rm_file(path);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    payload_len = argc > 2 ? (size_t)atol(argv[2]) : 100;
    long one = argc > 3 ? atol(argv[3]) : 3000;
    if (n <= 0 || one <= 0 || payload_len > (64u << 20)) {
        fprintf(stderr,
                "usage: bench_sqlitebus [messages=100000] [payload_bytes=100] [one_by_one=3000]\n");
        return 2;
    }
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s", t && *t == '/' ? t : "/tmp");
    payload = malloc(payload_len ? payload_len : 1);
    memset(payload, 'x', payload_len);
    printf("sqlite:// in %s: %ld messages of %zu bytes (one by one: %ld)\n", dir, n, payload_len,
           one);
    run("full", n, one);
    run("normal", n, one);
    free(payload);
    return 0;
}
