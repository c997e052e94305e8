/*
 * outbox.c — `msgbus outbox relay|put|stats STORE`: the outbox relay as a
 * process of its own, plus two helpers for operators and scripts.
 *
 * STORE is sqlite:///absolute/path.db (sqlite://relative/path.db), or a
 * PostgreSQL connection string (postgresql://… or "host=… dbname=…").
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdatomic.h>
#include <getopt.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef MSGBUS_HAVE_SQLITE
#include <sqlite3.h>
#endif
#ifdef MSGBUS_HAVE_PG
#include <libpq-fe.h>
#endif

#include <msgbus/outbox.h>

#include "cli.h"

static const char outbox_help[] =
    "usage: msgbus outbox relay [options] STORE\n"
    "       msgbus outbox put [options] STORE TOPIC [MESSAGE...]\n"
    "       msgbus outbox stats [options] STORE\n"
    "\n"
    "STORE is sqlite:///path/to/app.db (sqlite://relative.db) or a PostgreSQL\n"
    "connection string (postgresql://user:pass@host/db, or 'host=... dbname=...').\n"
    "\n"
    "relay   publishes committed outbox rows to the bus of --url / $MSGBUS_URL,\n"
    "        in commit order, until SIGTERM or SIGINT; then finishes the pass in\n"
    "        flight (publish, confirms, marking rows sent) and exits 0.\n"
    "put     writes the messages (read as 'msgbus pub' reads them: arguments,\n"
    "        -f files or stdin lines; -k, -K, -H, -n, --type, --source,\n"
    "        --subject as there) as pending rows for TOPIC, all in one\n"
    "        transaction.\n"
    "stats   prints {\"pending\",\"failed\",\"sent\",\"oldest_pending_age_ms\"}.\n"
    "\n"
    "options:\n"
    "  -u, --url URL           broker URL for relay (default: $MSGBUS_URL)\n"
    "      --table NAME        outbox table (default: msgbus_outbox)\n"
    "      --batch N           relay: rows per pass (default 10000)\n"
    "      --poll-interval MS  relay: re-check for rows this often (default 1000)\n"
    "      --confirm-timeout MS  relay: wait for confirms per pass (default 10000)\n"
    "      --once              relay: relay until no row is pending, then exit\n"
    "      --metrics ADDR:PORT relay: serve Prometheus metrics at\n"
    "                          http://ADDR:PORT/metrics (port 0: any free port)\n"
    "  -k, -K, -H, -f, -n      put: as for 'msgbus pub'\n"
    "      --type, --source, --subject  put: the CloudEvents attributes, as for\n"
    "                          'msgbus pub' (kept in the row; the relay writes them)\n"
    "  -q, --quiet             no status lines on stderr\n"
    "  -v, --verbose           library log at info level (-vv: debug)\n"
    "  -h, --help              this text\n"
    "\n"
    "exit: 0 ok (relay: stopped by a signal, or --once finished), 1 usage/config,\n"
    "      2 broker or database unreachable, 4 store error (see docs/cli.md)\n";

typedef struct store {
    msgbus_outbox_t *ob;
#ifdef MSGBUS_HAVE_SQLITE
    sqlite3 *db;
#endif
#ifdef MSGBUS_HAVE_PG
    PGconn *pg;
#endif
    int is_sqlite;
} store_t;

static void store_close(store_t *s)
{
    msgbus_outbox_close(s->ob);
    s->ob = NULL;
#ifdef MSGBUS_HAVE_SQLITE
    if (s->db)
        sqlite3_close(s->db);
    s->db = NULL;
#endif
#ifdef MSGBUS_HAVE_PG
    if (s->pg)
        PQfinish(s->pg);
    s->pg = NULL;
#endif
}

static int store_open(const char *cmd, const char *spec, const char *table, int create,
                      store_t *s)
{
    memset(s, 0, sizeof *s);
    msgbus_err_t e;
    if (!strncmp(spec, "sqlite://", 9)) {
        const char *path = spec + 9;
        if (!*path)
            return cli_usage_error(cmd, "'%s' names no file (use sqlite:///path/to/app.db)", spec);
#ifdef MSGBUS_HAVE_SQLITE
        s->is_sqlite = 1;
        /* The relay and stats never create a database: a mistyped path is
         * an error, not an empty outbox. */
        int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
        if (sqlite3_open_v2(path, &s->db, flags, NULL) != SQLITE_OK) {
            fprintf(stderr, "msgbus %s: cannot open SQLite database '%s': %s\n", cmd, path,
                    s->db ? sqlite3_errmsg(s->db) : "out of memory");
            store_close(s);
            return CLI_STORE;
        }
        sqlite3_busy_timeout(s->db, 5000);
        e = msgbus_outbox_open_sqlite(&s->ob, s->db, table);
#else
        (void)create;
        fprintf(stderr, "msgbus %s: this msgbus was built without SQLite\n", cmd);
        return CLI_UNSUPPORTED;
#endif
    } else if (!strncmp(spec, "postgresql://", 13) || !strncmp(spec, "postgres://", 11) ||
               strchr(spec, '=')) {
#ifdef MSGBUS_HAVE_PG
        s->pg = PQconnectdb(spec);
        if (!s->pg || PQstatus(s->pg) != CONNECTION_OK) {
            /* libpq's message names host and port, never the password. */
            fprintf(stderr, "msgbus %s: cannot connect to PostgreSQL: %s", cmd,
                    s->pg ? PQerrorMessage(s->pg) : "out of memory\n");
            store_close(s);
            return CLI_CONNECT;
        }
        e = msgbus_outbox_open_pg(&s->ob, s->pg, table);
#else
        fprintf(stderr, "msgbus %s: this msgbus was built without PostgreSQL\n", cmd);
        return CLI_UNSUPPORTED;
#endif
    } else {
        return cli_usage_error(cmd,
                               "STORE must be sqlite:///path or a PostgreSQL connection "
                               "string (postgresql://...), not '%s'",
                               spec);
    }
    if (e) {
        store_close(s);
        return cli_fail(cmd, "cannot open the outbox", e);
    }
    return CLI_OK;
}

/* BEGIN / COMMIT / ROLLBACK on the store's connection. */
static int store_exec(const char *cmd, store_t *s, const char *q)
{
#ifdef MSGBUS_HAVE_SQLITE
    if (s->db) {
        char *err = NULL;
        if (sqlite3_exec(s->db, q, NULL, NULL, &err) != SQLITE_OK) {
            fprintf(stderr, "msgbus %s: %s: %s\n", cmd, q, err ? err : "failed");
            sqlite3_free(err);
            return CLI_STORE;
        }
        return CLI_OK;
    }
#endif
#ifdef MSGBUS_HAVE_PG
    if (s->pg) {
        PGresult *r = PQexec(s->pg, q);
        int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            fprintf(stderr, "msgbus %s: %s: %s", cmd, q, PQerrorMessage(s->pg));
        PQclear(r);
        return ok ? CLI_OK : CLI_STORE;
    }
#endif
    (void)cmd, (void)q;
    return CLI_FAILED;
}

static int print_stats(const char *cmd, store_t *s, FILE *out)
{
    msgbus_outbox_stats_t st;
    msgbus_err_t e = msgbus_outbox_stats(s->ob, &st);
    if (e)
        return cli_fail(cmd, "stats", e);
    fprintf(out,
            "{\"pending\":%llu,\"failed\":%llu,\"sent\":%llu,\"oldest_pending_age_ms\":%lld}\n",
            (unsigned long long)st.pending, (unsigned long long)st.failed,
            (unsigned long long)st.sent, (long long)st.oldest_pending_age_ms);
    return CLI_OK;
}

struct relay_metrics {
    store_t stats;        /* a connection of its own, so a scrape never waits for a pass */
    msgbus_outbox_t *ob;  /* the relay's handle: its counters (no database access) */
    msgbus_t *bus;
    cli_prom_state_t *ps;
};

static int render_relay(void *opaque, FILE *f)
{
    struct relay_metrics *rm = opaque;
    msgbus_outbox_stats_t st;
    msgbus_err_t e = msgbus_outbox_stats(rm->stats.ob, &st);
    if (e) {
        cli_fail("outbox relay", "--metrics: outbox stats", e);
        return -1;
    }
    msgbus_outbox_relay_counters_t c;
    if ((e = msgbus_outbox_relay_counters(rm->ob, &c))) {
        cli_fail("outbox relay", "--metrics: relay counters", e);
        return -1;
    }
    cli_prom_family(f, "msgbus_outbox_rows_relayed_total", "counter",
                    "Outbox rows this relay published and marked sent.");
    cli_prom_sample(f, "msgbus_outbox_rows_relayed_total", NULL, (double)c.relayed);
    cli_prom_family(f, "msgbus_outbox_relay_passes_total", "counter",
                    "Relay passes run (up to --batch rows each; on SQLite a pass goes on "
                    "while full batches come).");
    cli_prom_sample(f, "msgbus_outbox_relay_passes_total", NULL, (double)c.passes);
    cli_prom_family(f, "msgbus_outbox_relay_failures_total", "counter",
                    "Relay passes that failed (their rows stay pending and are retried).");
    cli_prom_sample(f, "msgbus_outbox_relay_failures_total", NULL, (double)c.failures);
    cli_prom_family(f, "msgbus_outbox_relay_last_success_timestamp_seconds", "gauge",
                    "When a relay pass last worked, seconds since the Unix epoch (0: none yet).");
    cli_prom_sample(f, "msgbus_outbox_relay_last_success_timestamp_seconds", NULL,
                    (double)c.last_success_ms / 1e3);
    cli_prom_family(f, "msgbus_outbox_pending_rows", "gauge", "Outbox rows waiting to be published.");
    cli_prom_sample(f, "msgbus_outbox_pending_rows", NULL, (double)st.pending);
    cli_prom_family(f, "msgbus_outbox_failed_rows", "gauge",
                    "Outbox rows moved aside as failed (need an operator).");
    cli_prom_sample(f, "msgbus_outbox_failed_rows", NULL, (double)st.failed);
    cli_prom_family(f, "msgbus_outbox_sent_rows", "gauge", "Sent rows still kept (retention).");
    cli_prom_sample(f, "msgbus_outbox_sent_rows", NULL, (double)st.sent);
    cli_prom_family(f, "msgbus_outbox_oldest_pending_age_seconds", "gauge",
                    "Age of the oldest pending row (0 when none is pending).");
    cli_prom_sample(f, "msgbus_outbox_oldest_pending_age_seconds", NULL,
                    (double)st.oldest_pending_age_ms / 1e3);
    if ((e = cli_prom_bus(f, rm->bus, rm->ps))) {
        cli_fail("outbox relay", "--metrics: bus stats", e);
        return -1;
    }
    return 0;
}

/* Serves the bus's callbacks (state changes for -v) for `ms`, or until
 * SIGTERM/SIGINT is pending; returns that signal, else 0. The signals are
 * blocked in every thread, so they stay pending until taken here. */
static int relay_wait(msgbus_t *bus, const sigset_t *sigs, int ms)
{
    int64_t end = cli_now_us() + (int64_t)ms * 1000;
    for (;;) {
        struct timespec zero = {0, 0};
        int sig = sigtimedwait(sigs, NULL, &zero);
        if (sig > 0)
            return sig;
        int64_t left = (end - cli_now_us()) / 1000;
        if (left <= 0)
            return 0;
        msgbus_poll(bus, left < 100 ? (int)left : 100, NULL);
    }
}

/* --once: passes until one finds nothing; a failed pass ends the run. */
static int relay_once(store_t *s, msgbus_t *bus, const msgbus_outbox_relay_opts_t *o, int quiet)
{
    size_t total = 0;
    for (;;) {
        size_t n = 0;
        msgbus_err_t e = msgbus_outbox_relay(s->ob, bus, o->batch_max, o->confirm_timeout_ms, &n);
        total += n;
        if (e)
            return cli_fail("outbox relay", "relay pass", e);
        if (n == 0)
            break;
    }
    if (!quiet)
        fprintf(stderr, "msgbus outbox relay: %zu rows relayed\n", total);
    return CLI_OK;
}

/* The library's background relay until SIGTERM/SIGINT; meanwhile this
 * thread serves the bus's callbacks (state changes for -v). */
static int relay_background(store_t *s, msgbus_t *bus, const msgbus_outbox_relay_opts_t *o,
                            int quiet, const sigset_t *sigs)
{
    msgbus_err_t e = msgbus_outbox_relay_start(s->ob, bus, o);
    if (e)
        return cli_fail("outbox relay", "start", e);
    int sig;
    while (!(sig = relay_wait(bus, sigs, 1000)))
        ;
    if (!quiet)
        fprintf(stderr, "msgbus outbox relay: %s: finishing the pass in flight\n",
                sig == SIGTERM ? "SIGTERM" : "SIGINT");
    e = msgbus_outbox_relay_stop(s->ob);
    if (e && !quiet) /* the rows of a failed pass stay pending: nothing is lost */
        fprintf(stderr,
                "msgbus outbox relay: the last pass failed: %s (%s); its rows stay pending\n",
                msgbus_strerror(e), msgbus_last_error());
    if (!quiet) {
        msgbus_outbox_relay_counters_t c;
        if (msgbus_outbox_relay_counters(s->ob, &c) == MSGBUS_OK)
            fprintf(stderr, "msgbus outbox relay: stopped; %llu rows relayed; outbox now ",
                    (unsigned long long)c.relayed);
        print_stats("outbox relay", s, stderr);
    }
    return CLI_OK;
}

static int relay(const char *store_spec, const char *url, const char *table,
                 const msgbus_outbox_relay_opts_t *o, int once, int quiet, const char *metrics)
{
    /* SIGTERM and SIGINT are taken with sigtimedwait by this thread alone:
     * block them before the library starts its threads, which inherit the
     * mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    store_t s;
    struct relay_metrics rm;
    memset(&rm, 0, sizeof rm);
    cli_metrics_t *server = NULL;
    int rc = store_open("outbox relay", store_spec, table, 0, &s);
    if (rc)
        return rc;
    if (metrics && (rc = store_open("outbox relay", store_spec, table, 0, &rm.stats))) {
        store_close(&s);
        return rc;
    }
    msgbus_t *bus = NULL;
    if ((rc = cli_open_bus("outbox relay", url, &bus)))
        goto out;
    if (metrics) {
        rm.bus = bus;
        rm.ob = s.ob;
        if (!(rm.ps = cli_prom_state_new())) {
            rc = CLI_FAILED;
            goto out;
        }
        if ((rc = cli_metrics_start("outbox relay", metrics, quiet, render_relay, &rm, &server)))
            goto out;
    }
    if (!quiet && !once)
        fprintf(stderr, "msgbus outbox relay: relaying %s to %s; stop with SIGTERM\n",
                s.is_sqlite ? store_spec : "PostgreSQL", msgbus_url(bus));
    rc = once ? relay_once(&s, bus, o, quiet) : relay_background(&s, bus, o, quiet, &sigs);
out:
    cli_metrics_stop(server); /* before the bus and the store it reads */
    cli_prom_state_free(rm.ps);
    msgbus_close(bus);
    store_close(&rm.stats);
    store_close(&s);
    return rc;
}

static int put(int argc, char **argv, const char *store_spec, const char *table,
               cli_msg_opts_t *mo, uint64_t count, int quiet)
{
    if (argc < 1)
        return cli_usage_error("outbox put", "needs STORE and TOPIC");
    const char *topic = argv[0];
    mo->args = argv + 1;
    mo->n_args = argc - 1;
    if (mo->n_args && mo->n_files)
        return cli_usage_error("outbox put", "give messages as arguments or with -f, not both");
    store_t s;
    int rc = store_open("outbox put", store_spec, table, 1, &s);
    if (rc)
        return rc;
    cli_source_t *src;
    if ((rc = cli_source_open("outbox put", mo, &src))) {
        store_close(&s);
        return rc;
    }
    if (count)
        cli_source_keep_lines(src);
    rc = store_exec("outbox put", &s, s.is_sqlite ? "BEGIN IMMEDIATE" : "BEGIN");
    uint64_t n = 0;
    while (!rc && !cli_stop && (count == 0 || n < count)) {
        msgbus_msg_t *m = cli_source_next(src, &rc);
        if (!m && !rc && count && n > 0) { /* inputs used up: start over */
            cli_source_rewind(src);
            m = cli_source_next(src, &rc);
        }
        if (!m)
            break;
        msgbus_err_t e = msgbus_outbox_put(s.ob, topic, m);
        msgbus_msg_free(m);
        if (e)
            rc = cli_fail("outbox put", "put", e);
        else
            n++;
    }
    cli_source_close(src);
    if (rc)
        store_exec("outbox put", &s, "ROLLBACK");
    else
        rc = store_exec("outbox put", &s, "COMMIT");
    if (!quiet)
        fprintf(stderr, "msgbus outbox put: %llu rows for '%s' %s\n", (unsigned long long)n,
                topic, rc ? "rolled back" : "committed");
    store_close(&s);
    return rc;
}

int cli_outbox(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(outbox_help, stdout);
        return CLI_OK;
    }
    static const char *const subs[] = {"relay", "put", "stats"};
    if (argc < 2)
        return cli_usage_error("outbox", "needs one of: relay, put, stats");
    if (strcmp(argv[1], "relay") && strcmp(argv[1], "put") && strcmp(argv[1], "stats"))
        return cli_unknown_word("outbox", "command", argv[1], subs, 3);
    const char *sub = argv[1];
    char cmd[32];
    snprintf(cmd, sizeof cmd, "outbox %s", sub);
    argc--, argv++;
    enum {
        OPT_TABLE = 256,
        OPT_BATCH,
        OPT_POLL,
        OPT_CONFIRM,
        OPT_ONCE,
        OPT_METRICS,
        OPT_TYPE,
        OPT_SOURCE,
        OPT_SUBJECT
    };
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},
        {"table", required_argument, 0, OPT_TABLE},
        {"batch", required_argument, 0, OPT_BATCH},
        {"poll-interval", required_argument, 0, OPT_POLL},
        {"confirm-timeout", required_argument, 0, OPT_CONFIRM},
        {"once", no_argument, 0, OPT_ONCE},
        {"metrics", required_argument, 0, OPT_METRICS},
        {"key", required_argument, 0, 'k'},
        {"key-delim", required_argument, 0, 'K'},
        {"header", required_argument, 0, 'H'},
        {"file", required_argument, 0, 'f'},
        {"count", required_argument, 0, 'n'},
        {"type", required_argument, 0, OPT_TYPE},
        {"source", required_argument, 0, OPT_SOURCE},
        {"subject", required_argument, 0, OPT_SUBJECT},
        {"quiet", no_argument, 0, 'q'},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *url = NULL, *table = NULL, *metrics = NULL;
    msgbus_outbox_relay_opts_t ro;
    memset(&ro, 0, sizeof ro);
    cli_msg_opts_t mo;
    memset(&mo, 0, sizeof mo);
    uint64_t v, count = 0;
    int once = 0, quiet = 0, verbose = 0, c;
    while ((c = cli_getopt(cmd, argc, argv, "u:k:K:H:f:n:qvh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case OPT_TABLE: table = optarg; break;
        case OPT_BATCH:
            if (cli_parse_range(cmd, "--batch", optarg, 1, 1000000, "", &v))
                return CLI_USAGE;
            ro.batch_max = (size_t)v;
            break;
        case OPT_POLL:
            if (cli_parse_range(cmd, "--poll-interval", optarg, 1, 3600000, "ms", &v))
                return CLI_USAGE;
            ro.poll_interval_ms = (int)v;
            break;
        case OPT_CONFIRM:
            if (cli_parse_range(cmd, "--confirm-timeout", optarg, 1, 3600000, "ms", &v))
                return CLI_USAGE;
            ro.confirm_timeout_ms = (int)v;
            break;
        case OPT_ONCE: once = 1; break;
        case OPT_METRICS: {
            char h[256], port[8];
            if (cli_metrics_addr(cmd, optarg, h, sizeof h, port))
                return CLI_USAGE;
            metrics = optarg;
            break;
        }
        case 'k': mo.key = optarg; break;
        case 'K': mo.key_delim = optarg; break;
        case 'H':
            if (cli_add_header(cmd, &mo, optarg))
                return CLI_USAGE;
            break;
        case 'f':
            if (mo.n_files == sizeof mo.files / sizeof mo.files[0])
                return cli_usage_error(cmd, "too many -f files");
            mo.files[mo.n_files++] = optarg;
            break;
        case 'n':
            if (cli_parse_u64(cmd, "--count", optarg, &count))
                return CLI_USAGE;
            break;
        case OPT_TYPE: mo.ce_type = optarg; break;
        case OPT_SOURCE: mo.ce_source = optarg; break;
        case OPT_SUBJECT: mo.ce_subject = optarg; break;
        case 'q': quiet = 1; break;
        case 'v': verbose++; break;
        case 'h': fputs(outbox_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind >= argc)
        return cli_usage_error(cmd, "missing STORE (sqlite:///path or postgresql://...)");
    const char *store_spec = argv[optind++];
    cli_set_verbosity(verbose);
    if (!strcmp(sub, "put")) {
        if (mo.key && mo.key_delim)
            return cli_usage_error(cmd, "-k and -K exclude each other");
        if (cli_check_msg_opts(cmd, &mo))
            return CLI_USAGE;
        /* No signal handler: SIGINT/SIGTERM end the process inside its
         * transaction, so nothing is written. */
        signal(SIGPIPE, SIG_IGN);
        return put(argc - optind, argv + optind, store_spec, table, &mo, count, quiet);
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!ro.batch_max)
        ro.batch_max = 10000;
    if (!ro.confirm_timeout_ms)
        ro.confirm_timeout_ms = 10000;
    if (!ro.poll_interval_ms)
        ro.poll_interval_ms = 1000;
    if (metrics && strcmp(sub, "relay"))
        return cli_usage_error(cmd, "--metrics is for 'outbox relay'");
    /* The relay publishes each row as it was put: a message option here
     * would be silently ignored. */
    if (mo.key || mo.key_delim || mo.n_headers || mo.n_files || count || mo.ce_type ||
        mo.ce_source || mo.ce_subject)
        return cli_usage_error(cmd, "-k, -K, -H, -f, -n, --type, --source, --subject are for "
                                    "'outbox put'");
    if (!strcmp(sub, "relay"))
        return relay(store_spec, url, table, &ro, once, quiet, metrics);
    store_t s;
    int rc = store_open(cmd, store_spec, table, 0, &s);
    if (rc)
        return rc;
    rc = print_stats(cmd, &s, stdout);
    store_close(&s);
    return rc;
}
