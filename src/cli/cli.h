/*
 * cli.h — what the commands of the msgbus tool share: exit codes, error
 * reporting, option parsing helpers, the message sources of `pub` and
 * `outbox put`, and signal handling.
 */
#ifndef MSGBUS_CLI_H
#define MSGBUS_CLI_H

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

/* Prints "msgbus CMD: message" to stderr and returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses a non-negative integer option value; on error prints and returns -1. */
int cli_parse_u64(const char *cmd, const char *opt, const char *text, uint64_t *out);
int cli_parse_double(const char *cmd, const char *opt, const char *text, double *out);

/* Opens the bus on `url` (NULL: $MSGBUS_URL); prints the error itself. */
int cli_open_bus(const char *cmd, const char *url, msgbus_t **bus);

/* Sets the library's log level from -v counts (0: warnings). */
void cli_set_verbosity(int v);

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
} cli_msg_opts_t;

/* Parses "-H name=value" into opts; prints the error and returns CLI_USAGE. */
int cli_add_header(const char *cmd, cli_msg_opts_t *o, char *spec);

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

/* ---- commands ---- */
int cli_pub(int argc, char **argv);
int cli_sub(int argc, char **argv);
int cli_declare(int argc, char **argv);
int cli_outbox(int argc, char **argv);
int cli_dlq(int argc, char **argv);
int cli_bench(int argc, char **argv);
int cli_doctor(int argc, char **argv);

#endif
