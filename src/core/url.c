/*
 * url.c — parsing of bus URLs and lookup of their options.
 *
 *   scheme://[user[:password]@]host[:port][,host[:port]…][/path][?k=v&…]
 *
 * Strict on purpose: anything we do not understand is an error that names
 * it, because a silently ignored typo in production configuration is far
 * worse than a refusal at start-up. The password never appears in an error:
 * messages quote the redacted form.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/url.h"

extern char **environ;

void mb_url_free(struct mb_url *url)
{
    if (!url)
        return;
    free(url->scheme);
    free(url->user);
    if (url->password) {
        /* Do not leave the secret lying around in freed memory. */
        volatile char *p = url->password;
        while (*p)
            *p++ = 0;
        free(url->password);
    }
    for (size_t i = 0; i < url->nhosts; i++)
        free(url->hosts[i].host);
    free(url->hosts);
    free(url->path);
    for (size_t i = 0; i < url->nopts; i++) {
        free(url->opts[i].key);
        free(url->opts[i].value);
        free(url->opts[i].env_name);
    }
    free(url->opts);
    free(url->redacted);
    free(url);
}

static int mb_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n). `what` names the part for errors. */
static msgbus_err_t mb_decode(const struct mb_url *url, const char *s, size_t n, const char *what,
                              char **out)
{
    char *d = malloc(n + 1), *p = d;
    if (!d)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory parsing URL");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) {
                free(d);
                return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': truncated %%-escape in %s",
                                url->redacted, what);
            }
            int a = mb_hexval(s[i + 1]), b = mb_hexval(s[i + 2]);
            if (a < 0 || b < 0) {
                free(d);
                return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': bad %%-escape in %s",
                                url->redacted, what);
            }
            char c = (char)(a * 16 + b);
            if (c == '\0') {
                free(d);
                return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': %%00 in %s",
                                url->redacted, what);
            }
            *p++ = c;
            i += 2;
        } else {
            *p++ = s[i];
        }
    }
    *p = '\0';
    *out = d;
    return MSGBUS_OK;
}

/* Percent-decodes an option name for the secret check only (a bad escape
 * is kept as it is: the parser refuses it later, quoting the redacted
 * text). */
static bool mb_secret_key(const char *k, size_t n)
{
    char small[256], *buf = n < sizeof small ? small : malloc(n + 1);
    if (!buf)
        return true; /* cannot look: hide it */
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int a, b;
        if (k[i] == '%' && i + 2 < n && (a = mb_hexval(k[i + 1])) >= 0 &&
            (b = mb_hexval(k[i + 2])) >= 0) {
            buf[o++] = (char)(a * 16 + b);
            i += 2;
        } else {
            buf[o++] = k[i];
        }
        if (!buf[o - 1])
            buf[o - 1] = ' '; /* a %00 must not end the name early */
    }
    buf[o] = '\0';
    bool secret = mb_secret_name(buf);
    if (buf != small)
        free(buf);
    return secret;
}

/* Marks what one round of redaction hides, on the text as given: `hide`
 * covers secret bytes, `mark` the places where "***" stands (also for an
 * empty secret). Both readings the parser may take are marked, never one
 * after the other, so one reading cannot break the other's structure:
 *  - the password of a user:password@ after the first "://" (also when the
 *    scheme is bad, so the parser's error quoting it shows none);
 *  - the value of every option whose name says it is a secret. The same
 *    text may reach the parser as a URL or as an option list, so options
 *    are looked for everywhere: split at '&' only, as the parser splits
 *    them, and within one piece every '=' is tried as the end of a name
 *    that starts where the piece starts — which covers a URL's first
 *    option ("kafka://h?sasl.password" says password) and names the parser
 *    reads differently ("a=b://?sasl.password=x"). The price: a URL whose
 *    host or path says secret, token, pass... shows its first option's
 *    value as "***" too. */
static void mb_redact_mark(const char *text, size_t tl, unsigned char *hide, unsigned char *mark)
{
    const char *sep = strstr(text, "://");
    if (sep) {
        size_t auth = (size_t)(sep + 3 - text);
        size_t alen = strcspn(text + auth, "/?");
        const char *at = NULL;
        for (size_t k = 0; k < alen; k++)
            if (text[auth + k] == '@')
                at = text + auth + k;
        const char *colon = at ? memchr(text + auth, ':', (size_t)(at - text - auth)) : NULL;
        if (colon) {
            size_t from = (size_t)(colon + 1 - text), to = (size_t)(at - text);
            mark[from] = 1;
            memset(hide + from, 1, to - from);
        }
    }
    for (size_t i = 0; i < tl;) {
        size_t plen = strcspn(text + i, "&");
        for (size_t k = 0; k < plen; k++)
            if (text[i + k] == '=' && mb_secret_key(text + i, k)) {
                mark[i + k + 1] = 1;
                memset(hide + i + k + 1, 1, plen - k - 1);
                break;
            }
        i += plen + 1;
    }
}

/* One round of redaction: every run of hidden bytes, and every mark, as
 * one "***". */
static char *mb_redact_once(const char *text)
{
    size_t tl = strlen(text);
    unsigned char *hide = calloc(2, tl + 1), *mark = hide ? hide + tl + 1 : NULL;
    /* Each "***" stands for a run or an empty place: at most 3 bytes more
     * per byte of text, and one more for the end. */
    char *r = hide ? malloc(4 * tl + 4) : NULL;
    if (!r) {
        free(hide);
        return NULL;
    }
    mb_redact_mark(text, tl, hide, mark);
    size_t o = 0;
    bool just_hid = false; /* two places side by side read as one "***" */
    for (size_t i = 0; i <= tl;) {
        if (i < tl && hide[i]) {
            if (!just_hid) {
                memcpy(r + o, "***", 3);
                o += 3;
            }
            while (i < tl && hide[i])
                i++;
            just_hid = true;
            continue;
        }
        if (mark[i] && !just_hid) { /* an empty secret */
            memcpy(r + o, "***", 3);
            o += 3;
        }
        just_hid = false;
        if (i == tl)
            break;
        r[o++] = text[i++];
    }
    r[o] = '\0';
    free(hide);
    return r;
}

/* The text with every secret replaced by "***". A round can uncover more
 * (a secret option's value swallowed the '/' that ended the authority, so
 * a later '@' now closes a user:password), so rounds repeat until nothing
 * changes: redacting twice then changes nothing. Each round only replaces
 * text by "***", so a few rounds settle it. */
static char *mb_redact(const char *text)
{
    char *cur = mb_redact_once(text);
    for (int round = 0; cur && round < 16; round++) {
        char *next = mb_redact_once(cur);
        if (!next || strcmp(next, cur) == 0) {
            free(next);
            return cur;
        }
        free(cur);
        cur = next;
    }
    free(cur);
    return NULL;
}

static msgbus_err_t mb_parse_host(struct mb_url *url, const char *s, size_t n)
{
    struct mb_url_host h = {0};
    const char *host = s, *port = NULL;
    size_t hostlen = n, portlen = 0;
    if (n > 0 && s[0] == '[') { /* [v6]:port */
        const char *close = memchr(s, ']', n);
        if (!close)
            return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': '[' without ']' in host",
                            url->redacted);
        host = s + 1;
        hostlen = (size_t)(close - s - 1);
        size_t rest = n - (size_t)(close + 1 - s);
        if (rest > 0) {
            if (close[1] != ':')
                return mb_error(MSGBUS_ERR_CONFIG,
                                "malformed URL '%s': unexpected text after ']' in host",
                                url->redacted);
            port = close + 2;
            portlen = rest - 1;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        if (colon) {
            hostlen = (size_t)(colon - s);
            port = colon + 1;
            portlen = n - hostlen - 1;
        }
    }
    if (hostlen == 0)
        return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': empty host name", url->redacted);
    for (size_t i = 0; i < hostlen; i++) {
        unsigned char c = (unsigned char)host[i];
        if (!(isalnum(c) || c == '.' || c == '-' || c == '_' || c == ':' || c == '%'))
            return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': bad character '%c' in host",
                            url->redacted, c);
    }
    if (port) {
        if (portlen == 0 || portlen > 5)
            return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': bad port '%.*s'",
                            url->redacted, (int)portlen, port);
        long v = 0;
        for (size_t i = 0; i < portlen; i++) {
            if (!isdigit((unsigned char)port[i]))
                return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': bad port '%.*s'",
                                url->redacted, (int)portlen, port);
            v = v * 10 + (port[i] - '0');
        }
        if (v < 1 || v > 65535)
            return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': port %ld out of range 1-65535",
                            url->redacted, v);
        h.port = (int)v;
    }
    msgbus_err_t e = mb_decode(url, host, hostlen, "host", &h.host);
    if (e)
        return e;
    struct mb_url_host *nh = realloc(url->hosts, (url->nhosts + 1) * sizeof *nh);
    if (!nh) {
        free(h.host);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory parsing URL");
    }
    url->hosts = nh;
    url->hosts[url->nhosts++] = h;
    return MSGBUS_OK;
}

static struct mb_url_opt *mb_find_opt(const struct mb_url *url, const char *key)
{
    for (size_t i = 0; i < url->nopts; i++)
        if (strcmp(url->opts[i].key, key) == 0)
            return &url->opts[i];
    return NULL;
}

static msgbus_err_t mb_add_opt(struct mb_url *url, char *key, char *value, char *env_name)
{
    struct mb_url_opt *no = realloc(url->opts, (url->nopts + 1) * sizeof *no);
    if (!no) {
        free(key);
        free(value);
        free(env_name);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory parsing URL");
    }
    url->opts = no;
    url->opts[url->nopts++] = (struct mb_url_opt){
        .key = key, .value = value, .from_env = env_name != NULL, .env_name = env_name};
    return MSGBUS_OK;
}

static msgbus_err_t mb_parse_query(struct mb_url *url, const char *q)
{
    while (*q) {
        size_t n = strcspn(q, "&");
        if (n == 0) {
            q++;
            continue;
        }
        const char *eq = memchr(q, '=', n);
        if (!eq)
            return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': option '%.*s' has no value",
                            url->redacted, (int)n, q);
        if (eq == q)
            return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': option with an empty name",
                            url->redacted);
        char *key = NULL, *value = NULL;
        msgbus_err_t e = mb_decode(url, q, (size_t)(eq - q), "an option name", &key);
        if (e)
            return e;
        e = mb_decode(url, eq + 1, n - (size_t)(eq + 1 - q), "an option value", &value);
        if (e) {
            free(key);
            return e;
        }
        if (mb_find_opt(url, key)) {
            e = mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': option '%s' given twice",
                         url->redacted, key);
            free(key);
            free(value);
            return e;
        }
        if ((e = mb_add_opt(url, key, value, NULL)))
            return e;
        q += n;
    }
    return MSGBUS_OK;
}

static msgbus_err_t mb_url_parse_into(struct mb_url *url, const char *text)
{
    for (const char *p = text; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f)
            return mb_error(MSGBUS_ERR_CONFIG,
                            "malformed URL '%s': contains a space or control character",
                            url->redacted);
    const char *sep = strstr(text, "://");
    if (!sep || sep == text)
        return mb_error(MSGBUS_ERR_CONFIG,
                        "malformed URL '%s': expected scheme://… (for example kafka://host:9092, "
                        "amqp://user:pass@host/vhost or mem://)",
                        url->redacted);
    for (const char *p = text; p < sep; p++) {
        unsigned char c = (unsigned char)*p;
        if (!(isalpha(c) || (p > text && (isdigit(c) || c == '+' || c == '-' || c == '.'))))
            return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': bad character in scheme",
                            url->redacted);
    }
    url->scheme = mb_strndup(text, (size_t)(sep - text));
    if (!url->scheme)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory parsing URL");
    for (char *p = url->scheme; *p; p++)
        *p = (char)tolower((unsigned char)*p);

    if (strchr(text, '#'))
        return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': fragments ('#') are not allowed",
                        url->redacted);

    const char *auth = sep + 3;
    size_t alen = strcspn(auth, "/?");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (auth[i] == '@')
            at = auth + i;
    const char *hosts = auth;
    msgbus_err_t e;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        size_t ulen = colon ? (size_t)(colon - auth) : (size_t)(at - auth);
        if ((e = mb_decode(url, auth, ulen, "the user name", &url->user)))
            return e;
        if (colon && (e = mb_decode(url, colon + 1, (size_t)(at - colon - 1), "the password",
                                    &url->password)))
            return e;
        hosts = at + 1;
    }
    size_t hlen = alen - (size_t)(hosts - auth);
    if (hlen > 0) {
        const char *h = hosts, *end = hosts + hlen;
        while (h <= end) {
            const char *comma = memchr(h, ',', (size_t)(end - h));
            const char *stop = comma ? comma : end;
            if ((e = mb_parse_host(url, h, (size_t)(stop - h))))
                return e;
            if (!comma)
                break;
            h = comma + 1;
        }
    } else if (at) {
        return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': credentials but no host",
                        url->redacted);
    }
    const char *rest = auth + alen;
    if (*rest == '/') {
        url->has_path = true;
        size_t plen = strcspn(rest + 1, "?");
        if ((e = mb_decode(url, rest + 1, plen, "the path", &url->path)))
            return e;
        rest += 1 + plen;
    } else {
        url->path = mb_strdup("");
        if (!url->path)
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory parsing URL");
    }
    if (*rest == '?')
        return mb_parse_query(url, rest + 1);
    return MSGBUS_OK;
}

msgbus_err_t mb_url_parse(const char *text, struct mb_url **out)
{
    if (!text || !*text)
        return mb_error(MSGBUS_ERR_CONFIG, "empty URL");
    struct mb_url *url = calloc(1, sizeof *url);
    if (!url || !(url->redacted = mb_redact(text))) {
        free(url);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory parsing URL");
    }
    msgbus_err_t e = mb_url_parse_into(url, text);
    if (e) {
        mb_url_free(url);
        return e;
    }
    *out = url;
    return MSGBUS_OK;
}

static bool mb_in(const char *key, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(key, *list) == 0)
            return true;
    return false;
}

msgbus_err_t mb_url_add_env(struct mb_url *url, const char *prefix, char sep,
                            const char *const *keep)
{
    char full[64];
    int plen = snprintf(full, sizeof full, "MSGBUS_%s_", prefix);
    for (char **env = environ; env && *env; env++) {
        if (strncmp(*env, full, (size_t)plen) != 0)
            continue;
        const char *name = *env + plen, *eq = strchr(name, '=');
        if (!eq || eq == name)
            continue;
        char *key = mb_strndup(name, (size_t)(eq - name));
        char *env_name = mb_strndup(*env, (size_t)(eq - *env));
        char *value = mb_strdup(eq + 1);
        if (!key || !env_name || !value) {
            free(key);
            free(env_name);
            free(value);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory reading %s*", full);
        }
        for (char *p = key; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        if (!mb_in(key, keep))
            for (char *p = key; *p; p++)
                if (*p == '_')
                    *p = sep;
        if (mb_find_opt(url, key)) { /* the URL wins */
            free(key);
            free(env_name);
            free(value);
            continue;
        }
        msgbus_err_t e = mb_add_opt(url, key, value, env_name);
        if (e)
            return e;
    }
    return MSGBUS_OK;
}

const char *mb_url_opt(const struct mb_url *url, const char *key)
{
    struct mb_url_opt *o = mb_find_opt(url, key);
    if (!o)
        return NULL;
    o->used = true;
    return o->value;
}

void mb_url_opt_origin(const struct mb_url *url, const char *key, char *buf, size_t n)
{
    struct mb_url_opt *o = mb_find_opt(url, key);
    if (o && o->from_env)
        snprintf(buf, n, "%s", o->env_name);
    else
        snprintf(buf, n, "option '%s'", key);
}

msgbus_err_t mb_url_parse_options(const char *text, struct mb_url **out)
{
    struct mb_url *url = calloc(1, sizeof *url);
    if (!url || !(url->redacted = mb_redact(text ? text : "")) || !(url->scheme = mb_strdup(""))) {
        mb_url_free(url);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory parsing options");
    }
    msgbus_err_t e = mb_parse_query(url, text ? text : "");
    if (e) {
        mb_url_free(url);
        return e;
    }
    *out = url;
    return MSGBUS_OK;
}

msgbus_err_t mb_url_opt_double(const struct mb_url *url, const char *key, double def, double min,
                               double max, double *out)
{
    const char *v = mb_url_opt(url, key);
    if (!v) {
        *out = def;
        return MSGBUS_OK;
    }
    char origin[128], *end;
    mb_url_opt_origin(url, key, origin, sizeof origin);
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || x != x)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: '%s' is not a number", origin, v);
    if (x < min || x > max)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: %g is out of range %g..%g", origin, x, min, max);
    *out = x;
    return MSGBUS_OK;
}

msgbus_err_t mb_url_opt_int(const struct mb_url *url, const char *key, long def, long min,
                            long max, long *out)
{
    const char *v = mb_url_opt(url, key);
    if (!v) {
        *out = def;
        return MSGBUS_OK;
    }
    char origin[128], *end;
    mb_url_opt_origin(url, key, origin, sizeof origin);
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: '%s' is not an integer", origin, v);
    if (x < min || x > max)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: %ld is out of range %ld..%ld", origin, x, min, max);
    *out = x;
    return MSGBUS_OK;
}

msgbus_err_t mb_url_opt_bool(const struct mb_url *url, const char *key, bool def, bool *out)
{
    const char *v = mb_url_opt(url, key);
    if (!v) {
        *out = def;
        return MSGBUS_OK;
    }
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
        *out = true;
    else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no") ||
             !strcasecmp(v, "off"))
        *out = false;
    else {
        char origin[128];
        mb_url_opt_origin(url, key, origin, sizeof origin);
        return mb_error(MSGBUS_ERR_CONFIG, "%s: '%s' is not a boolean (true/false)", origin, v);
    }
    return MSGBUS_OK;
}

size_t mb_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 64;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t sub = prev + (a[i - 1] != b[j - 1]);
            size_t del = row[j] + 1, ins = row[j - 1] + 1;
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
            prev = cur;
        }
    }
    return row[lb];
}

const char *mb_url_suggest(const char *key, const char *const *const *lists, size_t nlists)
{
    const char *best = NULL;
    size_t bestd = 3; /* suggest only close matches */
    for (size_t l = 0; l < nlists; l++)
        for (const char *const *k = lists[l]; k && *k; k++) {
            size_t d = mb_edit_distance(key, *k);
            if (d < bestd) {
                bestd = d;
                best = *k;
            }
        }
    return best;
}

msgbus_err_t mb_url_check_unused(const struct mb_url *url, const char *const *known)
{
    for (size_t i = 0; i < url->nopts; i++) {
        const struct mb_url_opt *o = &url->opts[i];
        if (o->used)
            continue;
        const char *best = mb_url_suggest(o->key, &known, 1);
        char where[160];
        if (o->from_env)
            snprintf(where, sizeof where, "unknown option '%s' (from %s)", o->key, o->env_name);
        else
            snprintf(where, sizeof where, "unknown option '%s' in URL '%s'", o->key,
                     url->redacted);
        if (best)
            return mb_error(MSGBUS_ERR_CONFIG, "%s; did you mean '%s'?", where, best);
        return mb_error(MSGBUS_ERR_CONFIG, "%s", where);
    }
    return MSGBUS_OK;
}

MSGBUS_API size_t msgbus_redact(const char *text, char *buf, size_t size)
{
    char *r = text ? mb_redact(text) : NULL;
    const char *out = r ? r : text ? "***" : ""; /* no memory: say nothing */
    size_t n = strlen(out);
    if (buf && size) {
        size_t k = n < size - 1 ? n : size - 1;
        memcpy(buf, out, k);
        buf[k] = '\0';
    }
    free(r);
    return n;
}

MSGBUS_API int msgbus_secret_name(const char *name)
{
    return mb_secret_name(name);
}
