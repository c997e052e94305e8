/*
 * cloudevents.c — every msgbus message is a CloudEvent on the wire
 * (docs/interop.md). The core owns what is the same on every backend: the
 * message's own type/source/subject, the attribute values a publish
 * writes (mb_ce_attrs), the structured JSON form both ways, and the trust
 * boundary for attributes that arrive (mb_msg_received_ce). Backends only
 * map names and value types onto their binding (Kafka ce_ headers, AMQP
 * cloudEvents_ application headers).
 */
#include <ctype.h>
#include <errno.h> /* program_invocation_short_name (_GNU_SOURCE) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/bus.h"
#include "core/msg.h"

/* ---------------------------------------------------------------- rules */

/* 1..MSGBUS_MAX_CE_ATTR bytes of UTF-8 without control characters. */
static bool mb_ce_valid(const unsigned char *s, size_t n)
{
    if (n == 0 || n > MSGBUS_MAX_CE_ATTR)
        return false;
    for (size_t i = mb_ascii_span(s, n, 0x20); i < n;) {
        unsigned char c = s[i];
        size_t len;
        if (c < 0x20 || c == 0x7f)
            return false;
        if (c < 0x80)
            len = 1;
        else if ((c & 0xe0) == 0xc0 && c >= 0xc2)
            len = 2;
        else if ((c & 0xf0) == 0xe0)
            len = 3;
        else if ((c & 0xf8) == 0xf0 && c <= 0xf4)
            len = 4;
        else
            return false;
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        if (len == 3) { /* no overlongs, no surrogates */
            unsigned cp = ((c & 0x0fu) << 12) | ((s[i + 1] & 0x3fu) << 6) | (s[i + 2] & 0x3fu);
            if (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))
                return false;
        } else if (len == 4) {
            unsigned cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3fu) << 12);
            if (cp < 0x10000 || cp > 0x10ffff)
                return false;
        } else if (len == 2 && c == 0xc2 && s[i + 1] < 0xa0) {
            return false; /* C1 controls U+0080..U+009F */
        }
        i += len;
    }
    return true;
}

msgbus_err_t mb_ce_check(const char *what, const char *v)
{
    size_t n = strlen(v);
    if (mb_ce_valid((const unsigned char *)v, n))
        return MSGBUS_OK;
    /* Shown with its control bytes as '?': the error is one line. */
    char shown[65];
    size_t k = 0;
    for (; k < 64 && v[k]; k++)
        shown[k] = (unsigned char)v[k] < 0x20 || v[k] == 0x7f ? '?' : v[k];
    shown[k] = '\0';
    return mb_error(MSGBUS_ERR_INVALID,
                    "invalid CloudEvents %s '%s'%s (%zu bytes): use 1..%d bytes of UTF-8 "
                    "without control characters",
                    what, shown, n > 64 ? "…" : "", n, MSGBUS_MAX_CE_ATTR);
}

static char **mb_ce_field(msgbus_msg_t *m, int i)
{
    return i == 0 ? &m->ce_type : i == 1 ? &m->ce_source : &m->ce_subject;
}

/* Replaces attribute i (0 type, 1 source, 2 subject) with `v`, a malloc'd
 * string or NULL, freeing the old one unless it lives in a backend's block. */
static void mb_ce_put(msgbus_msg_t *m, int i, char *v)
{
    char **f = mb_ce_field(m, i);
    if (!(m->ce_inline & (1u << i)))
        free(*f);
    m->ce_inline &= (unsigned char)~(1u << i);
    *f = v;
}

static msgbus_err_t mb_ce_set(msgbus_msg_t *m, int i, const char *what, const char *v)
{
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_msg_set_%s: message is NULL", what);
    char *copy = NULL;
    if (v) {
        size_t n = strlen(v);
        msgbus_err_t e = mb_ce_check(what, v);
        if (e != MSGBUS_OK)
            return e;
        if (!(copy = mb_memdup(v, n + 1)))
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory for a CloudEvents %s", what);
    }
    mb_ce_put(m, i, copy);
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_msg_set_type(msgbus_msg_t *m, const char *type)
{
    return mb_ce_set(m, 0, "type", type);
}

MSGBUS_API msgbus_err_t msgbus_msg_set_source(msgbus_msg_t *m, const char *source)
{
    return mb_ce_set(m, 1, "source", source);
}

MSGBUS_API msgbus_err_t msgbus_msg_set_subject(msgbus_msg_t *m, const char *subject)
{
    return mb_ce_set(m, 2, "subject", subject);
}

MSGBUS_API const char *msgbus_msg_type(const msgbus_msg_t *m)
{
    return m ? m->ce_type : NULL;
}

MSGBUS_API const char *msgbus_msg_source(const msgbus_msg_t *m)
{
    return m ? m->ce_source : NULL;
}

MSGBUS_API const char *msgbus_msg_subject(const msgbus_msg_t *m)
{
    return m ? m->ce_subject : NULL;
}

/* The context attributes msgbus writes itself (per binding prefix):
 * headers of these names are refused from applications. */
static const char *const mb_ce_core[] = {"id",      "specversion", "type", "source",
                                         "subject", "time",        "datacontenttype", NULL};

bool mb_ce_core_attr(const char *name, size_t n)
{
    for (size_t i = 0; mb_ce_core[i]; i++)
        if (strlen(mb_ce_core[i]) == n && strncasecmp(mb_ce_core[i], name, n) == 0)
            return true;
    return false;
}

bool mb_ce_reserved_header(const char *name)
{
    static const char *const prefixes[] = {"ce_", "ce-", "cloudEvents_", "cloudEvents:", NULL};
    for (size_t i = 0; prefixes[i]; i++) {
        size_t p = strlen(prefixes[i]);
        if (strncasecmp(name, prefixes[i], p) == 0 && mb_ce_core_attr(name + p, strlen(name + p)))
            return true;
    }
    return false;
}

void mb_ce_free(msgbus_msg_t *m)
{
    for (int i = 0; i < 3; i++)
        mb_ce_put(m, i, NULL);
}

bool mb_ce_copy(msgbus_msg_t *dst, const msgbus_msg_t *src)
{
    char **d[3] = {&dst->ce_type, &dst->ce_source, &dst->ce_subject};
    char *const s[3] = {src->ce_type, src->ce_source, src->ce_subject};
    for (int i = 0; i < 3; i++)
        if (s[i] && !(*d[i] = mb_memdup(s[i], strlen(s[i]) + 1)))
            return false;
    return true;
}

/* ------------------------------------------------------------- bus options */

msgbus_err_t mb_ce_conf_read(msgbus_t *bus, struct mb_url *url)
{
    const char *mode = mb_url_opt(url, "cloudevents");
    if (!mode || strcmp(mode, "binary") == 0)
        bus->ce_mode = MB_CE_BINARY;
    else if (strcmp(mode, "structured") == 0)
        bus->ce_mode = MB_CE_STRUCTURED;
    else if (strcmp(mode, "off") == 0)
        bus->ce_mode = MB_CE_OFF;
    else
        return mb_error(MSGBUS_ERR_CONFIG,
                        "option 'cloudevents': '%.64s' is not binary, structured or off", mode);
    const char *src = mb_url_opt(url, "ce_source");
    char dflt[512];
    if (!src) {
        /* A URI reference naming this program on this host, e.g.
         * //db-7/billing: where the event happened, as CloudEvents asks. */
        char host[256] = "localhost";
        if (gethostname(host, sizeof host) != 0 || !host[0])
            snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = '\0';
        const char *prog = program_invocation_short_name && *program_invocation_short_name
                               ? program_invocation_short_name
                               : "msgbus";
        snprintf(dflt, sizeof dflt, "//%s/%s", host, prog);
        for (char *p = dflt; *p; p++)
            if ((unsigned char)*p < 0x21 || *p == 0x7f)
                *p = '_';
        src = dflt;
    } else if (!mb_ce_valid((const unsigned char *)src, strlen(src))) {
        return mb_error(MSGBUS_ERR_CONFIG,
                        "option 'ce_source': '%.64s' is not a CloudEvents source (1..%d bytes of "
                        "UTF-8 without control characters, e.g. //host/service)",
                        src, MSGBUS_MAX_CE_ATTR);
    }
    if (!(bus->ce_source = mb_strdup(src)))
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    return MSGBUS_OK;
}

enum mb_ce_mode mb_bus_ce_mode(const msgbus_t *bus)
{
    return bus->ce_mode;
}

/* ------------------------------------------------------------- publishing */

void mb_ce_attrs(const msgbus_t *bus, const char *topic, const msgbus_msg_t *m,
                 struct mb_ce_attrs *out)
{
    out->id = m->id;
    out->source = m->ce_source ? m->ce_source : bus->ce_source;
    out->type = m->ce_type ? m->ce_type : topic;
    out->subject = m->ce_subject;
    /* RFC 3339 has four-digit years: a later timestamp has no time. */
    if (m->timestamp <= MB_CE_MAX_TIME_MS)
        mb_rfc3339_format(m->timestamp >= 0 ? m->timestamp : 0, out->time);
    else
        out->time[0] = '\0';
    out->datacontenttype = msgbus_msg_header(m, "content-type");
}

bool mb_ce_extension_header(const char *name, const char **attr)
{
    if (strncmp(name, "ce_", 3) != 0 || !name[3])
        return false;
    for (const char *p = name + 3; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
            return false;
    if (mb_ce_core_attr(name + 3, strlen(name + 3)))
        return false;
    *attr = name + 3;
    return true;
}

/* JSON data types by content type: application/json, text/json and any
 * +json suffix (RFC 6839), parameters ignored. */
static bool mb_json_type(const char *ct)
{
    if (!ct)
        return false;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    return (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
           (n == 9 && strncasecmp(ct, "text/json", 9) == 0) ||
           (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0);
}

static bool mb_utf8(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 && c >= 0xc2 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                   : (c & 0xf8) == 0xf0 && c <= 0xf4            ? 4
                                                                                : 0;
        if (!len || i + len > n || (c == 0 && len == 1))
            return false;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

static const char mb_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *mb_base64(const unsigned char *p, size_t n)
{
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        *o++ = mb_b64[v >> 18 & 63];
        *o++ = mb_b64[v >> 12 & 63];
        *o++ = i + 1 < n ? mb_b64[v >> 6 & 63] : '=';
        *o++ = i + 2 < n ? mb_b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Decodes standard base64 (padding optional, no whitespace); false when
 * malformed. */
static bool mb_unbase64(const char *s, size_t n, unsigned char **out, size_t *len)
{
    while (n && s[n - 1] == '=')
        n--;
    if (n % 4 == 1)
        return false;
    unsigned char *buf = malloc(n / 4 * 3 + 3), *o = buf;
    if (!buf)
        return false;
    uint32_t v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = s[i] ? strchr(mb_b64, s[i]) : NULL;
        if (!c) {
            free(buf);
            return false;
        }
        v = v << 6 | (uint32_t)(c - mb_b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(v >> bits & 0xff);
        }
    }
    *out = buf;
    *len = (size_t)(o - buf);
    return true;
}

msgbus_err_t mb_ce_structured(const msgbus_t *bus, const char *topic, const msgbus_msg_t *m,
                              char **json, size_t *len)
{
    struct mb_ce_attrs a;
    mb_ce_attrs(bus, topic, m, &a);
    json_t *o = json_object();
    json_object_set_new(o, "specversion", json_string("1.0"));
    if (a.id)
        json_object_set_new(o, "id", json_string(a.id));
    json_object_set_new(o, "source", json_string(a.source));
    json_object_set_new(o, "type", json_string(a.type));
    if (a.time[0])
        json_object_set_new(o, "time", json_string(a.time));
    if (a.subject)
        json_object_set_new(o, "subject", json_string(a.subject));
    if (a.datacontenttype)
        json_object_set_new(o, "datacontenttype", json_string(a.datacontenttype));
    for (size_t i = 0; i < m->nheaders; i++) {
        const char *attr;
        if (mb_ce_extension_header(m->headers[i].name, &attr))
            json_object_set_new(o, attr, json_string(m->headers[i].value));
    }
    json_t *data = NULL;
    if (m->len && mb_json_type(a.datacontenttype))
        data = json_loadb((const char *)m->payload, m->len, JSON_DECODE_ANY, NULL);
    if (data) {
        json_object_set_new(o, "data", data);
    } else if (mb_utf8(m->payload, m->len) && !mb_json_type(a.datacontenttype)) {
        json_object_set_new(o, "data", json_stringn((const char *)m->payload, m->len));
    } else {
        char *b = mb_base64(m->payload, m->len);
        if (!b) {
            json_decref(o);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory encoding a CloudEvent");
        }
        json_object_set_new(o, "data_base64", json_string(b));
        free(b);
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory encoding a CloudEvent");
    *json = text;
    *len = strlen(text);
    return MSGBUS_OK;
}

/* -------------------------------------------------------------- receiving */

static msgbus_err_t mb_ce_as_header(msgbus_msg_t *m, const char *name, size_t n, const void *v,
                                    size_t vn)
{
    char hname[MSGBUS_MAX_HEADER_NAME + 1];
    if (n + 3 > MSGBUS_MAX_HEADER_NAME)
        return mb_msg_received_header(m, NULL, 0, v, vn); /* counted as invalid */
    memcpy(hname, "ce_", 3);
    for (size_t i = 0; i < n; i++)
        hname[3 + i] = (char)tolower((unsigned char)name[i]);
    return mb_msg_received_header(m, hname, n + 3, v, vn);
}

static bool mb_is_folded(const char *name, size_t n, const char *what)
{
    /* ASCII case folding by hand: `what` is lower case, n bytes long. */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if ((c >= 'A' && c <= 'Z' ? c + 32 : c) != (unsigned char)what[i])
            return false;
    }
    return true;
}

/* Whether name (n bytes, n == strlen(lit)) is the lower-case literal `lit`
 * in any case. A name as the bindings write it (lower case) is settled by
 * a memcmp of constant size, which the compiler turns into a load and a
 * compare or two; this runs for every attribute of every received event
 * (a byte-at-a-time fold cost ~430 instructions per Kafka event). */
#define MB_IS(name, n, lit) \
    (memcmp((name), (lit), sizeof(lit) - 1) == 0 || mb_is_folded((name), (n), (lit)))

enum mb_ce_attr { MB_CE_ID, MB_CE_TYPE, MB_CE_SOURCE, MB_CE_SUBJECT, MB_CE_TIME,
                  MB_CE_SPECVERSION, MB_CE_DATACONTENTTYPE, MB_CE_OTHER };

/* Which context attribute a name is (any case): by its length first, as
 * this runs for every attribute of every received event. */
static enum mb_ce_attr mb_ce_which(const char *name, size_t n)
{
    switch (n) {
    case 2:
        return MB_IS(name, n, "id") ? MB_CE_ID : MB_CE_OTHER;
    case 4:
        return MB_IS(name, n, "type") ? MB_CE_TYPE
               : MB_IS(name, n, "time") ? MB_CE_TIME
                                        : MB_CE_OTHER;
    case 6:
        return MB_IS(name, n, "source") ? MB_CE_SOURCE : MB_CE_OTHER;
    case 7:
        return MB_IS(name, n, "subject") ? MB_CE_SUBJECT : MB_CE_OTHER;
    case 11:
        return MB_IS(name, n, "specversion") ? MB_CE_SPECVERSION : MB_CE_OTHER;
    case 15:
        return MB_IS(name, n, "datacontenttype") ? MB_CE_DATACONTENTTYPE : MB_CE_OTHER;
    default:
        return MB_CE_OTHER;
    }
}

msgbus_err_t mb_msg_received_ce(msgbus_msg_t *m, const char *name, size_t n, const void *value,
                                size_t vn)
{
    if (!value)
        vn = 0;
    enum mb_ce_attr which = mb_ce_which(name, n);
    if (which == MB_CE_ID)
        return mb_msg_received_id(m, value, vn);
    int field = which == MB_CE_TYPE      ? 0
                : which == MB_CE_SOURCE  ? 1
                : which == MB_CE_SUBJECT ? 2
                                         : -1;
    if (field >= 0) {
        if (!mb_ce_valid(value, vn))
            return mb_ce_as_header(m, name, n, value, vn);
        /* In the backend's block when it left room, else a malloc. */
        bool spare = m->ce_spare_len > vn;
        char *copy = spare ? m->ce_spare : malloc(vn + 1);
        if (!copy)
            return MSGBUS_ERR_NOMEM;
        memcpy(copy, value, vn);
        copy[vn] = '\0';
        mb_ce_put(m, field, copy);
        if (spare) {
            m->ce_inline |= (unsigned char)(1u << field);
            m->ce_spare += vn + 1;
            m->ce_spare_len -= vn + 1;
        }
        return MSGBUS_OK;
    }
    if (which == MB_CE_TIME) {
        char buf[64];
        int64_t ms;
        if (vn > 0 && vn < sizeof buf && !memchr(value, '\0', vn)) {
            memcpy(buf, value, vn);
            buf[vn] = '\0';
            if (mb_rfc3339_parse(buf, &ms) && ms >= 0) {
                m->timestamp = ms;
                return MSGBUS_OK;
            }
        }
        return mb_ce_as_header(m, name, n, value, vn);
    }
    if (which == MB_CE_SPECVERSION && vn == 3 && memcmp(value, "1.0", 3) == 0)
        return MSGBUS_OK;
    if (which == MB_CE_DATACONTENTTYPE) {
        if (msgbus_msg_header(m, "content-type"))
            return MSGBUS_OK; /* the binding's own content type says it */
        return mb_msg_received_header(m, "content-type", 12, value, vn);
    }
    return mb_ce_as_header(m, name, n, value, vn);
}

static msgbus_err_t mb_ce_invalid(msgbus_msg_t *m, const char *why)
{
    return mb_msg_put_header(m, MB_H_INVALID_CE, strlen(MB_H_INVALID_CE), why, strlen(why));
}

msgbus_err_t mb_msg_ce_unpack(msgbus_msg_t *m)
{
    const char *ct = msgbus_msg_header(m, "content-type");
    if (!ct)
        return MSGBUS_OK;
    size_t n = strcspn(ct, ";");
    while (n && (ct[n - 1] == ' ' || ct[n - 1] == '\t'))
        n--;
    if (!(n == 28 && strncasecmp(ct, "application/cloudevents+json", 28) == 0))
        return MSGBUS_OK;
    json_error_t je;
    json_t *o = json_loadb((const char *)m->payload, m->len, 0, &je);
    if (!o || !json_is_object(o)) {
        char why[300];
        snprintf(why, sizeof why, "structured CloudEvent is not a JSON object: %s",
                 o ? "another JSON value" : je.text);
        json_decref(o);
        return mb_ce_invalid(m, why);
    }
    static const char *const required[] = {"specversion", "id", "source", "type", NULL};
    for (size_t i = 0; required[i]; i++) {
        if (!json_is_string(json_object_get(o, required[i]))) {
            char why[120];
            snprintf(why, sizeof why, "structured CloudEvent has no string '%s'", required[i]);
            json_decref(o);
            return mb_ce_invalid(m, why);
        }
    }
    json_t *data = json_object_get(o, "data"), *b64 = json_object_get(o, "data_base64");
    if (data && b64) {
        json_decref(o);
        return mb_ce_invalid(m, "structured CloudEvent has both 'data' and 'data_base64'");
    }
    unsigned char *payload = NULL;
    size_t plen = 0;
    if (b64) {
        if (!json_is_string(b64) ||
            !mb_unbase64(json_string_value(b64), json_string_length(b64), &payload, &plen)) {
            json_decref(o);
            return mb_ce_invalid(m, "structured CloudEvent's 'data_base64' is not base64");
        }
    } else if (data && json_is_string(data) &&
               !mb_json_type(json_string_value(json_object_get(o, "datacontenttype")))) {
        /* Text data of a non-JSON content type is the text itself. */
        plen = json_string_length(data);
        payload = malloc(plen + 1);
        if (payload)
            memcpy(payload, json_string_value(data), plen);
    } else if (data && !json_is_null(data)) {
        char *t = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
        payload = (unsigned char *)t;
        plen = t ? strlen(t) : 0;
    } else {
        payload = malloc(1);
    }
    if (!payload) {
        json_decref(o);
        return MSGBUS_ERR_NOMEM;
    }
    /* The envelope's content type goes: the data's own (if any) comes from
     * datacontenttype below. */
    msgbus_msg_del_header(m, "content-type");
    msgbus_err_t e = MSGBUS_OK;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        if (e || strcmp(key, "data") == 0 || strcmp(key, "data_base64") == 0)
            continue;
        if (json_is_string(v)) {
            e = mb_msg_received_ce(m, key, strlen(key), json_string_value(v),
                                   json_string_length(v));
        } else if (!json_is_null(v)) { /* an extension as a number or boolean */
            char *t = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
            e = t ? mb_msg_received_ce(m, key, strlen(key), t, strlen(t)) : MSGBUS_ERR_NOMEM;
            free(t);
        }
    }
    json_decref(o);
    if (e) {
        free(payload);
        return e;
    }
    mb_msg_take_payload(m, payload, plen);
    return MSGBUS_OK;
}
