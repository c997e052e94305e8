/*
 * conformance_util.h — helpers of the conformance suite (conformance.c):
 * the backend under test and its URLs, a set of message ids, delivery
 * report bookkeeping, and payload parsing. Included by conformance.c only,
 * so everything here is static.
 *
 * Only the public API (msgbus.h) and tests/util/testutil.h are used: the
 * suite must describe what an application sees, whatever the backend.
 */
#ifndef MSGBUS_CONFORMANCE_UTIL_H
#define MSGBUS_CONFORMANCE_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define CF_FIRST_MS 30000 /* wait for a first message */
#define CF_NEXT_MS 10000  /* wait for each further message */

/* The backend under test ("mem", "kafka", "amqp") and the URL every test
 * opens its buses on. Set once by main() before the suite forks. */
static const char *cf_backend;
static char cf_url[1024];

/* Appends `opts` ("a=1&b=2") to a URL that may already have a query. */
static void cf_url_with(char *buf, size_t n, const char *base, const char *opts)
{
    if (!opts || !*opts)
        snprintf(buf, n, "%s", base);
    else
        snprintf(buf, n, "%s%s%s", base, strchr(base, '?') ? "&" : "?", opts);
}

static bool cf_is(const char *name)
{
    return strcmp(cf_backend, name) == 0;
}

/* Opens a bus on the backend under test; ck_asserts. */
static msgbus_t *cf_open(void)
{
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, cf_url, NULL));
    ck_assert_ptr_nonnull(bus);
    return bus;
}

/* A fresh topic / group name for this run ("cf-<what>-<pid>-<n>-<rand>"),
 * so runs, tests and backends never see each other's messages. */
static void cf_name(char *buf, size_t n, const char *what)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "cf-%s", what);
    tu_unique(buf, n, prefix);
}

/* ------------------------------------------------------------ id sets */

/* A set of message ids (open addressing; capacity fixed at creation). */
struct cf_ids {
    char **slot;
    size_t cap;
    size_t n;
};

static void cf_ids_init(struct cf_ids *s, size_t expected)
{
    s->cap = 64;
    while (s->cap < expected * 2 + 16)
        s->cap *= 2;
    s->slot = calloc(s->cap, sizeof *s->slot);
    ck_assert_ptr_nonnull(s->slot);
    s->n = 0;
}

static void cf_ids_free(struct cf_ids *s)
{
    for (size_t i = 0; i < s->cap; i++)
        free(s->slot[i]);
    free(s->slot);
    s->slot = NULL;
    s->cap = s->n = 0;
}

static size_t cf_ids_find(const struct cf_ids *s, const char *id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    size_t i = (size_t)(h & (s->cap - 1));
    while (s->slot[i] && strcmp(s->slot[i], id) != 0)
        i = (i + 1) & (s->cap - 1);
    return i;
}

static bool cf_ids_has(const struct cf_ids *s, const char *id)
{
    return id && s->slot[cf_ids_find(s, id)] != NULL;
}

/* Adds `id`; false when it was already there. */
static bool cf_ids_add(struct cf_ids *s, const char *id)
{
    ck_assert_msg(id != NULL, "a message has no id");
    size_t i = cf_ids_find(s, id);
    if (s->slot[i])
        return false;
    ck_assert_msg(s->n + 1 < s->cap / 2, "id set full (test bug)");
    s->slot[i] = strdup(id);
    ck_assert_ptr_nonnull(s->slot[i]);
    s->n++;
    return true;
}

/* ---------------------------------------------------- delivery reports */

/* What the delivery callbacks of one test saw. */
struct cf_reports {
    int calls;
    int ok;
    int failed;
    int bad_topic;          /* reports whose topic was not `topic` */
    int bad_error_text;     /* OK with non-empty error, or failure without text */
    const char *topic;      /* the topic every report should name */
    struct cf_ids ids;      /* ids the reports carried */
    msgbus_err_t last_status;
    char last_error[512];
};

static void cf_reports_init(struct cf_reports *r, const char *topic, size_t expected)
{
    memset(r, 0, sizeof *r);
    r->topic = topic;
    cf_ids_init(&r->ids, expected);
}

static void cf_on_report(void *opaque, const msgbus_report_t *rep)
{
    struct cf_reports *r = opaque;
    r->calls++;
    if (!rep->topic || strcmp(rep->topic, r->topic) != 0)
        r->bad_topic++;
    if (rep->msg_id)
        cf_ids_add(&r->ids, rep->msg_id);
    r->last_status = rep->status;
    snprintf(r->last_error, sizeof r->last_error, "%s", rep->error ? rep->error : "(NULL)");
    if (rep->status == MSGBUS_OK) {
        r->ok++;
        if (!rep->error || rep->error[0])
            r->bad_error_text++;
    } else {
        r->failed++;
        if (!rep->error || !rep->error[0])
            r->bad_error_text++;
    }
}

/* Publishes a message (payload of `len` bytes, optional string key) and
 * returns a copy of its id (the caller frees it). `rep` may be NULL. */
static char *cf_publish(msgbus_t *bus, const char *topic, const char *key, const void *payload,
                        size_t len, struct cf_reports *rep)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, len));
    if (key)
        tu_ck_ok(msgbus_msg_set_key(m, key, strlen(key)));
    char *id = strdup(msgbus_msg_id(m));
    ck_assert_ptr_nonnull(id);
    tu_ck_ok(msgbus_publish(bus, topic, m, rep ? cf_on_report : NULL, rep));
    msgbus_msg_free(m);
    return id;
}

/* Publishes the string `payload`; returns nothing. */
static void cf_publish_str(msgbus_t *bus, const char *topic, const char *key, const char *payload)
{
    free(cf_publish(bus, topic, key, payload, strlen(payload), NULL));
}

/* Publishes "n=<i>" for i in [from, to), keyless or with key "k<i>". */
static void cf_publish_numbered(msgbus_t *bus, const char *topic, int from, int to, bool keyed)
{
    for (int i = from; i < to; i++) {
        char payload[32], key[32];
        snprintf(payload, sizeof payload, "n=%d", i);
        snprintf(key, sizeof key, "k%d", i);
        cf_publish_str(bus, topic, keyed ? key : NULL, payload);
    }
}

/* The number in a "n=<i>" payload; -1 when the payload is not one. */
static int cf_payload_number(const msgbus_msg_t *m)
{
    size_t len = 0;
    const char *p = msgbus_msg_payload(m, &len);
    char buf[32];
    if (len < 3 || len >= sizeof buf || memcmp(p, "n=", 2) != 0)
        return -1;
    memcpy(buf, p, len);
    buf[len] = '\0';
    return atoi(buf + 2);
}

/* True when the payload equals the string `s`. */
static bool cf_payload_is(const msgbus_msg_t *m, const char *s)
{
    size_t len = 0;
    const void *p = msgbus_msg_payload(m, &len);
    return len == strlen(s) && memcmp(p, s, len) == 0;
}

/* Receives exactly one message within CF_FIRST_MS; ck_asserts. */
static msgbus_msg_t *cf_receive_one(msgbus_sub_t *sub)
{
    msgbus_msg_t *m = tu_receive(sub, CF_FIRST_MS);
    ck_assert_msg(m != NULL, "no message within %d ms", CF_FIRST_MS);
    return m;
}

/* Flushes with a generous bound for real brokers; ck_asserts MSGBUS_OK. */
static void cf_flush_ok(msgbus_t *bus)
{
    size_t failed = 0;
    msgbus_err_t e = msgbus_flush(bus, 30000, &failed);
    ck_assert_msg(e == MSGBUS_OK, "flush: %s, %zu failed (%s)", msgbus_err_name(e), failed,
                  msgbus_last_error());
}

#endif
