/*
 * caps.c — start positions, group reset, inspection and capabilities: the
 * core half of each (argument checks, parsing, the refusals a capability
 * implies, JSON), the backend half behind ops version 3 (backend.h).
 *
 * Capabilities are asked of the backend once, right after open, and kept:
 * they depend on how the bus is configured (Kafka's idempotent producer,
 * mem://'s retain=), never on what the broker is doing, so one answer holds
 * for the bus's life. Every refusal that follows from a missing bit is made
 * here, with the backend's own reason, so a backend never has to repeat it.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/bus.h"

/* In bit order: name, and what a claim promises (docs/semantics.md). */
static const struct {
    const char *name;
    const char *description;
} mb_caps_table[] = {
    {"key_order", "per-key order holds across several members of a group"},
    {"replay", "start=earliest or a time, and msgbus_group_reset to any position"},
    {"durable", "a confirmed message survives a broker restart"},
    {"shared", "other processes reach the same topics"},
    {"positions", "received messages carry a partition and an offset"},
    {"redelivered", "received messages carry the broker's redelivered flag"},
    {"no_duplicate_publish", "the broker drops duplicates of a publish retried after a lost "
                             "confirm"},
    {"list", "msgbus_inspect_json lists every topic and group"},
    {"delayed", "the broker delivers a message at a later time by itself"},
    {"lag", "stats and msgbus_inspect_json report each group's lag"},
};
#define MB_NCAPS (sizeof mb_caps_table / sizeof mb_caps_table[0])
_Static_assert(MSGBUS_CAP_ALL == (1u << MB_NCAPS) - 1, "a capability without a name");

static int mb_cap_index(uint64_t cap)
{
    if (cap == 0 || (cap & (cap - 1)) != 0)
        return -1;
    for (int i = 0; i < (int)MB_NCAPS; i++)
        if (cap == (1ull << i))
            return i;
    return -1;
}

MSGBUS_API const char *msgbus_cap_name(uint64_t cap)
{
    int i = mb_cap_index(cap);
    return i < 0 ? NULL : mb_caps_table[i].name;
}

static const char *mb_why_not(const msgbus_t *bus, int i)
{
    const char *w = bus->caps.why_not[i];
    return w ? w : "the backend does not provide it";
}

void mb_caps_load(msgbus_t *bus)
{
    memset(&bus->caps, 0, sizeof bus->caps);
    if (bus->ops->version >= 3 && bus->ops->capabilities)
        bus->ops->capabilities(bus->be, &bus->caps);
    bus->caps.bits &= MSGBUS_CAP_ALL;
}

bool mb_caps_has(const msgbus_t *bus, uint64_t cap)
{
    return (bus->caps.bits & cap) == cap;
}

msgbus_err_t mb_caps_refuse(const msgbus_t *bus, uint64_t cap, const char *what)
{
    int i = mb_cap_index(cap);
    return mb_error(MSGBUS_ERR_UNSUPPORTED, "%s: %s has no '%s' capability: %s", what,
                    bus->ops->scheme, mb_caps_table[i].name, mb_why_not(bus, i));
}

/* require=key_order,replay: every name must be known, and claimed. */
msgbus_err_t mb_caps_require(const msgbus_t *bus, const char *list)
{
    char missing[1024] = "";
    size_t used = 0;
    int nmissing = 0;
    const char *p = list;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 0) {
            p = end ? end + 1 : p + n;
            continue;
        }
        int found = -1;
        for (int i = 0; i < (int)MB_NCAPS; i++)
            if (strlen(mb_caps_table[i].name) == n && memcmp(mb_caps_table[i].name, p, n) == 0)
                found = i;
        if (found < 0) {
            char names[400] = "";
            size_t k = 0;
            for (size_t i = 0; i < MB_NCAPS; i++)
                k += (size_t)snprintf(names + k, k < sizeof names ? sizeof names - k : 0, "%s%s",
                                      i ? ", " : "", mb_caps_table[i].name);
            return mb_error(MSGBUS_ERR_CONFIG,
                            "option 'require': unknown capability '%.*s' (known: %s)", (int)n, p,
                            names);
        }
        if (!(bus->caps.bits & (1ull << found))) {
            int w = snprintf(missing + used, used < sizeof missing ? sizeof missing - used : 0,
                             "%s'%s' (%s)", nmissing ? "; " : "", mb_caps_table[found].name,
                             mb_why_not(bus, found));
            if (w > 0)
                used += (size_t)w;
            nmissing++;
        }
        p = end ? end + 1 : p + n;
    }
    if (nmissing)
        return mb_error(MSGBUS_ERR_CONFIG, "option 'require': %s lacks %s %s", bus->ops->scheme,
                        nmissing > 1 ? "capabilities" : "capability", missing);
    return MSGBUS_OK;
}

MSGBUS_API uint64_t msgbus_caps(msgbus_t *bus)
{
    return bus ? bus->caps.bits : 0;
}

MSGBUS_API size_t msgbus_max_message_size(msgbus_t *bus)
{
    return bus ? bus->caps.max_message : 0;
}

MSGBUS_API void msgbus_free(void *p)
{
    free(p);
}

MSGBUS_API msgbus_err_t msgbus_caps_json(msgbus_t *bus, char **out)
{
    if (!bus || !out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_caps_json: %s is NULL", !bus ? "bus" : "out");
    json_t *o = json_object(), *arr = json_array();
    json_object_set_new(o, "backend", json_string(bus->ops->scheme));
    json_object_set_new(o, "max_message_size", json_integer((json_int_t)bus->caps.max_message));
    for (size_t i = 0; i < MB_NCAPS; i++) {
        bool yes = bus->caps.bits & (1ull << i);
        json_t *c = json_object();
        json_object_set_new(c, "name", json_string(mb_caps_table[i].name));
        json_object_set_new(c, "supported", json_boolean(yes));
        json_object_set_new(c, "description", json_string(mb_caps_table[i].description));
        if (!yes)
            json_object_set_new(c, "why_not", json_string(mb_why_not(bus, (int)i)));
        json_array_append_new(arr, c);
    }
    json_object_set_new(o, "capabilities", arr);
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_caps_json: out of memory");
    *out = text;
    return MSGBUS_OK;
}

/* ---------------------------------------------------------------- positions */

/* "15m" → ms; units ms, s, m, h, d; a fraction is allowed ("1.5h"). */
static bool mb_parse_duration(const char *s, int64_t *ms)
{
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || !(v == v))
        return false;
    double unit;
    if (strcmp(end, "ms") == 0)
        unit = 1;
    else if (strcmp(end, "s") == 0)
        unit = 1000;
    else if (strcmp(end, "m") == 0)
        unit = 60000;
    else if (strcmp(end, "h") == 0)
        unit = 3600000;
    else if (strcmp(end, "d") == 0)
        unit = 86400000;
    else
        return false;
    double r = v * unit;
    if (r > 1e15) /* ~31 000 years */
        return false;
    *ms = (int64_t)(r + 0.5);
    return true;
}

static int mb_digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (!isdigit((unsigned char)**p))
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

/* RFC 3339: 2026-12-07T08:00:00Z, 2026-12-07T08:00:00.123+01:00 ('t', 'z'
 * and a space for 'T' accepted, as the RFC allows). */
bool mb_rfc3339_parse(const char *s, int64_t *ms)
{
    const char *p = s;
    int Y = mb_digits(&p, 4);
    if (Y < 0 || *p++ != '-')
        return false;
    int M = mb_digits(&p, 2);
    if (M < 1 || M > 12 || *p++ != '-')
        return false;
    int D = mb_digits(&p, 2);
    if (D < 1 || D > 31 || (*p != 'T' && *p != 't' && *p != ' '))
        return false;
    p++;
    int h = mb_digits(&p, 2);
    if (h < 0 || h > 23 || *p++ != ':')
        return false;
    int mi = mb_digits(&p, 2);
    if (mi < 0 || mi > 59 || *p++ != ':')
        return false;
    int se = mb_digits(&p, 2);
    if (se < 0 || se > 60)
        return false;
    int64_t frac = 0;
    if (*p == '.') {
        p++;
        int n = 0;
        int64_t scale = 100;
        while (isdigit((unsigned char)*p)) {
            if (n < 3)
                frac += (*p - '0') * scale;
            scale /= 10;
            n++;
            p++;
        }
        if (n == 0)
            return false;
    }
    int off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1;
        int oh = mb_digits(&p, 2);
        if (oh < 0 || oh > 23 || *p++ != ':')
            return false;
        int om = mb_digits(&p, 2);
        if (om < 0 || om > 59)
            return false;
        off = sign * (oh * 60 + om);
    } else {
        return false;
    }
    if (*p)
        return false;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (D > mdays[M - 1] || (M == 2 && D == 29 && !leap))
        return false;
    /* Days since 1970-01-01 of the proleptic Gregorian date (the
     * days-from-civil arithmetic; timegm took ~500 instructions of every
     * received event's ce_time). A second of 60 runs into the next minute,
     * as timegm has it. */
    int64_t y = M <= 2 ? Y - 1 : Y;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (M > 2 ? M - 3 : M + 9) + 2) / 5 + D - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    int64_t days = era * 146097 + doe - 719468;
    int64_t t = days * 86400 + h * 3600 + mi * 60 + se;
    *ms = (t - (int64_t)off * 60) * 1000 + frac;
    return true;
}

void mb_rfc3339_format(int64_t ms, char out[32])
{
    /* Every publish formats its time (ce_time, cloudEvents_time), and
     * gmtime_r + strftime cost ~120 ns where a whole Kafka publish is
     * ~800: each thread keeps the last second it formatted, and the
     * milliseconds are three digits. */
    static _Thread_local int64_t last_s = -1;
    static _Thread_local char last[20];
    if (ms >= 0) {
        int64_t sec = ms / 1000;
        if (sec != last_s) {
            time_t t = (time_t)sec;
            struct tm tm;
            gmtime_r(&t, &tm);
            last_s = strftime(last, sizeof last, "%Y-%m-%dT%H:%M:%S", &tm) == 19 ? sec : -1;
        }
        if (last_s == sec) {
            int f = (int)(ms % 1000);
            memcpy(out, last, 19);
            out[19] = '.';
            out[20] = (char)('0' + f / 100);
            out[21] = (char)('0' + f / 10 % 10);
            out[22] = (char)('0' + f % 10);
            out[23] = 'Z';
            out[24] = '\0';
            return;
        }
    }
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int)(ms % 1000));
}

msgbus_err_t mb_start_parse(const char *what, const char *text, struct mb_start *out)
{
    struct mb_start s = {0};
    int64_t v;
    if (!text || !*text)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: empty position (use latest, earliest, an RFC "
                        "3339 time or -<duration>)", what);
    if (strcmp(text, "latest") == 0) {
        s.kind = MB_START_LATEST;
    } else if (strcmp(text, "earliest") == 0) {
        s.kind = MB_START_EARLIEST;
    } else if (text[0] == '-') {
        if (!mb_parse_duration(text + 1, &v))
            return mb_error(MSGBUS_ERR_CONFIG,
                            "%s: '%.64s' is not a duration like -15m (units ms, s, m, h, d)", what,
                            text);
        s.kind = MB_START_TIME;
        s.time_ms = mb_now_ms() - v;
    } else if (mb_rfc3339_parse(text, &v)) {
        s.kind = MB_START_TIME;
        s.time_ms = v;
    } else {
        return mb_error(MSGBUS_ERR_CONFIG,
                        "%s: '%.64s' is not a position: use latest, earliest, an RFC 3339 time "
                        "(2026-12-07T08:00:00Z) or -<duration> (-15m)", what, text);
    }
    if (s.kind == MB_START_TIME && s.time_ms < 0)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: '%.64s' is before 1970", what, text);
    *out = s;
    return MSGBUS_OK;
}

const struct mb_start *mb_sub_start(const msgbus_sub_t *sub)
{
    return &sub->start;
}

/* The subscription's start from its option text (NULL: the default),
 * refused when the backend cannot start there. */
msgbus_err_t mb_sub_start_resolve(const msgbus_t *bus, const char *text, struct mb_start *out)
{
    *out = (struct mb_start){0};
    if (!text)
        return MSGBUS_OK;
    msgbus_err_t e = mb_start_parse("option 'start'", text, out);
    if (e)
        return e;
    if ((out->kind == MB_START_EARLIEST || out->kind == MB_START_TIME) &&
        !mb_caps_has(bus, MSGBUS_CAP_REPLAY))
        return mb_caps_refuse(bus, MSGBUS_CAP_REPLAY, "start");
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_group_reset(msgbus_t *bus, const char *topic, const char *group,
                                           const char *position)
{
    if (!bus || !topic || !group || !position)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_group_reset: %s is NULL",
                        !bus ? "bus" : !topic ? "topic" : !group ? "group" : "position");
    msgbus_err_t e;
    if ((e = mb_check_name("topic", topic)) || (e = mb_check_name("group", group)))
        return e;
    struct mb_start to;
    if ((e = mb_start_parse("msgbus_group_reset", position, &to)))
        return mb_error_prefix(MSGBUS_ERR_INVALID, "bad position");
    if (to.kind != MB_START_LATEST && !mb_caps_has(bus, MSGBUS_CAP_REPLAY))
        return mb_caps_refuse(bus, MSGBUS_CAP_REPLAY, "msgbus_group_reset");
    if (atomic_load(&bus->closing))
        return mb_error(MSGBUS_ERR_CLOSED, "msgbus_group_reset: the bus is closing");
    if (bus->ops->version < 3 || !bus->ops->group_reset)
        return mb_error(MSGBUS_ERR_UNSUPPORTED, "msgbus_group_reset: %s cannot move a group",
                        bus->ops->scheme);
    e = bus->ops->group_reset(bus->be, topic, group, &to, 30000);
    if (!e)
        mb_log(MSGBUS_LOG_INFO, "group '%s' on '%s' reset to %s", group, topic, position);
    return e;
}

MSGBUS_API msgbus_err_t msgbus_inspect_json(msgbus_t *bus, const char *topic, const char *group,
                                            int timeout_ms, char **out)
{
    if (!bus || !out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inspect_json: %s is NULL",
                        !bus ? "bus" : "out");
    msgbus_err_t e;
    if ((topic && (e = mb_check_name("topic", topic))) ||
        (group && (e = mb_check_name("group", group))))
        return e;
    if (group && !topic)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inspect_json: a group needs its topic");
    if (!topic && !mb_caps_has(bus, MSGBUS_CAP_LIST))
        return mb_caps_refuse(bus, MSGBUS_CAP_LIST, "msgbus_inspect_json without a topic");
    if (bus->ops->version < 3 || !bus->ops->inspect)
        return mb_error(MSGBUS_ERR_UNSUPPORTED, "msgbus_inspect_json: %s cannot inspect",
                        bus->ops->scheme);
    if (timeout_ms < 0)
        timeout_ms = 30000;
    json_t *o = json_object();
    json_object_set_new(o, "backend", json_string(bus->ops->scheme));
    json_object_set_new(o, "topics", json_array());
    e = bus->ops->inspect(bus->be, topic, group, timeout_ms, o);
    if (e) {
        json_decref(o);
        return e;
    }
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    if (!text)
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_inspect_json: out of memory");
    *out = text;
    return MSGBUS_OK;
}
