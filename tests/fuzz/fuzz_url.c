/*
 * fuzz_url — URL and option parsing (src/core/url.c): mb_url_parse,
 * mb_url_parse_options, the option lookups, msgbus_redact, and
 * msgbus_open on mem:// URLs.
 *
 * The first input byte picks one of two modes:
 *
 * 'S' (structured; also any byte with bit 0 set): the rest is lines
 *   (separator '\n'), each starting with a letter saying what it is:
 *     first line   the scheme
 *     u<user>      p<password>     h<host[:port]> (repeatable)
 *     /<path>      o<name>=<value> (repeatable)     e<mode byte>
 *   The harness percent-encodes every part the way a careful user would,
 *   so the URL's structure is known: the password and the value of every
 *   option msgbus_secret_name() calls secret are secrets. A secret is
 *   written as '~' <value> '~' and no other part contains a '~', so the
 *   invariant is simple: no text that leaves msgbus (msgbus_redact,
 *   msgbus_last_error, every log line at debug level, msgbus_url) contains
 *   a '~'. And when the URL parses, its parts are the ones written.
 *
 * anything else (raw): the rest, up to a NUL, is a URL or an option list
 *   as given. Checks: no crash or sanitizer report; msgbus_redact agrees
 *   with itself (truncation gives prefixes, the length is the snprintf
 *   length, redacting twice changes nothing) and with url->redacted;
 *   typed lookups return values within their bounds.
 */
#include <ctype.h>

#include "core/url.h"
#include "fuzz.h"

#define SECRET_MARK '~'

/* ---- checks shared by both modes ------------------------------------------- */

static void no_secret(const char *what, const char *text)
{
    FUZZ_CHECK(!strchr(text, SECRET_MARK), "a secret shows in %s: %s", what, text);
}


static char *redact_all(const char *text)
{
    size_t n = msgbus_redact(text, NULL, 0);
    char *buf = malloc(n + 1);
    if (!buf)
        abort();
    size_t n2 = msgbus_redact(text, buf, n + 1);
    FUZZ_CHECK(n2 == n, "msgbus_redact length %zu then %zu", n, n2);
    FUZZ_CHECK(strlen(buf) == n, "msgbus_redact wrote %zu bytes, said %zu", strlen(buf), n);
    return buf;
}

static void check_redact(const char *text, uint8_t cut)
{
    char *full = redact_all(text);
    size_t n = strlen(full);
    /* Truncation: a NUL-terminated prefix of the whole text. */
    size_t size = (size_t)cut % (n + 2);
    char small[258];
    memset(small, 'Z', sizeof small);
    size_t r = msgbus_redact(text, size ? small : NULL, size);
    FUZZ_CHECK(r == n, "msgbus_redact returned %zu with size %zu, %zu in full", r, size, n);
    if (size) {
        size_t k = size - 1 < n ? size - 1 : n;
        FUZZ_CHECK(small[k] == '\0' && memcmp(small, full, k) == 0,
                   "truncated redaction (size %zu) is not a prefix", size);
        FUZZ_CHECK(small[size] == 'Z' || size >= sizeof small - 1, "wrote past size %zu", size);
    }
    /* The redacted form is a fixed point: nothing left to hide. */
    char *again = redact_all(full);
    FUZZ_CHECK(strcmp(again, full) == 0, "redacting twice differs:\n  once:  %s\n  twice: %s",
               full, again);
    free(again);
    free(full);
}

/* Looks up every option once with a typed lookup picked by `how`, checks
 * the results against their bounds, then mb_url_check_unused. */
static void check_lookups(struct mb_url *url, uint8_t how, bool skip_secrets)
{
    static const char *const known[] = {"linger.ms", "queue_max", "prefetch", "heartbeat",
                                        "sasl.mechanism", NULL};
    for (size_t i = 0; i < url->nopts; i++) {
        const char *key = url->opts[i].key;
        FUZZ_CHECK(key && *key && url->opts[i].value, "option %zu has no name or value", i);
        if (skip_secrets && msgbus_secret_name(key))
            continue;
        char origin[64];
        mb_url_opt_origin(url, key, origin, sizeof origin);
        mb_error(MSGBUS_OK, "%s", ""); /* the detail below is this lookup's */
        switch ((how + i) % 4) {
        case 0: {
            const char *v = mb_url_opt(url, key);
            FUZZ_CHECK(v == url->opts[i].value, "mb_url_opt('%s') found another option", key);
            break;
        }
        case 1: {
            long lo = -(long)(how & 0x0f), hi = (long)how * 1000, out = 12345;
            msgbus_err_t e = mb_url_opt_int(url, key, 7, lo, hi, &out);
            FUZZ_CHECK(e == MSGBUS_OK || e == MSGBUS_ERR_CONFIG, "mb_url_opt_int: %d", e);
            FUZZ_CHECK(e || (out >= lo && out <= hi), "%ld outside %ld..%ld", out, lo, hi);
            FUZZ_CHECK(e == MSGBUS_OK || strstr(msgbus_last_error(), key) ||
                           strlen(key) > 60, /* long names are cut in `origin` */
                       "int error does not name '%s': %s", key, msgbus_last_error());
            break;
        }
        case 2: {
            bool out = false;
            msgbus_err_t e = mb_url_opt_bool(url, key, how & 1, &out);
            FUZZ_CHECK(e == MSGBUS_OK || e == MSGBUS_ERR_CONFIG, "mb_url_opt_bool: %d", e);
            break;
        }
        default: {
            double lo = -1.5, hi = 1e6, out = 0;
            msgbus_err_t e = mb_url_opt_double(url, key, 0.5, lo, hi, &out);
            FUZZ_CHECK(e == MSGBUS_OK || e == MSGBUS_ERR_CONFIG, "mb_url_opt_double: %d", e);
            FUZZ_CHECK(e || (out >= lo && out <= hi), "%g outside %g..%g", out, lo, hi);
            break;
        }
        }
        FUZZ_CHECK(url->opts[i].used, "option '%s' looked up but not marked used", key);
        if (skip_secrets) /* structured mode: errors name no secret either */
            no_secret("a lookup's error", msgbus_last_error());
    }
    const char *absent = "no.such.option.anywhere";
    bool there = false;
    for (size_t i = 0; i < url->nopts; i++)
        there |= strcmp(url->opts[i].key, absent) == 0;
    FUZZ_CHECK(there == (mb_url_opt(url, absent) != NULL), "lookup of an absent option");
    msgbus_err_t e = mb_url_check_unused(url, known);
    FUZZ_CHECK(e == MSGBUS_OK || e == MSGBUS_ERR_CONFIG, "mb_url_check_unused: %d", e);
    if (e && skip_secrets)
        no_secret("mb_url_check_unused's error", msgbus_last_error());
    if (url->nopts >= 2)
        (void)mb_edit_distance(url->opts[0].key, url->opts[1].key);
}

/* ---- raw mode ------------------------------------------------------------------ */

static void fuzz_raw(const char *text, uint8_t how)
{
    check_redact(text, how);

    struct mb_url *url = NULL;
    msgbus_err_t e = mb_url_parse(text, &url);
    if (e == MSGBUS_OK) {
        FUZZ_CHECK(url && url->scheme && url->path && url->redacted, "parsed URL misses parts");
        for (const char *p = url->scheme; *p; p++)
            FUZZ_CHECK(!isupper((unsigned char)*p), "scheme '%s' not lower case", url->scheme);
        char *r = redact_all(text);
        FUZZ_CHECK(strcmp(r, url->redacted) == 0, "url->redacted '%s' != msgbus_redact '%s'",
                   url->redacted, r);
        free(r);
        for (size_t i = 0; i < url->nhosts; i++)
            FUZZ_CHECK(url->hosts[i].port >= 0 && url->hosts[i].port <= 65535, "port %d",
                       url->hosts[i].port);
        check_lookups(url, how, false);
        mb_url_free(url);
    } else {
        FUZZ_CHECK(e == MSGBUS_ERR_CONFIG || e == MSGBUS_ERR_NOMEM, "mb_url_parse: %d", e);
        FUZZ_CHECK(msgbus_last_error()[0], "mb_url_parse failed without a detail");
    }

    url = NULL;
    e = mb_url_parse_options(text, &url);
    if (e == MSGBUS_OK) {
        check_lookups(url, (uint8_t)(how >> 1), false);
        mb_url_free(url);
    } else {
        FUZZ_CHECK(e == MSGBUS_ERR_CONFIG || e == MSGBUS_ERR_NOMEM, "mb_url_parse_options: %d", e);
    }
}

/* ---- structured mode ------------------------------------------------------------ */

struct sbuf {
    char *p;
    size_t n, cap;
};

static void sb_putc(struct sbuf *b, char c)
{
    if (b->n + 2 > b->cap) {
        b->cap = b->cap ? b->cap * 2 : 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    b->p[b->n++] = c;
    b->p[b->n] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s)
{
    while (*s)
        sb_putc(b, *s++);
}

/* Encoding modes (the 'e' line). */
#define E_ALL 0x01      /* %-encode every byte but [A-Za-z0-9] */
#define E_RAW_PASS 0x02 /* leave ':' and '@' raw in the password (legal) */
#define E_LOWER 0x04    /* lower-case hex digits */
#define E_LIST 0x08     /* the options alone: "k=v&k=v" (per-call options) */
#define E_OPEN 0x10     /* also msgbus_open the URL when its scheme is mem */
#define E_NO_ENC 0x20   /* leave control bytes and spaces raw (a parse error) */
#define E_RAW_HASH 0x40 /* leave '#' raw in secrets: msgbus refuses the URL,
                         * and the error must not show the secret either */

/* Appends one part: bytes in `must` and '%' always %-encoded, NUL always
 * (a C string), '~' replaced in parts that are not secrets. */
static void sb_part(struct sbuf *b, const uint8_t *p, size_t n, const char *must, uint8_t mode,
                    bool secret)
{
    const char *hex = (mode & E_LOWER) ? "0123456789abcdef" : "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == SECRET_MARK && !secret)
            c = '_';
        bool enc = c == '%' || c == 0 || (c && strchr(must, c)) ||
                   ((mode & E_ALL) && !isalnum(c)) ||
                   (!(mode & E_NO_ENC) && (c <= 0x20 || c >= 0x7f));
        if (enc) {
            sb_putc(b, '%');
            sb_putc(b, hex[c >> 4]);
            sb_putc(b, hex[c & 15]);
        } else {
            sb_putc(b, (char)c);
        }
    }
}

struct opt {
    const uint8_t *name, *value;
    size_t name_len, value_len;
    bool secret;
};

#define MAX_OPTS 16

static void log_hook(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    (void)level;
    no_secret("a log line", line);
}

static void fuzz_structured(struct fuzz_in *in)
{
    size_t n;
    const uint8_t *scheme = fuzz_until(in, '\n', &n);
    size_t scheme_len = n;
    const uint8_t *user = NULL, *pass = NULL, *path = NULL;
    size_t user_len = 0, pass_len = 0, path_len = 0;
    const uint8_t *hosts[8];
    size_t host_len[8], nhosts = 0;
    struct opt opts[MAX_OPTS];
    size_t nopts = 0;
    uint8_t mode = 0;
    bool has_user = false, has_pass = false, has_path = false;

    while (!fuzz_empty(in)) {
        const uint8_t *l = fuzz_until(in, '\n', &n);
        if (!n)
            continue;
        uint8_t kind = l[0];
        l++, n--;
        switch (kind) {
        case 'u':
            user = l, user_len = n, has_user = true;
            break;
        case 'p':
            pass = l, pass_len = n, has_pass = has_user = true;
            break;
        case 'h':
            if (nhosts < 8)
                hosts[nhosts] = l, host_len[nhosts++] = n;
            break;
        case '/':
            path = l, path_len = n, has_path = true;
            break;
        case 'e':
            mode = n ? l[0] : 0;
            break;
        case 'o': {
            if (nopts == MAX_OPTS)
                break;
            const uint8_t *eq = memchr(l, '=', n);
            struct opt *o = &opts[nopts++];
            o->name = l;
            o->name_len = eq ? (size_t)(eq - l) : n;
            o->value = eq ? eq + 1 : l + n;
            o->value_len = eq ? n - o->name_len - 1 : 0;
            /* Decide like msgbus does, on the name as it will be decoded
             * (a NUL ends it there too). */
            char *name = fuzz_cstr(o->name, o->name_len);
            for (char *c = name; *c; c++)
                if (*c == SECRET_MARK)
                    *c = '_';
            o->secret = msgbus_secret_name(name) != 0;
            free(name);
            break;
        }
        default:
            break;
        }
    }

    struct sbuf b = {0};
    if (!(mode & E_LIST)) {
        /* The scheme has no escapes: what would end it is left out. */
        for (size_t i = 0; i < scheme_len; i++)
            if (scheme[i] && !strchr(":/?#@~", scheme[i]))
                sb_putc(&b, (char)scheme[i]);
        sb_puts(&b, "://");
        if (has_user) {
            sb_part(&b, user, user_len, ":@/?#&", mode, false);
            if (has_pass) {
                sb_putc(&b, ':');
                sb_putc(&b, SECRET_MARK);
                char must[8] = "/?";
                if (!(mode & E_RAW_HASH))
                    strcat(must, "#");
                if (!(mode & E_RAW_PASS))
                    strcat(must, ":@");
                sb_part(&b, pass, pass_len, must, mode, true);
                sb_putc(&b, SECRET_MARK);
            }
            sb_putc(&b, '@');
        }
        for (size_t i = 0; i < nhosts; i++) {
            if (i)
                sb_putc(&b, ',');
            sb_part(&b, hosts[i], host_len[i], ",@/?#", mode & ~E_ALL, false);
        }
        if (has_path) {
            sb_putc(&b, '/');
            sb_part(&b, path, path_len, "?#", mode, false);
        }
        if (nopts)
            sb_putc(&b, '?');
    }
    for (size_t i = 0; i < nopts; i++) {
        if (i)
            sb_putc(&b, '&');
        sb_part(&b, opts[i].name, opts[i].name_len, "&=#", mode, false);
        sb_putc(&b, '=');
        if (opts[i].secret)
            sb_putc(&b, SECRET_MARK);
        bool hash_raw = opts[i].secret && (mode & E_RAW_HASH);
        sb_part(&b, opts[i].value, opts[i].value_len, hash_raw ? "&" : "&#", mode, opts[i].secret);
        if (opts[i].secret)
            sb_putc(&b, SECRET_MARK);
    }
    const char *text = b.p ? b.p : "";

    char *red = redact_all(text);
    no_secret("msgbus_redact", red);
    free(red);
    check_redact(text, mode);

    msgbus_set_log(log_hook, NULL, MSGBUS_LOG_DEBUG);
    struct mb_url *url = NULL;
    msgbus_err_t e =
        (mode & E_LIST) ? mb_url_parse_options(text, &url) : mb_url_parse(text, &url);
    if (e) {
        no_secret("msgbus_last_error", msgbus_last_error());
    } else if (mode & E_LIST) {
        /* Per-call option lists quote themselves as given in errors:
         * url->redacted is the text itself there, and callers redact it
         * (msgbus_redact) before printing. Check the parts only. */
        FUZZ_CHECK(url->nopts == nopts, "%zu options written, %zu parsed", nopts, url->nopts);
        check_lookups(url, mode, true);
        mb_url_free(url);
    } else {
        no_secret("url->redacted", url->redacted);
        FUZZ_CHECK(url->nopts == nopts, "%zu options written, %zu parsed: %s", nopts, url->nopts,
                   url->redacted);
        FUZZ_CHECK(has_pass == (url->password != NULL), "password %s", has_pass ? "lost" : "found");
        if (url->password) {
            size_t pl = strlen(url->password);
            FUZZ_CHECK(pl >= 2 && url->password[0] == SECRET_MARK &&
                           url->password[pl - 1] == SECRET_MARK,
                       "the password parsed is not the one written");
        }
        FUZZ_CHECK(has_user == (url->user != NULL), "user %s", has_user ? "lost" : "found");
        if (url->user)
            no_secret("the user name", url->user);
        for (size_t i = 0; i < url->nhosts; i++)
            no_secret("a host", url->hosts[i].host);
        no_secret("the path", url->path);
        for (size_t i = 0; i < url->nopts; i++) {
            const char *v = url->opts[i].value;
            if (opts[i].secret) {
                FUZZ_CHECK(v[0] == SECRET_MARK && v[strlen(v) - 1] == SECRET_MARK,
                           "option %zu's secret value is not the one written", i);
            } else {
                no_secret("an option value that is not secret", v);
            }
        }
        check_lookups(url, mode, true);
        bool open = (mode & E_OPEN) && strcmp(url->scheme, "mem") == 0;
        mb_url_free(url);
        if (open) {
            msgbus_t *bus = NULL;
            e = msgbus_open(&bus, text, NULL);
            if (e == MSGBUS_OK) {
                no_secret("msgbus_url", msgbus_url(bus));
                msgbus_close(bus);
            } else {
                no_secret("msgbus_open's error", msgbus_last_error());
            }
        }
    }
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    free(b.p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    mb_error(MSGBUS_OK, "%s", ""); /* no detail left from the previous input */
    struct fuzz_in in = {data + 1, size - 1};
    if (data[0] == 'S' || (data[0] & 1)) {
        fuzz_structured(&in);
    } else {
        uint8_t how = size > 1 ? data[size - 1] : 0;
        char *text = fuzz_cstr(in.p, strnlen((const char *)in.p, in.n));
        fuzz_raw(text, how);
        free(text);
    }
    return 0;
}
