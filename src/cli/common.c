/*
 * common.c — exit codes, error messages, option values, signals, and the
 * message sources shared by `pub` and `outbox put`.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

volatile sig_atomic_t cli_stop;

int cli_exit_code(msgbus_err_t e)
{
    switch (e) {
    case MSGBUS_OK:
        return CLI_OK;
    case MSGBUS_ERR_INVALID:
    case MSGBUS_ERR_CONFIG:
        return CLI_USAGE;
    case MSGBUS_ERR_CONNECT:
    case MSGBUS_ERR_AUTH:
        return CLI_CONNECT;
    case MSGBUS_ERR_QUEUE_FULL:
    case MSGBUS_ERR_TOO_LARGE:
    case MSGBUS_ERR_BROKER:
    case MSGBUS_ERR_DELIVERY:
        return CLI_DELIVERY;
    case MSGBUS_ERR_STORE:
        return CLI_STORE;
    case MSGBUS_ERR_TIMEOUT:
        return CLI_TIMEOUT;
    case MSGBUS_ERR_UNSUPPORTED:
        return CLI_UNSUPPORTED;
    default:
        return CLI_FAILED;
    }
}

int cli_fail(const char *cmd, const char *what, msgbus_err_t e)
{
    const char *detail = msgbus_last_error();
    fprintf(stderr, "msgbus %s: %s: %s%s%s%s\n", cmd, what, msgbus_strerror(e),
            *detail ? " (" : "", detail, *detail ? ")" : "");
    return cli_exit_code(e);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "msgbus %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(see 'msgbus %s --help')\n", cmd);
    return CLI_USAGE;
}

int cli_parse_u64(const char *cmd, const char *opt, const char *text, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!text || !*text || *text == '-') {
        cli_usage_error(cmd, "%s needs a non-negative integer, not '%s'", opt, text ? text : "");
        return -1;
    }
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || *end) {
        cli_usage_error(cmd, "%s needs a non-negative integer, not '%s'", opt, text);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_double(const char *cmd, const char *opt, const char *text, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || *end || end == text || v < 0) {
        cli_usage_error(cmd, "%s needs a non-negative number, not '%s'", opt, text);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_open_bus(const char *cmd, const char *url, msgbus_t **bus)
{
    msgbus_err_t e = msgbus_open(bus, url, NULL);
    if (e)
        return cli_fail(cmd, "cannot open the bus", e);
    if (cli_verbosity >= 1)
        cli_watch_state(cmd, *bus);
    return CLI_OK;
}

int cli_verbosity;

void cli_set_verbosity(int v)
{
    cli_verbosity = v;
    msgbus_set_log(NULL, NULL, v >= 2 ? MSGBUS_LOG_DEBUG : v == 1 ? MSGBUS_LOG_INFO
                                                                  : MSGBUS_LOG_WARN);
}

int64_t cli_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void on_signal(int sig)
{
    (void)sig;
    cli_stop = 1;
}

void cli_catch_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: a blocking read returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* ------------------------------------------------------------ sources */

int cli_add_header(const char *cmd, cli_msg_opts_t *o, char *spec)
{
    char *eq = strchr(spec, '=');
    if (!eq || eq == spec)
        return cli_usage_error(cmd, "-H needs NAME=VALUE, not '%s'", spec);
    if (o->n_headers == sizeof o->headers / sizeof o->headers[0])
        return cli_usage_error(cmd, "too many -H headers (at most %zu)",
                               sizeof o->headers / sizeof o->headers[0]);
    *eq = '\0';
    o->headers[o->n_headers].name = spec;
    o->headers[o->n_headers].value = eq + 1;
    o->n_headers++;
    return CLI_OK;
}

typedef struct item {
    char *data;
    size_t len;
} item_t;

struct cli_source {
    const char *cmd;
    const cli_msg_opts_t *o;
    item_t *items;
    size_t n, cap, pos;
    int from_stdin, stdin_done, keep;
    char *line;
    size_t line_cap;
};

static int push(cli_source_t *s, const char *data, size_t len)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        item_t *it = realloc(s->items, cap * sizeof *it);
        if (!it)
            return -1;
        s->items = it;
        s->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, data, len);
    copy[len] = '\0';
    s->items[s->n].data = copy;
    s->items[s->n].len = len;
    s->n++;
    return 0;
}

static int read_file(cli_source_t *s, const char *path)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "msgbus %s: cannot open '%s': %s\n", s->cmd, path, strerror(errno));
        return CLI_USAGE;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 65536;
            char *b = realloc(buf, cap);
            if (!b) {
                free(buf);
                return CLI_FAILED;
            }
            buf = b;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0)
            break;
    }
    int bad = ferror(f);
    if (f != stdin)
        fclose(f);
    if (bad) {
        fprintf(stderr, "msgbus %s: cannot read '%s'\n", s->cmd, path);
        free(buf);
        return CLI_USAGE;
    }
    int rc = push(s, buf ? buf : "", len) ? CLI_FAILED : CLI_OK;
    free(buf);
    return rc;
}

int cli_source_open(const char *cmd, const cli_msg_opts_t *o, cli_source_t **out)
{
    cli_source_t *s = calloc(1, sizeof *s);
    if (!s)
        return CLI_FAILED;
    s->cmd = cmd;
    s->o = o;
    for (int i = 0; i < o->n_args; i++)
        if (push(s, o->args[i], strlen(o->args[i]))) {
            cli_source_close(s);
            return CLI_FAILED;
        }
    for (size_t i = 0; i < o->n_files; i++) {
        int rc = read_file(s, o->files[i]);
        if (rc) {
            cli_source_close(s);
            return rc;
        }
    }
    s->from_stdin = o->n_args == 0 && o->n_files == 0;
    *out = s;
    return CLI_OK;
}

static msgbus_msg_t *build(cli_source_t *s, const char *data, size_t len, int *rc)
{
    const cli_msg_opts_t *o = s->o;
    const char *key = o->key;
    size_t key_len = key ? strlen(key) : 0;
    if (o->key_delim) {
        size_t dl = strlen(o->key_delim);
        const char *d = dl ? memmem(data, len, o->key_delim, dl) : NULL;
        if (d) { /* "KEY<delim>PAYLOAD"; without the delimiter: no key */
            key = data;
            key_len = (size_t)(d - data);
            len -= key_len + dl;
            data = d + dl;
        }
    }
    msgbus_msg_t *m;
    msgbus_err_t e = msgbus_msg_new(&m, data, len);
    if (e) {
        *rc = cli_fail(s->cmd, "message", e);
        return NULL;
    }
    if (key && (e = msgbus_msg_set_key(m, key, key_len))) {
        *rc = cli_fail(s->cmd, "key", e);
        msgbus_msg_free(m);
        return NULL;
    }
    for (size_t i = 0; i < o->n_headers; i++)
        if ((e = msgbus_msg_set_header(m, o->headers[i].name, o->headers[i].value))) {
            char what[300];
            snprintf(what, sizeof what, "header '%s'", o->headers[i].name);
            *rc = cli_fail(s->cmd, what, e);
            msgbus_msg_free(m);
            return NULL;
        }
    return m;
}

msgbus_msg_t *cli_source_next(cli_source_t *s, int *rc)
{
    *rc = CLI_OK;
    if (s->pos < s->n) {
        item_t *it = &s->items[s->pos++];
        return build(s, it->data, it->len, rc);
    }
    if (s->from_stdin && !s->stdin_done && !cli_stop) {
        ssize_t got = getline(&s->line, &s->line_cap, stdin);
        if (got < 0) {
            s->stdin_done = 1;
            return NULL;
        }
        size_t len = (size_t)got;
        if (len && s->line[len - 1] == '\n')
            len--;
        if (len && s->line[len - 1] == '\r')
            len--;
        if (s->keep) { /* kept for --count repeats */
            if (push(s, s->line, len)) {
                *rc = CLI_FAILED;
                return NULL;
            }
            s->pos = s->n;
        }
        return build(s, s->line, len, rc);
    }
    return NULL;
}

void cli_source_rewind(cli_source_t *s)
{
    s->pos = 0;
}

void cli_source_keep_lines(cli_source_t *s)
{
    s->keep = 1;
}

void cli_source_close(cli_source_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n; i++)
        free(s->items[i].data);
    free(s->items);
    free(s->line);
    free(s);
}
