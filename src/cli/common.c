/*
 * common.c — exit codes, error messages, option values, signals, and the
 * message sources shared by `pub` and `outbox put`.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
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

/* One line per mistake: the reason and where to read more, together. */
int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "msgbus %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see 'msgbus %s --help')\n", cmd);
    return CLI_USAGE;
}

/* Optimal string alignment distance (Levenshtein plus adjacent
 * transpositions: "sbu" is one step from "sub"), for short words. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return (size_t)-1;
    size_t d[64][64];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t cost = a[i - 1] != b[j - 1];
            size_t v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < v)
                v = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[la][lb];
}

const char *cli_suggest(const char *word, const char *const *names, size_t n)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1, len = strlen(word);
    /* Two edits for words of four letters or more, one below: "lss" is not
     * a typo of every three-letter command. */
    size_t max_d = len >= 4 ? 2 : 1;
    for (size_t i = 0; i < n; i++) {
        if (!names[i])
            continue;
        size_t d = edit_distance(word, names[i]);
        if (d <= max_d && d < best_d)
            best = names[i], best_d = d;
    }
    return best;
}

int cli_unknown_word(const char *cmd, const char *kind, const char *word,
                     const char *const *names, size_t n)
{
    const char *s = cli_suggest(word, names, n);
    if (s)
        return cli_usage_error(cmd, "unknown %s '%s'; did you mean '%s'?", kind, word, s);
    return cli_usage_error(cmd, "unknown %s '%s'", kind, word);
}

/* getopt_long with the errors said once, by us, with a suggestion: glibc's
 * own message ("unrecognized option") followed by ours was two lines for
 * one mistake. */
int cli_getopt(const char *cmd, int argc, char **argv, const char *shortopts,
               const struct option *longopts)
{
    char spec[128];
    snprintf(spec, sizeof spec, ":%s", shortopts); /* ':' tells a missing value apart */
    opterr = 0;
    int c = getopt_long(argc, argv, spec, longopts, NULL);
    if (c != '?' && c != ':')
        return c;
    const char *arg = optind > 0 && optind <= argc ? argv[optind - 1] : "";
    int is_long = arg && strncmp(arg, "--", 2) == 0;
    if (c == ':') {
        if (is_long)
            cli_usage_error(cmd, "option '%s' needs a value", arg);
        else
            cli_usage_error(cmd, "option '-%c' needs a value", optopt);
        return '?';
    }
    if (!is_long) {
        if (isprint(optopt))
            cli_usage_error(cmd, "unknown option '-%c'", optopt);
        else
            cli_usage_error(cmd, "unknown option '%s'", arg);
        return '?';
    }
    /* A long option: unknown, ambiguous, or given a value it takes none of. */
    char name[64];
    const char *eq = strchr(arg + 2, '=');
    size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
    snprintf(name, sizeof name, "%.*s", (int)(len < sizeof name ? len : sizeof name - 1), arg + 2);
    const char *names[64];
    size_t n = 0, prefixed = 0;
    char list[512] = "";
    const char *only_flag = NULL; /* an abbreviation of a flag, given a value */
    for (const struct option *o = longopts; o->name && n < 64; o++) {
        names[n++] = o->name;
        if (!strcmp(o->name, name) && o->has_arg == no_argument && eq) {
            cli_usage_error(cmd, "option '--%s' takes no value", name);
            return '?';
        }
        if (len && !strncmp(o->name, name, len)) {
            if (!prefixed && o->has_arg == no_argument && eq)
                only_flag = o->name;
            prefixed++;
            size_t l = strlen(list);
            snprintf(list + l, sizeof list - l, "%s--%s", l ? ", " : "", o->name);
        }
    }
    if (prefixed > 1) {
        cli_usage_error(cmd, "option '--%s' is ambiguous: %s", name, list);
        return '?';
    }
    if (prefixed == 1 && only_flag) {
        cli_usage_error(cmd, "option '--%s' takes no value", only_flag);
        return '?';
    }
    const char *s = cli_suggest(name, names, n);
    if (s)
        cli_usage_error(cmd, "unknown option '--%s'; did you mean '--%s'?", name, s);
    else
        cli_usage_error(cmd, "unknown option '--%s'", name);
    return '?';
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

int cli_parse_range(const char *cmd, const char *opt, const char *text, uint64_t min,
                    uint64_t max, const char *unit, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = 0;
    int ok = text && *text >= '0' && *text <= '9';
    if (ok) {
        v = strtoull(text, &end, 10);
        ok = !errno && !*end && v >= min && v <= max;
    }
    if (!ok) {
        cli_usage_error(cmd, "%s must be an integer %llu..%llu%s%s, not '%s'", opt,
                        (unsigned long long)min, (unsigned long long)max, *unit ? " " : "",
                        unit, text ? text : "");
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

int cli_check_msg_opts(const char *cmd, const cli_msg_opts_t *o)
{
    msgbus_msg_t *m;
    msgbus_err_t e = msgbus_msg_new(&m, "", 0);
    if (e)
        return cli_fail(cmd, "message", e);
    static const char *const flags[] = {"--type", "--source", "--subject"};
    msgbus_err_t (*const set[])(msgbus_msg_t *, const char *) = {
        msgbus_msg_set_type, msgbus_msg_set_source, msgbus_msg_set_subject};
    const char *values[] = {o->ce_type, o->ce_source, o->ce_subject};
    int rc = CLI_OK;
    for (size_t i = 0; i < 3 && !rc; i++)
        if (values[i] && set[i](m, values[i]) != MSGBUS_OK)
            rc = cli_usage_error(cmd, "%s: %s", flags[i], msgbus_last_error());
    for (size_t i = 0; i < o->n_headers && !rc; i++)
        if (msgbus_msg_set_header(m, o->headers[i].name, o->headers[i].value) != MSGBUS_OK)
            rc = cli_usage_error(cmd, "-H %s: %s", o->headers[i].name, msgbus_last_error());
    msgbus_msg_free(m);
    return rc;
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
    if ((o->ce_type && (e = msgbus_msg_set_type(m, o->ce_type))) ||
        (o->ce_source && (e = msgbus_msg_set_source(m, o->ce_source))) ||
        (o->ce_subject && (e = msgbus_msg_set_subject(m, o->ce_subject)))) {
        *rc = cli_fail(s->cmd, "CloudEvents attribute", e);
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
