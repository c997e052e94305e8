/*
 * e2e_common.h — the end-to-end proof of "effectively once", shared by
 * test_e2e_kafka.c and test_e2e_amqp.c (one test per broker; each is a
 * two-line main calling e2e_main).
 *
 * Four kinds of process, all this same executable (re-executed with
 * "--role <name> …" so every child starts clean, without the parent's
 * threads or handles):
 *   orders  — the order service: writes E2E_ORDERS orders, each with its
 *             message in the same SQLite transaction, through the outbox
 *             (orders.db), paced so the run lasts long enough to be hurt;
 *   relay   — publishes the outbox to the broker (its own connection to
 *             orders.db), in a loop, reconnecting when the broker is gone;
 *   billing — subscribes as group "billing" and applies each message
 *             through msgbus_inbox_handle into a ledger table (billing.db),
 *             appending one line per outcome to events.log;
 *   declare — creates the topic and the billing group's storage first;
 *   replay  — at the end, re-publishes E2E_REPLAY applied orders with their
 *             original ids, as a relay that crashed between publish and
 *             mark would, so every run has duplicates to suppress.
 * The orchestrator (no arguments) starts them, SIGKILLs the relay and the
 * consumer several times each and restarts them, restarts the broker once
 * with scripts/brokers, waits until the ledger is complete and quiet, and
 * then checks: ledger rows = orders, no order applied twice, every order's
 * amount as ordered. It prints delivered / duplicates delivered /
 * duplicates suppressed.
 *
 * The ledger has deliberately no unique key on order_id: a message applied
 * twice would show up as two rows instead of being hidden by a constraint.
 */
#ifndef MSGBUS_E2E_COMMON_H
#define MSGBUS_E2E_COMMON_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "msgbus/inbox.h"
#include "msgbus/msgbus.h"
#include "msgbus/outbox.h"
#include "testutil.h"

#ifndef E2E_ORDERS
#define E2E_ORDERS 10000
#endif
/* Orders per second the order service writes: 10,000 take ~25 s, long
 * enough for every kill and the broker restart to land mid-stream. */
#ifndef E2E_RATE
#define E2E_RATE 400
#endif
/* Orders re-published at the end with their original ids (see replay). */
#define E2E_REPLAY 100
#define E2E_GROUP "billing"

static volatile sig_atomic_t e2e_stop;

static void e2e_on_term(int sig)
{
    (void)sig;
    e2e_stop = 1;
}

static void e2e_log(const char *role, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[e2e %s %d] %s\n", role, (int)getpid(), line);
}

static void e2e_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !e2e_stop) {
    }
}

static double e2e_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static sqlite3 *e2e_db_open(const char *role, const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        e2e_log(role, "open %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
        exit(2);
    }
    sqlite3_busy_timeout(db, 30000);
    sqlite3_exec(db, "PRAGMA journal_mode = WAL", NULL, NULL, NULL);
    sqlite3_exec(db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    return db;
}

static void e2e_sql(const char *role, sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        e2e_log(role, "%s: %s", sql, err ? err : "?");
        exit(2);
    }
}

static long long e2e_count(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    long long n = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

/* Opens a bus, retrying while the broker is away (it may be restarting). */
static msgbus_t *e2e_bus_open(const char *role, const char *url)
{
    for (int i = 0; !e2e_stop; i++) {
        msgbus_t *bus = NULL;
        msgbus_err_t e = msgbus_open(&bus, url, NULL);
        if (e == MSGBUS_OK)
            return bus;
        if (e == MSGBUS_ERR_CONFIG) {
            e2e_log(role, "msgbus_open: %s: %s", msgbus_err_name(e), msgbus_last_error());
            exit(2);
        }
        if (i % 10 == 0)
            e2e_log(role, "msgbus_open: %s: %s (retrying)", msgbus_err_name(e), msgbus_last_error());
        e2e_sleep_ms(500);
    }
    return NULL;
}

/* ---- role: declare ---- */

static int e2e_role_declare(const char *url, const char *topic)
{
    msgbus_t *bus = e2e_bus_open("declare", url);
    for (int i = 0; i < 120; i++) {
        msgbus_err_t e = msgbus_declare(bus, topic, E2E_GROUP);
        if (e == MSGBUS_OK) {
            msgbus_close(bus);
            return 0;
        }
        e2e_log("declare", "msgbus_declare: %s: %s", msgbus_err_name(e), msgbus_last_error());
        e2e_sleep_ms(500);
    }
    msgbus_close(bus);
    return 2;
}

/* ---- role: orders (the order service) ---- */

static int e2e_role_orders(const char *dir, const char *topic, int n)
{
    const char *role = "orders";
    sqlite3 *db = e2e_db_open(role, dir, "orders.db");
    e2e_sql(role, db, "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, amount INTEGER NOT NULL)");
    msgbus_outbox_t *ob = NULL;
    if (msgbus_outbox_open_sqlite(&ob, db, NULL) != MSGBUS_OK) {
        e2e_log(role, "msgbus_outbox_open_sqlite: %s", msgbus_last_error());
        return 2;
    }
    sqlite3_stmt *ins = NULL;
    if (sqlite3_prepare_v2(db, "INSERT INTO orders (order_id, amount) VALUES (?1, ?2)", -1, &ins, NULL) != SQLITE_OK)
        return 2;
    double t0 = e2e_now_s();
    for (int i = 0; i < n; i++) {
        char id[32], payload[128];
        long long amount = 100 + (i * 37) % 9900; /* cents; varied so sums mean something */
        snprintf(id, sizeof id, "order-%06d", i);
        snprintf(payload, sizeof payload, "{\"order_id\":\"%s\",\"amount\":%lld}", id, amount);
        msgbus_msg_t *m = NULL;
        if (msgbus_msg_new(&m, payload, strlen(payload)) != MSGBUS_OK ||
            msgbus_msg_set_key(m, id, strlen(id)) != MSGBUS_OK ||
            msgbus_msg_set_header(m, "content-type", "application/json") != MSGBUS_OK) {
            e2e_log(role, "building message: %s", msgbus_last_error());
            return 2;
        }
        /* The order and its message commit together, or neither does. */
        e2e_sql(role, db, "BEGIN IMMEDIATE");
        sqlite3_bind_text(ins, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 2, amount);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            e2e_log(role, "insert order: %s", sqlite3_errmsg(db));
            return 2;
        }
        sqlite3_reset(ins);
        msgbus_err_t e = msgbus_outbox_put(ob, topic, m);
        msgbus_msg_free(m);
        if (e != MSGBUS_OK) {
            e2e_log(role, "msgbus_outbox_put: %s: %s", msgbus_err_name(e), msgbus_last_error());
            return 2;
        }
        e2e_sql(role, db, "COMMIT");
        /* Pace: at most E2E_RATE orders per second. */
        double ahead = (double)(i + 1) / E2E_RATE - (e2e_now_s() - t0);
        if (ahead > 0.002)
            e2e_sleep_ms((int)(ahead * 1000));
    }
    sqlite3_finalize(ins);
    msgbus_outbox_close(ob);
    sqlite3_close(db);
    e2e_log(role, "wrote %d orders in %.1f s", n, e2e_now_s() - t0);
    return 0;
}

/* ---- role: replay ---- */

/* What a relay that crashed after publishing but before marking its rows
 * sent does on restart — publish the same messages (same ids) again — done
 * on purpose for E2E_REPLAY orders, so every run has duplicates to
 * suppress however the kills happened to fall. */
static int e2e_role_replay(const char *dir, const char *url, const char *topic)
{
    const char *role = "replay";
    sqlite3 *db = e2e_db_open(role, dir, "billing.db");
    sqlite3_stmt *st = NULL;
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT order_id, amount, message_id FROM ledger ORDER BY rowid LIMIT %d", E2E_REPLAY);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        return 2;
    msgbus_t *bus = e2e_bus_open(role, url);
    int n = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        char payload[128];
        snprintf(payload, sizeof payload, "{\"order_id\":\"%s\",\"amount\":%lld}", id,
                 (long long)sqlite3_column_int64(st, 1));
        msgbus_msg_t *m = NULL;
        if (msgbus_msg_new(&m, payload, strlen(payload)) != MSGBUS_OK ||
            msgbus_msg_set_id(m, (const char *)sqlite3_column_text(st, 2)) != MSGBUS_OK ||
            msgbus_msg_set_key(m, id, strlen(id)) != MSGBUS_OK ||
            msgbus_publish(bus, topic, m, NULL, NULL) != MSGBUS_OK) {
            e2e_log(role, "re-publishing: %s", msgbus_last_error());
            return 2;
        }
        msgbus_msg_free(m);
        n++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    msgbus_err_t e = msgbus_flush(bus, 30000, NULL);
    msgbus_close(bus);
    e2e_log(role, "re-published %d messages with their original ids: %s", n, msgbus_err_name(e));
    return e == MSGBUS_OK && n == E2E_REPLAY ? 0 : 2;
}

/* ---- role: relay ---- */

static int e2e_role_relay(const char *dir, const char *url)
{
    const char *role = "relay";
    signal(SIGTERM, e2e_on_term);
    sqlite3 *db = e2e_db_open(role, dir, "orders.db");
    msgbus_outbox_t *ob = NULL;
    if (msgbus_outbox_open_sqlite(&ob, db, NULL) != MSGBUS_OK) {
        e2e_log(role, "msgbus_outbox_open_sqlite: %s", msgbus_last_error());
        return 2;
    }
    msgbus_t *bus = e2e_bus_open(role, url);
    int failures = 0;
    size_t total = 0;
    while (!e2e_stop && bus) {
        size_t n = 0;
        msgbus_err_t e = msgbus_outbox_relay(ob, bus, 500, 5000, &n);
        total += n;
        if (e != MSGBUS_OK) {
            if (failures++ % 10 == 0)
                e2e_log(role, "relay pass: %s: %s", msgbus_err_name(e), msgbus_last_error());
            /* A backend that does not recover on its own gets a fresh bus. */
            if (failures % 20 == 0) {
                msgbus_close(bus);
                bus = e2e_bus_open(role, url);
            }
            e2e_sleep_ms(250);
        } else {
            failures = 0;
            if (n == 0)
                e2e_sleep_ms(20);
        }
    }
    e2e_log(role, "stopping after %zu rows", total);
    msgbus_close(bus);
    msgbus_outbox_close(ob);
    sqlite3_close(db);
    return 0;
}

/* ---- role: billing (the consumer) ---- */

struct e2e_billing {
    sqlite3 *db;
    sqlite3_stmt *ins;
};

/* The billing effect: one ledger row, in the inbox's transaction. */
static int e2e_apply(void *opaque, msgbus_msg_t *m)
{
    struct e2e_billing *b = opaque;
    size_t len = 0;
    const char *p = msgbus_msg_payload(m, &len);
    char buf[256], id[64];
    long long amount = 0;
    snprintf(buf, sizeof buf, "%.*s", (int)(len < 255 ? len : 255), p);
    if (sscanf(buf, "{\"order_id\":\"%63[^\"]\",\"amount\":%lld}", id, &amount) != 2)
        return -1;
    sqlite3_bind_text(b->ins, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(b->ins, 2, amount);
    sqlite3_bind_text(b->ins, 3, msgbus_msg_id(m), -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(b->ins);
    sqlite3_reset(b->ins);
    return rc == SQLITE_DONE ? 0 : -1;
}

static int e2e_role_billing(const char *dir, const char *url, const char *topic)
{
    const char *role = "billing";
    signal(SIGTERM, e2e_on_term);
    struct e2e_billing b = {0};
    b.db = e2e_db_open(role, dir, "billing.db");
    e2e_sql(role, b.db,
            "CREATE TABLE IF NOT EXISTS ledger (order_id TEXT NOT NULL, amount INTEGER NOT NULL,"
            " message_id TEXT NOT NULL)");
    if (sqlite3_prepare_v2(b.db, "INSERT INTO ledger (order_id, amount, message_id) VALUES (?1, ?2, ?3)", -1,
                           &b.ins, NULL) != SQLITE_OK)
        return 2;
    msgbus_inbox_t *ib = NULL;
    if (msgbus_inbox_open_sqlite(&ib, b.db, E2E_GROUP, NULL) != MSGBUS_OK) {
        e2e_log(role, "msgbus_inbox_open_sqlite: %s", msgbus_last_error());
        return 2;
    }
    char path[512];
    snprintf(path, sizeof path, "%s/events.log", dir);
    /* O_APPEND + one write per line: lines from successive (killed)
     * consumers never interleave, and SIGKILL loses no written line. */
    int events = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (events < 0)
        return 2;

    while (!e2e_stop) {
        msgbus_t *bus = e2e_bus_open(role, url);
        msgbus_sub_t *sub = NULL;
        msgbus_err_t e = bus ? msgbus_subscribe(bus, topic, E2E_GROUP, &sub) : MSGBUS_ERR_CLOSED;
        if (e != MSGBUS_OK) {
            e2e_log(role, "subscribe: %s: %s", msgbus_err_name(e), msgbus_last_error());
            msgbus_close(bus);
            e2e_sleep_ms(500);
            continue;
        }
        int errors = 0;
        while (!e2e_stop && errors < 20) {
            msgbus_msg_t *m = NULL;
            e = msgbus_receive(sub, 500, &m);
            if (e == MSGBUS_ERR_TIMEOUT)
                continue;
            if (e != MSGBUS_OK) {
                if (errors++ % 5 == 0)
                    e2e_log(role, "receive: %s: %s", msgbus_err_name(e), msgbus_last_error());
                e2e_sleep_ms(200);
                continue;
            }
            msgbus_inbox_outcome_t oc = MSGBUS_INBOX_REJECTED;
            e = msgbus_inbox_handle(ib, m, e2e_apply, &b, &oc);
            char line[320];
            int len = snprintf(line, sizeof line, "%c %s %d\n",
                               e != MSGBUS_OK && oc != MSGBUS_INBOX_APPLIED ? 'E'
                               : oc == MSGBUS_INBOX_APPLIED                 ? 'A'
                               : oc == MSGBUS_INBOX_DUPLICATE               ? 'D'
                                                                            : 'R',
                               msgbus_msg_id(m) ? msgbus_msg_id(m) : "-", msgbus_msg_attempt(m));
            if (write(events, line, (size_t)len) != len)
                e2e_log(role, "events.log: %s", strerror(errno));
            if (e != MSGBUS_OK)
                e2e_log(role, "msgbus_inbox_handle: %s: %s", msgbus_err_name(e), msgbus_last_error());
            msgbus_msg_free(m);
        }
        msgbus_sub_close(sub);
        msgbus_close(bus);
    }
    close(events);
    msgbus_inbox_close(ib);
    sqlite3_finalize(b.ins);
    sqlite3_close(b.db);
    return 0;
}

/* ---- the orchestrator ---- */

struct e2e_ctx {
    const char *self;
    const char *broker; /* "kafka" / "amqp" */
    char dir[256];
    char url[512];
    char topic[96];
    char repo[512];
};

static pid_t e2e_spawn(const struct e2e_ctx *c, const char *role)
{
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        exit(2);
    }
    if (pid == 0) {
        char n[16];
        snprintf(n, sizeof n, "%d", E2E_ORDERS);
        execl(c->self, c->self, "--role", role, c->dir, c->url, c->topic, n, (char *)NULL);
        perror("execl");
        _exit(127);
    }
    return pid;
}

static int e2e_wait(pid_t pid)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* SIGKILL, the way a crash or an OOM kill ends a process. */
static void e2e_kill(pid_t pid)
{
    kill(pid, SIGKILL);
    e2e_wait(pid);
}

static void e2e_term(pid_t pid)
{
    kill(pid, SIGTERM);
    for (int i = 0; i < 300; i++) { /* 30 s for a clean close */
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return;
        e2e_sleep_ms(100);
    }
    e2e_kill(pid);
}

/* scripts/brokers restart-<broker>, in a child so the kills go on meanwhile. */
static pid_t e2e_restart_broker(const struct e2e_ctx *c)
{
    char script[600], cmd[32];
    snprintf(script, sizeof script, "%s/scripts/brokers", c->repo);
    snprintf(cmd, sizeof cmd, "restart-%s", strcmp(c->broker, "amqp") == 0 ? "rabbitmq" : c->broker);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/bash", "bash", script, cmd, (char *)NULL);
        _exit(127);
    }
    fprintf(stderr, "[e2e] %s %s (pid %d)\n", script, cmd, (int)pid);
    return pid;
}

struct e2e_events {
    long long delivered, applied, suppressed, rejected, errors, distinct;
};

static int e2e_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void e2e_read_events(const struct e2e_ctx *c, struct e2e_events *ev)
{
    memset(ev, 0, sizeof *ev);
    char path[512];
    snprintf(path, sizeof path, "%s/events.log", c->dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    size_t cap = 1024, n = 0;
    char **ids = malloc(cap * sizeof *ids);
    char line[400];
    while (fgets(line, sizeof line, f)) {
        char kind = 0, id[300];
        int attempt = 0;
        if (sscanf(line, "%c %299s %d", &kind, id, &attempt) != 3)
            continue;
        ev->delivered++;
        ev->applied += kind == 'A';
        ev->suppressed += kind == 'D';
        ev->rejected += kind == 'R';
        ev->errors += kind == 'E';
        if (n == cap)
            ids = realloc(ids, (cap *= 2) * sizeof *ids);
        ids[n++] = strdup(id);
    }
    fclose(f);
    qsort(ids, n, sizeof *ids, e2e_cmp);
    for (size_t i = 0; i < n; i++) {
        if (i == 0 || strcmp(ids[i], ids[i - 1]) != 0)
            ev->distinct++;
        if (i > 0)
            free(ids[i - 1]);
    }
    if (n)
        free(ids[n - 1]);
    free(ids);
}

static int e2e_orchestrate(struct e2e_ctx *c)
{
    int failures = 0;
#define E2E_CHECK(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "E2E FAIL: " __VA_ARGS__);                                             \
            fprintf(stderr, "\n");                                                                 \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

    int rc = e2e_wait(e2e_spawn(c, "declare"));
    if (rc != 0) {
        fprintf(stderr, "E2E FAIL: declare exited %d\n", rc);
        return 1;
    }
    pid_t billing = e2e_spawn(c, "billing");
    pid_t relay = e2e_spawn(c, "relay");
    pid_t orders = e2e_spawn(c, "orders");
    int orders_rc = -1;

    /* Seconds from the start: kills while orders are still being written
     * (~25 s at E2E_RATE), the broker restart in between. */
    const double relay_kills[] = {3.0, 8.5, 15.0, 22.0};
    const double billing_kills[] = {5.0, 12.0, 19.0, 26.0};
    const double restart_at = 10.0;
    const size_t nrk = sizeof relay_kills / sizeof *relay_kills;
    const size_t nbk = sizeof billing_kills / sizeof *billing_kills;
    size_t rk = 0, bk = 0;
    pid_t restarter = -1;
    int restart_rc = -1;
    int unexpected_exits = 0;
    int replay_rc = -1;
    double replay_at = 0;

    char path[512];
    snprintf(path, sizeof path, "%s/billing.db", c->dir);
    sqlite3 *bdb = NULL;
    double t0 = e2e_now_s(), last_progress = t0, complete_since = 0;
    long long last_ledger = -1;
    for (;;) {
        e2e_sleep_ms(100);
        double t = e2e_now_s() - t0;
        if (rk < nrk && t >= relay_kills[rk]) {
            e2e_kill(relay);
            fprintf(stderr, "[e2e] t=%.1fs SIGKILL relay #%zu\n", t, ++rk);
            relay = e2e_spawn(c, "relay");
        }
        if (bk < nbk && t >= billing_kills[bk]) {
            e2e_kill(billing);
            fprintf(stderr, "[e2e] t=%.1fs SIGKILL billing consumer #%zu\n", t, ++bk);
            billing = e2e_spawn(c, "billing");
        }
        if (restarter < 0 && restart_rc < 0 && t >= restart_at) {
            fprintf(stderr, "[e2e] t=%.1fs restarting the broker\n", t);
            restarter = e2e_restart_broker(c);
        }
        int st;
        if (restarter > 0 && waitpid(restarter, &st, WNOHANG) == restarter) {
            restart_rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            restarter = -1;
            fprintf(stderr, "[e2e] t=%.1fs broker restart finished: exit %d\n", t, restart_rc);
        }
        if (orders > 0 && waitpid(orders, &st, WNOHANG) == orders) {
            orders_rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            orders = -1;
            fprintf(stderr, "[e2e] t=%.1fs order service finished: exit %d\n", t, orders_rc);
            if (orders_rc != 0)
                break;
        }
        /* A role that dies on its own is a bug; restart it, count it. */
        if (waitpid(relay, &st, WNOHANG) == relay) {
            unexpected_exits++;
            fprintf(stderr, "[e2e] relay exited on its own (status %d); restarting\n", st);
            relay = e2e_spawn(c, "relay");
        }
        if (waitpid(billing, &st, WNOHANG) == billing) {
            unexpected_exits++;
            fprintf(stderr, "[e2e] billing exited on its own (status %d); restarting\n", st);
            billing = e2e_spawn(c, "billing");
        }
        if (!bdb && access(path, F_OK) == 0 && sqlite3_open_v2(path, &bdb, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK)
            sqlite3_busy_timeout(bdb, 5000);
        long long ledger = bdb ? e2e_count(bdb, "SELECT count(*) FROM ledger") : -1;
        if (ledger != last_ledger) {
            last_ledger = ledger;
            last_progress = e2e_now_s();
        }
        bool all_done = orders < 0 && rk == nrk && bk == nbk && restart_rc >= 0;
        if (all_done && ledger >= E2E_ORDERS && replay_rc < 0) {
            replay_rc = e2e_wait(e2e_spawn(c, "replay"));
            fprintf(stderr, "[e2e] t=%.1fs replay of %d orders: exit %d\n", e2e_now_s() - t0, E2E_REPLAY,
                    replay_rc);
            replay_at = e2e_now_s();
        }
        if (replay_rc >= 0) {
            /* Complete once the replayed duplicates came back (or 120 s),
             * then stay a while so late redeliveries arrive and are — or,
             * if the inbox failed, are not — suppressed. */
            struct e2e_events now_ev;
            e2e_read_events(c, &now_ev);
            bool replay_seen = now_ev.suppressed >= E2E_REPLAY || e2e_now_s() - replay_at > 120.0;
            if (replay_seen && complete_since == 0)
                complete_since = e2e_now_s();
            if (complete_since > 0 && e2e_now_s() - complete_since > 5.0)
                break;
        }
        if (e2e_now_s() - last_progress > 180.0 && restart_rc >= 0) {
            fprintf(stderr, "E2E FAIL: no ledger progress for 180 s (ledger=%lld)\n", ledger);
            failures++;
            break;
        }
        if (t > 700) {
            fprintf(stderr, "E2E FAIL: run exceeded 700 s (ledger=%lld)\n", ledger);
            failures++;
            break;
        }
    }
    double run_s = e2e_now_s() - t0;
    e2e_term(relay);
    e2e_term(billing);
    if (orders > 0)
        e2e_kill(orders);
    if (restarter > 0)
        restart_rc = e2e_wait(restarter);
    if (bdb)
        sqlite3_close(bdb);

    /* ---- the verdict ---- */
    sqlite3 *db = NULL;
    snprintf(path, sizeof path, "%s/billing.db", c->dir);
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return 1;
    char attach[600];
    snprintf(attach, sizeof attach, "ATTACH DATABASE '%s/orders.db' AS o", c->dir);
    sqlite3_exec(db, attach, NULL, NULL, NULL);
    long long n_orders = e2e_count(db, "SELECT count(*) FROM o.orders");
    long long ledger = e2e_count(db, "SELECT count(*) FROM ledger");
    long long distinct = e2e_count(db, "SELECT count(DISTINCT order_id) FROM ledger");
    long long twice = e2e_count(db, "SELECT count(*) FROM (SELECT order_id FROM ledger GROUP BY order_id HAVING count(*) > 1)");
    long long missing = e2e_count(db, "SELECT count(*) FROM o.orders WHERE order_id NOT IN (SELECT order_id FROM ledger)");
    long long wrong_amount = e2e_count(db, "SELECT count(*) FROM ledger l JOIN o.orders r USING (order_id) WHERE l.amount != r.amount");
    long long claims = e2e_count(db, "SELECT count(*) FROM msgbus_inbox WHERE consumer = 'billing'");
    long long pending = e2e_count(db, "SELECT count(*) FROM o.msgbus_outbox");
    sqlite3_close(db);
    struct e2e_events ev;
    e2e_read_events(c, &ev);

    printf("e2e %s: orders=%lld ledger_rows=%lld distinct_orders=%lld applied_twice=%lld missing=%lld "
           "wrong_amount=%lld inbox_claims=%lld outbox_rows_left=%lld\n",
           c->broker, n_orders, ledger, distinct, twice, missing, wrong_amount, claims, pending);
    printf("e2e %s: messages delivered=%lld duplicates delivered=%lld duplicates suppressed=%lld "
           "(applied=%lld rejected=%lld errors=%lld)\n",
           c->broker, ev.delivered, ev.delivered - ev.distinct, ev.suppressed, ev.applied, ev.rejected,
           ev.errors);
    printf("e2e %s: relay SIGKILLs=%zu consumer SIGKILLs=%zu broker restarts=1 (exit %d) replayed=%d "
           "unexpected exits=%d run=%.1fs\n",
           c->broker, rk, bk, restart_rc, E2E_REPLAY, unexpected_exits, run_s);
    fflush(stdout);

    E2E_CHECK(orders_rc == 0, "order service exited %d", orders_rc);
    E2E_CHECK(n_orders == E2E_ORDERS, "orders=%lld, want %d", n_orders, E2E_ORDERS);
    E2E_CHECK(ledger == n_orders, "ledger rows=%lld != orders=%lld", ledger, n_orders);
    E2E_CHECK(distinct == ledger && twice == 0, "%lld orders applied more than once", twice);
    E2E_CHECK(missing == 0, "%lld orders missing from the ledger", missing);
    E2E_CHECK(wrong_amount == 0, "%lld ledger rows with a wrong amount", wrong_amount);
    E2E_CHECK(pending == 0, "%lld outbox rows left unsent", pending);
    E2E_CHECK(claims == n_orders, "inbox claims=%lld != orders=%lld", claims, n_orders);
    E2E_CHECK(rk == nrk && bk == nbk, "kills done: relay %zu/%zu, consumer %zu/%zu", rk, nrk, bk, nbk);
    E2E_CHECK(restart_rc == 0, "broker restart exited %d", restart_rc);
    E2E_CHECK(unexpected_exits == 0, "%d unexpected role exits", unexpected_exits);
    /* Every delivery the log saw got an outcome, and an applied outcome
     * is at most one per order (a killed consumer may apply without
     * logging, never log an apply twice). */
    /* The replayed orders at least must have come twice and been
     * suppressed (the kills usually add more). */
    E2E_CHECK(replay_rc == 0, "replay exited %d", replay_rc);
    E2E_CHECK(ev.suppressed >= E2E_REPLAY, "duplicates suppressed=%lld < %d replayed", ev.suppressed,
              E2E_REPLAY);
    E2E_CHECK(ev.applied <= n_orders, "applied outcomes=%lld > orders", ev.applied);
    E2E_CHECK(ev.delivered >= ev.applied + ev.suppressed, "event counts inconsistent");
    printf("e2e %s: %s\n", c->broker, failures ? "FAILED" : "PASSED");
#undef E2E_CHECK
    return failures ? 1 : 0;
}

/* main() of test_e2e_<broker>.c. `source_file` is that file's __FILE__
 * (absolute under CMake), to find scripts/brokers. */
static int e2e_main(int argc, char **argv, const char *broker, const char *source_file)
{
    if (argc >= 7 && strcmp(argv[1], "--role") == 0) {
        const char *role = argv[2], *dir = argv[3], *url = argv[4], *topic = argv[5];
        int n = atoi(argv[6]);
        if (strcmp(role, "declare") == 0)
            return e2e_role_declare(url, topic);
        if (strcmp(role, "orders") == 0)
            return e2e_role_orders(dir, topic, n);
        if (strcmp(role, "relay") == 0)
            return e2e_role_relay(dir, url);
        if (strcmp(role, "billing") == 0)
            return e2e_role_billing(dir, url, topic);
        if (strcmp(role, "replay") == 0)
            return e2e_role_replay(dir, url, topic);
        fprintf(stderr, "unknown role '%s'\n", role);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct e2e_ctx c = {0};
    c.broker = broker;
    static char self[512];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        perror("readlink /proc/self/exe");
        return 1;
    }
    self[len] = 0;
    c.self = self;
    const char *base = tu_broker_url(broker);
    /* A member that was SIGKILLed holds its partitions until its session
     * times out: keep that short so the restarted consumer resumes soon
     * (6 s is the broker's minimum). */
    if (strcmp(broker, "kafka") == 0)
        snprintf(c.url, sizeof c.url, "%s%ssession.timeout.ms=6000", base, strchr(base, '?') ? "&" : "?");
    else
        snprintf(c.url, sizeof c.url, "%s", base);
    const char *repo = getenv("MSGBUS_SOURCE_DIR");
    if (repo && *repo) {
        snprintf(c.repo, sizeof c.repo, "%s", repo);
    } else { /* <repo>/tests/integration/test_e2e_x.c */
        snprintf(c.repo, sizeof c.repo, "%s", source_file);
        for (int i = 0; i < 3; i++) {
            char *slash = strrchr(c.repo, '/');
            if (slash)
                *slash = 0;
        }
    }
    char script[600];
    snprintf(script, sizeof script, "%s/scripts/brokers", c.repo);
    if (access(script, R_OK) != 0) {
        fprintf(stderr, "E2E FAIL: cannot find %s (set MSGBUS_SOURCE_DIR)\n", script);
        return 1;
    }
    snprintf(c.dir, sizeof c.dir, "/tmp/msgbus-e2e-%s-XXXXXX", broker);
    if (!mkdtemp(c.dir)) {
        perror("mkdtemp");
        return 1;
    }
    tu_unique(c.topic, sizeof c.topic, "e2e-orders");
    printf("e2e %s: %d orders, topic %s, work dir %s\n", broker, E2E_ORDERS, c.topic, c.dir);
    int rc = e2e_orchestrate(&c);
    if (rc == 0) { /* keep the evidence of a failure */
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", c.dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", c.dir);
    }
    return rc;
}

#endif /* MSGBUS_E2E_COMMON_H */
