/*
 * cli.h — what the commands of the msgbus tool share: exit codes, error
 * reporting, option parsing helpers, the message sources of `pub` and
 * `outbox put`, and signal handling.
 */
#ifndef MSGBUS_CLI_H
#define MSGBUS_CLI_H

#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <msgbus/msgbus.h>

/* Exit codes, documented in docs/cli.md. */
enum {
    CLI_OK = 0,          /* done */
    CLI_USAGE = 1,       /* bad command line or configuration (URL, options, store string) */
    CLI_CONNECT = 2,     /* broker or database unreachable, credentials refused */
    CLI_DELIVERY = 3,    /* the broker refused or did not confirm a message */
    CLI_STORE = 4,       /* outbox database error */
    CLI_TIMEOUT = 5,     /* the time given ran out (e.g. fewer than --count messages came) */
    CLI_UNSUPPORTED = 6, /* the backend or this build cannot do it */
    CLI_FAILED = 7       /* anything else (a check of `doctor`, an internal error) */
};

/* The exit code for a library error. */
int cli_exit_code(msgbus_err_t e);

/* Prints "msgbus CMD: WHAT: text (detail)" to stderr; returns the exit code. */
int cli_fail(const char *cmd, const char *what, msgbus_err_t e);

/* Prints "msgbus CMD: message (see 'msgbus CMD --help')" — one line — to
 * stderr and returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The name among `names` (n of them; NULL entries skipped) closest to
 * `word` within a typo's distance (two edits, one for words under four
 * letters), or NULL. */
const char *cli_suggest(const char *word, const char *const *names, size_t n);

/* "msgbus CMD: unknown KIND 'word'; did you mean 'x'?" (the suggestion
 * when there is one); returns CLI_USAGE. */
int cli_unknown_word(const char *cmd, const char *kind, const char *word,
                     const char *const *names, size_t n);

/* getopt_long that says each mistake once (glibc's own messages are off):
 * an unknown option with "did you mean", an ambiguous abbreviation with
 * its candidates, a missing or unexpected value. Returns the option, -1 at
 * the end, '?' after printing an error (the caller returns CLI_USAGE). */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts);

/* Parses an integer option value in min..max; prints one line naming the
 * option, the range and `unit` ("ms", may be "") and returns -1 when it is
 * not. */
int cli_parse_range(const char *cmd, const char *opt, const char *text, uint64_t min,
                    uint64_t max, const char *unit, uint64_t *out);

/* Parses a non-negative integer option value; on error prints and returns -1. */
int cli_parse_u64(const char *cmd, const char *opt, const char *text, uint64_t *out);
int cli_parse_double(const char *cmd, const char *opt, const char *text, double *out);

/* Opens the bus on `url` (NULL: $MSGBUS_URL); prints the error itself. */
int cli_open_bus(const char *cmd, const char *url, msgbus_t **bus);

/* Sets the library's log level from -v counts (0: warnings); with v >= 1
 * cli_open_bus also shows the bus's state changes (cli_watch_state). */
void cli_set_verbosity(int v);
extern int cli_verbosity;

/* Prints the bus's state now and installs a state callback that prints
 * each change (of the bus and its subscriptions) to stderr as
 * "msgbus CMD: state A -> B (reason)". `cmd` must outlive the bus. The
 * lines come from the thread that calls msgbus_poll/_flush/_close. */
void cli_watch_state(const char *cmd, msgbus_t *bus);

/* ---- --metrics: Prometheus text exposition over HTTP (metrics.c) ---- */

/* Writes the exposition to f; returns 0, or -1 when the figures cannot be
 * read (the server answers 500). Runs on the server's thread. */
typedef int (*cli_metrics_render_fn)(void *opaque, FILE *f);
typedef struct cli_metrics cli_metrics_t;

/* Listens on ADDR:PORT ([v6addr]:PORT; :PORT for every address; port 0:
 * any free one, printed) and serves GET /metrics on a thread of its own
 * until cli_metrics_stop. Prints its errors; returns a CLI_* code. */
int cli_metrics_start(const char *cmd, const char *addr, int quiet, cli_metrics_render_fn render,
                      void *opaque, cli_metrics_t **out);
void cli_metrics_stop(cli_metrics_t *m);
/* Checks ADDR:PORT and splits it (host without brackets; "" for every
 * address); prints the error and returns CLI_USAGE when it is malformed. */
int cli_metrics_addr(const char *cmd, const char *addr, char *host, size_t cap, char port[8]);

/* Exposition helpers: a family's HELP and TYPE lines, and one sample with
 * labels given as a NULL-terminated list of name, value pairs (may be NULL). */
void cli_prom_family(FILE *f, const char *name, const char *type, const char *help);
void cli_prom_sample(FILE *f, const char *name, const char *labels[], double v);

/* What the bus's figures need kept between scrapes (cumulative latency
 * counts); one per bus, shared by its scrapes. */
typedef struct cli_prom_state cli_prom_state_t;
cli_prom_state_t *cli_prom_state_new(void);
void cli_prom_state_free(cli_prom_state_t *s);
/* The bus's msgbus_stats_json snapshot as msgbus_* families. */
msgbus_err_t cli_prom_bus(FILE *f, msgbus_t *bus, cli_prom_state_t *ps);

/* Monotonic clock in microseconds. */
int64_t cli_now_us(void);

/* Signals: SIGINT/SIGTERM set cli_stop (installed without SA_RESTART so a
 * blocking read returns). */
extern volatile sig_atomic_t cli_stop;
void cli_catch_signals(void);

/* ---- message sources (pub, outbox put) ---- */

typedef struct cli_header {
    const char *name, *value;
} cli_header_t;

typedef struct cli_msg_opts {
    const char *key;           /* -k: the key of every message */
    const char *key_delim;     /* -K: split each message at this into key, payload */
    cli_header_t headers[64];  /* -H name=value */
    size_t n_headers;
    char **args;               /* messages given as arguments */
    int n_args;
    const char *files[64];     /* -f: one message per file */
    size_t n_files;
    /* --type, --source, --subject: the CloudEvents attributes of every
     * message (NULL: the bus's defaults, the topic and ce_source). */
    const char *ce_type, *ce_source, *ce_subject;
} cli_msg_opts_t;

/* Parses "-H name=value" into opts; prints the error and returns CLI_USAGE. */
int cli_add_header(const char *cmd, cli_msg_opts_t *o, char *spec);
/* Checks --type/--source/--subject and the -H headers against the
 * library's rules before anything is opened, so a bad value is one usage
 * line and not a failed first publish; prints and returns CLI_USAGE. */
int cli_check_msg_opts(const char *cmd, const cli_msg_opts_t *o);

typedef struct cli_source cli_source_t;
int cli_source_open(const char *cmd, const cli_msg_opts_t *o, cli_source_t **out);
/* The next message (built with key and headers applied), NULL at the end.
 * *rc is set on error (CLI_* code, already printed). */
msgbus_msg_t *cli_source_next(cli_source_t *s, int *rc);
/* Starts again from the first message (arguments and files only; stdin
 * lines are read once and kept for repeats). */
void cli_source_rewind(cli_source_t *s);
/* Keeps stdin lines in memory so that cli_source_rewind repeats them. */
void cli_source_keep_lines(cli_source_t *s);
void cli_source_close(cli_source_t *s);

/* ---- sub --format (format.c) ---- */

/* Checks a kcat-style format (%t %k %s %h %p %o %T %i %S %K %g %a, the
 * CloudEvents %y type, %u source, %j subject, %%, and \n \t \r \\ \0);
 * prints the first mistake and returns CLI_USAGE. */
int cli_format_check(const char *cmd, const char *format);
/* Writes one message by a checked format; -1 when the stream fails. */
int cli_format_write(FILE *out, const char *format, const msgbus_msg_t *m);

/* ---- commands ---- */
int cli_pub(int argc, char **argv);
int cli_sub(int argc, char **argv);
int cli_declare(int argc, char **argv);
int cli_outbox(int argc, char **argv);
int cli_dlq(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_doctor(int argc, char **argv);
int cli_ls(int argc, char **argv);
int cli_group(int argc, char **argv);

#endif
