/*
 * test_amqp_codec.c — the AMQP codec as a CloudEvents binding, without a
 * broker (issue 21; docs/amqp.md "CloudEvents"): what each mode of
 * cloudevents= writes (header names, every value a string), and what the
 * decoder makes of each prefix, of time as an AMQP timestamp or an integer,
 * of msgbus's older integer headers, of foreign basic properties, and of a
 * structured body that is not a CloudEvent.
 *
 * A mem:// bus supplies the bus's side of mb_ce_attrs / mb_ce_structured
 * (its ce_source); the codec is called directly, as the backend calls it.
 */
#include <amqp.h>
#include <stdlib.h>
#include <string.h>

#include "backends/amqp.h"
#include "testutil.h"

#define SOURCE "//test-host/amqp-codec"
#define TS 1700000000123LL
#define TS_TEXT "2023-11-14T22:13:20.123Z"

static msgbus_t *bus_in(const char *mode)
{
    char url[200];
    snprintf(url, sizeof url, "mem://amqp-codec-%s?cloudevents=%s&ce_source=" SOURCE, mode, mode);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static msgbus_msg_t *event(void)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "{\"total\":42}", 12));
    tu_ck_ok(msgbus_msg_set_id(m, "evt-1"));
    tu_ck_ok(msgbus_msg_set_key(m, "k-1", 3));
    tu_ck_ok(msgbus_msg_set_subject(m, "order/17"));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "ce_tenant", "acme"));
    tu_ck_ok(msgbus_msg_set_header(m, "trace", "abc"));
    tu_ck_ok(msgbus_msg_set_timestamp(m, TS));
    return m;
}

/* Builds `m` published to "orders" as the backend's publish does. */
static struct mb_amqp_out *encode(msgbus_t *bus, const msgbus_msg_t *m)
{
    struct mb_amqp_ce ce = {.mode = mb_bus_ce_mode(bus)};
    struct mb_ce_attrs a;
    char *json = NULL;
    if (ce.mode == MB_CE_BINARY) {
        mb_ce_attrs(bus, "orders", m, &a);
        ce.attrs = &a;
    } else if (ce.mode == MB_CE_STRUCTURED) {
        tu_ck_ok(mb_ce_structured(bus, "orders", m, &json, &ce.json_len));
        ce.json = json;
    }
    struct mb_amqp_out *o = NULL;
    tu_ck_ok(mb_amqp_out_build(&o, "orders", NULL, 0, m, 1, false, 131072, &ce));
    free(json);
    return o;
}

/* The value of header `name` in a built message (NULL: absent); every
 * entry of every built message must be a string (kind S). */
static const amqp_field_value_t *entry(const struct mb_amqp_out *o, const char *name)
{
    const amqp_field_value_t *v = NULL;
    int n = 0;
    for (int i = 0; i < o->props.headers.num_entries; i++) {
        const amqp_table_entry_t *e = &o->props.headers.entries[i];
        ck_assert_msg(e->value.kind == AMQP_FIELD_KIND_UTF8, "header '%.*s' is of kind '%c'",
                      (int)e->key.len, (const char *)e->key.bytes, e->value.kind);
        if (e->key.len == strlen(name) && memcmp(e->key.bytes, name, e->key.len) == 0) {
            v = &e->value;
            n++;
        }
    }
    ck_assert_msg(n <= 1, "header '%s' written %d times", name, n);
    return v;
}

#define ck_entry(o, name, want)                                                                \
    do {                                                                                       \
        const amqp_field_value_t *v_ = entry((o), (name));                                   \
        ck_assert_msg(v_, "no header '%s'", (name));                                           \
        ck_assert_msg(v_->value.bytes.len == strlen(want) &&                                   \
                          memcmp(v_->value.bytes.bytes, (want), strlen(want)) == 0,            \
                      "header '%s' is '%.*s', not '%s'", (name), (int)v_->value.bytes.len,     \
                      (const char *)v_->value.bytes.bytes, (want));                           \
    } while (0)

static bool bytes_eq(amqp_bytes_t b, const char *s)
{
    return b.len == strlen(s) && memcmp(b.bytes, s, b.len) == 0;
}

/* How many headers of a built message start with `prefix`. */
static int entries_with_prefix(const struct mb_amqp_out *o, const char *prefix)
{
    int n = 0;
    for (int i = 0; i < o->props.headers.num_entries; i++) {
        const amqp_bytes_t *k = &o->props.headers.entries[i].key;
        n += k->len >= strlen(prefix) && memcmp(k->bytes, prefix, strlen(prefix)) == 0;
    }
    return n;
}

/* Decodes a built message as the consumer does: properties, then body. */
static msgbus_msg_t *decode_out(const struct mb_amqp_out *o)
{
    msgbus_msg_t *r = mb_msg_alloc();
    amqp_bytes_t x = {strlen(o->topic), (void *)o->topic};
    ck_assert(mb_amqp_decode(r, &o->props, x, o->routing_key, false));
    unsigned char *body = malloc(o->body.len + 1);
    memcpy(body, o->body.bytes, o->body.len);
    mb_msg_take_payload(r, body, o->body.len);
    ck_assert(mb_amqp_decode_body(r));
    return r;
}

START_TEST(binary_writes_the_attributes_as_cloudEvents_string_headers)
{
    msgbus_t *bus = bus_in("binary");
    msgbus_msg_t *m = event();
    struct mb_amqp_out *o = encode(bus, m);
    ck_entry(o, "cloudEvents_specversion", "1.0");
    ck_entry(o, "cloudEvents_id", "evt-1");
    ck_entry(o, "cloudEvents_source", SOURCE);
    ck_entry(o, "cloudEvents_type", "orders"); /* default: the topic */
    ck_entry(o, "cloudEvents_time", TS_TEXT);
    ck_entry(o, "cloudEvents_subject", "order/17");
    ck_entry(o, "cloudEvents_tenant", "acme"); /* the extension ce_tenant */
    ck_entry(o, "msgbus-timestamp-ms", "1700000000123");
    ck_entry(o, "content-type", "application/json");
    ck_entry(o, "trace", "abc");
    ck_assert_ptr_null(entry(o, "cloudEvents:id")); /* the old name is no longer written */
    ck_assert_ptr_null(entry(o, "ce_tenant"));
    ck_assert_ptr_null(entry(o, "cloudEvents_datacontenttype")); /* content_type says it */
    ck_assert_int_eq(o->props.headers.num_entries, 10);
    ck_assert(bytes_eq(o->props.message_id, "evt-1"));
    ck_assert(bytes_eq(o->props.content_type, "application/json"));
    ck_assert(bytes_eq(o->body, "{\"total\":42}"));

    /* A message's own type and source win; no subject, no header. */
    tu_ck_ok(msgbus_msg_set_type(m, "com.example.order.paid"));
    tu_ck_ok(msgbus_msg_set_source(m, "//shop/billing"));
    tu_ck_ok(msgbus_msg_set_subject(m, NULL));
    mb_amqp_out_free(o);
    o = encode(bus, m);
    ck_entry(o, "cloudEvents_type", "com.example.order.paid");
    ck_entry(o, "cloudEvents_source", "//shop/billing");
    ck_assert_ptr_null(entry(o, "cloudEvents_subject"));

    /* And it reads back as it was sent. */
    msgbus_msg_t *r = decode_out(o);
    ck_assert_str_eq(msgbus_msg_id(r), "evt-1");
    ck_assert_str_eq(msgbus_msg_type(r), "com.example.order.paid");
    ck_assert_str_eq(msgbus_msg_source(r), "//shop/billing");
    ck_assert_ptr_null(msgbus_msg_subject(r));
    ck_assert_int_eq(msgbus_msg_timestamp(r), TS);
    ck_assert_str_eq(msgbus_msg_header(r, "ce_tenant"), "acme");
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "application/json");
    ck_assert_str_eq(msgbus_msg_header(r, "trace"), "abc");
    ck_assert_uint_eq(msgbus_msg_header_count(r), 3);
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

START_TEST(structured_writes_the_event_as_the_body)
{
    msgbus_t *bus = bus_in("structured");
    msgbus_msg_t *m = event();
    struct mb_amqp_out *o = encode(bus, m);
    ck_assert(bytes_eq(o->props.content_type, "application/cloudevents+json"));
    ck_assert(bytes_eq(o->props.message_id, "evt-1"));
    ck_assert_int_eq(entries_with_prefix(o, "cloudEvents"), 0);
    ck_assert_ptr_null(entry(o, "content-type")); /* inside, as datacontenttype */
    ck_assert_ptr_null(entry(o, "ce_tenant"));    /* inside, as an extension */
    ck_entry(o, "msgbus-timestamp-ms", "1700000000123");
    ck_entry(o, "trace", "abc");
    char *body = strndup(o->body.bytes, o->body.len);
    ck_assert_msg(strstr(body, "\"id\":\"evt-1\"") && strstr(body, "\"type\":\"orders\"") &&
                      strstr(body, "\"source\":\"" SOURCE "\"") &&
                      strstr(body, "\"tenant\":\"acme\"") && strstr(body, "\"data\":{\"total\":42}"),
                  "%s", body);
    free(body);

    msgbus_msg_t *r = decode_out(o);
    ck_assert_str_eq(msgbus_msg_id(r), "evt-1");
    ck_assert_str_eq(msgbus_msg_type(r), "orders");
    ck_assert_str_eq(msgbus_msg_source(r), SOURCE);
    ck_assert_str_eq(msgbus_msg_subject(r), "order/17");
    ck_assert_int_eq(msgbus_msg_timestamp(r), TS);
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "application/json");
    ck_assert_str_eq(msgbus_msg_header(r, "ce_tenant"), "acme");
    size_t n;
    const char *p = msgbus_msg_payload(r, &n);
    ck_assert_int_eq(n, 12);
    ck_assert_int_eq(memcmp(p, "{\"total\":42}", 12), 0);
    ck_assert_ptr_null(msgbus_msg_header(r, "msgbus-invalid-cloudevent"));
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

START_TEST(off_writes_the_message_id_only)
{
    msgbus_t *bus = bus_in("off");
    msgbus_msg_t *m = event();
    struct mb_amqp_out *o = encode(bus, m);
    ck_assert(bytes_eq(o->props.message_id, "evt-1"));
    ck_assert_int_eq(entries_with_prefix(o, "cloudEvents"), 0);
    ck_entry(o, "ce_tenant", "acme"); /* an application header like any other */
    ck_entry(o, "msgbus-timestamp-ms", "1700000000123");
    ck_assert(bytes_eq(o->props.content_type, "application/json"));
    msgbus_msg_t *r = decode_out(o);
    ck_assert_str_eq(msgbus_msg_id(r), "evt-1");
    ck_assert_ptr_null(msgbus_msg_type(r));
    ck_assert_ptr_null(msgbus_msg_source(r));
    ck_assert_int_eq(msgbus_msg_timestamp(r), TS);
    ck_assert_str_eq(msgbus_msg_header(r, "ce_tenant"), "acme");
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

START_TEST(retry_copies_write_strings_and_keep_what_arrived)
{
    /* A received event (type, source, an extension), nacked on a classic
     * queue: the copy carries attempt and key as strings and reads back
     * with the same attributes. */
    amqp_table_entry_t e[4];
    memset(e, 0, sizeof e);
    const char *names[] = {"cloudEvents_type", "cloudEvents_source", "cloudEvents_region",
                           "cloudEvents_specversion"};
    const char *values[] = {"t.created", "//elsewhere", "eu", "1.0"};
    for (int i = 0; i < 4; i++) {
        e[i].key = amqp_cstring_bytes(names[i]);
        e[i].value.kind = AMQP_FIELD_KIND_UTF8;
        e[i].value.value.bytes = amqp_cstring_bytes(values[i]);
    }
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    p.message_id = amqp_cstring_bytes("f-1");
    p.timestamp = 1700000000;
    p.headers.num_entries = 4;
    p.headers.entries = e;
    msgbus_msg_t *m = mb_msg_alloc();
    ck_assert(mb_amqp_decode(m, &p, amqp_cstring_bytes("orders"), amqp_cstring_bytes("k"),
                             false));
    ck_assert(mb_amqp_decode_body(m));

    struct mb_amqp_out *o;
    tu_ck_ok(mb_amqp_out_new(&o, "", "orders.billing", 14, m, 3, true, 131072));
    ck_entry(o, "msgbus-attempt", "3");
    ck_entry(o, "msgbus-key", "k");
    ck_entry(o, "msgbus-timestamp-ms", "1700000000000");
    ck_entry(o, "cloudEvents_type", "t.created");
    ck_entry(o, "cloudEvents_region", "eu");
    msgbus_msg_t *r = decode_out(o);
    ck_assert_int_eq(msgbus_msg_attempt(r), 3);
    ck_assert_str_eq(msgbus_msg_id(r), "f-1");
    ck_assert_str_eq(msgbus_msg_type(r), "t.created");
    ck_assert_str_eq(msgbus_msg_source(r), "//elsewhere");
    ck_assert_str_eq(msgbus_msg_header(r, "ce_region"), "eu");
    ck_assert_uint_eq(msgbus_msg_header_count(r), msgbus_msg_header_count(m));
    msgbus_msg_free(r);
    mb_amqp_out_free(o);

    /* A foreign message without type or source: its copy does not gain
     * them (nor a specversion that would call it a CloudEvent). */
    msgbus_msg_free(m);
    memset(&p, 0, sizeof p);
    m = mb_msg_alloc();
    ck_assert(mb_amqp_decode(m, &p, amqp_cstring_bytes("orders"), amqp_empty_bytes, false));
    tu_ck_ok(mb_amqp_out_new(&o, "", "orders.billing", 14, m, 2, true, 131072));
    ck_assert_ptr_null(entry(o, "cloudEvents_type"));
    ck_assert_ptr_null(entry(o, "cloudEvents_specversion"));
    r = decode_out(o);
    ck_assert_ptr_null(msgbus_msg_type(r));
    ck_assert_ptr_null(msgbus_msg_source(r));
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
}
END_TEST

/* ---- decoding foreign events ---------------------------------------------------------- */

static amqp_table_entry_t str_entry(const char *name, const char *v)
{
    amqp_table_entry_t e;
    memset(&e, 0, sizeof e);
    e.key = amqp_cstring_bytes(name);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(v);
    return e;
}

static msgbus_msg_t *decode_props(amqp_basic_properties_t *p, amqp_table_entry_t *e, int ne,
                                  const char *body)
{
    if (ne) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        p->headers.num_entries = ne;
        p->headers.entries = e;
    }
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, p, amqp_cstring_bytes("orders"), amqp_empty_bytes, false));
    if (body)
        mb_msg_take_payload(r, (unsigned char *)strdup(body), strlen(body));
    ck_assert(mb_amqp_decode_body(r));
    return r;
}

static msgbus_msg_t *decode_headers(amqp_table_entry_t *e, int ne)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    return decode_props(&p, e, ne, NULL);
}

START_TEST(every_prefix_is_read)
{
    /* cloudEvents_ (the binding, the SDKs), cloudEvents: (its first text,
     * msgbus before), ce- in any case (the SDK's RabbitMQ binding, knative). */
    const char *prefixes[] = {"cloudEvents_", "cloudEvents:", "ce-", "CE-", "Ce-"};
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++) {
        const char *attrs[][2] = {{"specversion", "1.0"},
                                  {"id", "x-1"},
                                  {"type", "com.example.t"},
                                  {"source", "/src"},
                                  {"subject", "sub"},
                                  {"time", "2023-11-14T22:13:20.5Z"},
                                  {"traceid", "t-9"}};
        amqp_table_entry_t e[7];
        char names[7][64];
        for (int k = 0; k < 7; k++) {
            snprintf(names[k], sizeof names[k], "%s%s", prefixes[i], attrs[k][0]);
            if (prefixes[i][0] == 'C') /* an HTTP-style name's case */
                names[k][3] = (char)(names[k][3] - 'a' + 'A');
            e[k] = str_entry(names[k], attrs[k][1]);
        }
        msgbus_msg_t *r = decode_headers(e, 7);
        ck_assert_msg(msgbus_msg_id(r) && strcmp(msgbus_msg_id(r), "x-1") == 0, "%s: id %s",
                      prefixes[i], msgbus_msg_id(r) ? msgbus_msg_id(r) : "(none)");
        ck_assert_str_eq(msgbus_msg_type(r), "com.example.t");
        ck_assert_str_eq(msgbus_msg_source(r), "/src");
        ck_assert_str_eq(msgbus_msg_subject(r), "sub");
        ck_assert_int_eq(msgbus_msg_timestamp(r), 1700000000500LL);
        ck_assert_str_eq(msgbus_msg_header(r, "ce_traceid"), "t-9");
        ck_assert_msg(msgbus_msg_header_count(r) == 1, "%s: %zu headers", prefixes[i],
                      msgbus_msg_header_count(r));
        msgbus_msg_free(r);
    }
    /* The other prefixes are case-sensitive: CloudEvents_type is a header. */
    amqp_table_entry_t e[1] = {str_entry("CloudEvents_type", "t")};
    msgbus_msg_t *r = decode_headers(e, 1);
    ck_assert_ptr_null(msgbus_msg_type(r));
    ck_assert_str_eq(msgbus_msg_header(r, "CloudEvents_type"), "t");
    msgbus_msg_free(r);
}
END_TEST

START_TEST(time_as_timestamp_or_integer)
{
    amqp_table_entry_t e[2];
    memset(e, 0, sizeof e);
    /* An AMQP timestamp (T) counts seconds. */
    e[0].key = amqp_cstring_bytes("cloudEvents_time");
    e[0].value.kind = AMQP_FIELD_KIND_TIMESTAMP;
    e[0].value.value.u64 = 1700000000;
    msgbus_msg_t *r = decode_headers(e, 1);
    ck_assert_int_eq(msgbus_msg_timestamp(r), 1700000000000LL);
    ck_assert_uint_eq(msgbus_msg_header_count(r), 0);
    msgbus_msg_free(r);
    /* An integer counts milliseconds (the SDK's AMQP timestamp), and the
     * event's time wins over the broker's timestamp and msgbus's header. */
    e[0].value.kind = AMQP_FIELD_KIND_I64;
    e[0].value.value.i64 = 1700000000123LL;
    e[1] = str_entry("msgbus-timestamp-ms", "5");
    r = decode_headers(e, 2);
    ck_assert_int_eq(msgbus_msg_timestamp(r), 1700000000123LL);
    msgbus_msg_free(r);
    e[0].value.kind = AMQP_FIELD_KIND_U32;
    e[0].value.value.u32 = 86400000u;
    r = decode_headers(e, 1);
    ck_assert_int_eq(msgbus_msg_timestamp(r), 86400000LL);
    msgbus_msg_free(r);
    /* A time that is no time: kept as header ce_time, the timestamp from
     * msgbus-timestamp-ms. */
    e[0].value.kind = AMQP_FIELD_KIND_I64;
    e[0].value.value.i64 = -5;
    r = decode_headers(e, 2);
    ck_assert_str_eq(msgbus_msg_header(r, "ce_time"), "-5");
    ck_assert_int_eq(msgbus_msg_timestamp(r), 5);
    msgbus_msg_free(r);
    e[0] = str_entry("cloudEvents_time", "yesterday");
    r = decode_headers(e, 2);
    ck_assert_str_eq(msgbus_msg_header(r, "ce_time"), "yesterday");
    ck_assert_int_eq(msgbus_msg_timestamp(r), 5);
    msgbus_msg_free(r);
    /* Beyond year 9999 (RFC 3339's last): the text too. */
    e[0].key = amqp_cstring_bytes("cloudEvents_time");
    e[0].value.kind = AMQP_FIELD_KIND_TIMESTAMP;
    e[0].value.value.u64 = UINT64_MAX;
    r = decode_headers(e, 2);
    ck_assert_str_eq(msgbus_msg_header(r, "ce_time"), "18446744073709551615");
    msgbus_msg_free(r);
}
END_TEST

/* Integer headers that arrive as strings (msgbus-timestamp-ms, msgbus-attempt,
 * x-delivery-count, an integer time) are read whole: white space, a sign and
 * digits to the last byte, within int64 — as strtoll reads a number, but no
 * NUL or junk after it and no overflow clamped to INT64_MAX. */
START_TEST(integer_strings_are_read_whole)
{
    struct {
        const char *v;
        size_t len;
        long long want; /* -1: refused */
    } cases[] = {
        {"1700000000123", 13, 1700000000123LL},
        {" 42", 3, 42},
        {"\t+42", 4, 42},
        {"0", 1, 0},
        {"12\0x", 4, -1},       /* strtoll on a copy stopped at the NUL: 12 */
        {"4x", 2, -1},
        {"", 0, -1},
        {"+", 1, -1},
        {"42 ", 3, -1},
        {"9223372036854775808", 19, -1},                     /* INT64_MAX + 1 */
        {"18446744073709551615", 20, -1},                    /* UINT64_MAX */
        {"18446744073709551616", 20, -1},                    /* past it */
        {"1234567890123456789012345678901234567890", 40, -1}, /* was INT64_MAX */
        {"1700000000123000000000000000000x", 32, -1},         /* junk past byte 31 */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        amqp_table_entry_t e = str_entry("msgbus-timestamp-ms", "");
        e.value.value.bytes.bytes = (void *)cases[i].v;
        e.value.value.bytes.len = cases[i].len;
        msgbus_msg_t *r = decode_headers(&e, 1);
        int64_t ts = msgbus_msg_timestamp(r);
        if (cases[i].want >= 0)
            ck_assert_msg(ts == cases[i].want, "case %zu: timestamp %lld, want %lld", i,
                          (long long)ts, cases[i].want);
        else
            ck_assert_msg(ts != 12 && ts != 4 && ts != INT64_MAX && ts != 1700000000123LL,
                          "case %zu ('%s') was read as %lld", i, cases[i].v, (long long)ts);
        msgbus_msg_free(r);
    }
}
END_TEST

START_TEST(older_integer_headers_are_read)
{
    /* msgbus before issue 21: cloudEvents:id, msgbus-timestamp-ms as I64,
     * msgbus-attempt as I32 on a copy (default exchange). */
    amqp_table_entry_t e[4];
    memset(e, 0, sizeof e);
    e[0] = str_entry("cloudEvents:id", "old-1");
    e[1].key = amqp_cstring_bytes("msgbus-timestamp-ms");
    e[1].value.kind = AMQP_FIELD_KIND_I64;
    e[1].value.value.i64 = TS;
    e[2].key = amqp_cstring_bytes("msgbus-attempt");
    e[2].value.kind = AMQP_FIELD_KIND_I64;
    e[2].value.value.i64 = 4;
    e[3] = str_entry("msgbus-key", "k-7");
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    p.message_id = amqp_cstring_bytes("old-1");
    p.headers.num_entries = 4;
    p.headers.entries = e;
    msgbus_msg_t *r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &p, amqp_empty_bytes, amqp_cstring_bytes("q.g"), false));
    ck_assert_str_eq(msgbus_msg_id(r), "old-1");
    ck_assert_int_eq(msgbus_msg_timestamp(r), TS);
    ck_assert_int_eq(msgbus_msg_attempt(r), 4);
    size_t kl;
    const char *k = msgbus_msg_key(r, &kl);
    ck_assert(k && kl == 3 && memcmp(k, "k-7", 3) == 0);
    ck_assert_uint_eq(msgbus_msg_header_count(r), 0);
    msgbus_msg_free(r);
    /* The string forms msgbus writes now. */
    e[1] = str_entry("msgbus-timestamp-ms", "1700000000123");
    e[2] = str_entry("msgbus-attempt", "4");
    r = mb_msg_alloc();
    ck_assert(mb_amqp_decode(r, &p, amqp_empty_bytes, amqp_cstring_bytes("q.g"), false));
    ck_assert_int_eq(msgbus_msg_timestamp(r), TS);
    ck_assert_int_eq(msgbus_msg_attempt(r), 4);
    msgbus_msg_free(r);
}
END_TEST

START_TEST(foreign_properties_become_headers)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
               AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG |
               AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_EXPIRATION_FLAG |
               AMQP_BASIC_CONTENT_ENCODING_FLAG | AMQP_BASIC_PRIORITY_FLAG;
    p.content_type = amqp_cstring_bytes("text/plain");
    p.correlation_id = amqp_cstring_bytes("corr-1");
    p.type = amqp_cstring_bytes("order.created");
    p.app_id = amqp_cstring_bytes("shop");
    p.reply_to = amqp_cstring_bytes("replies");
    p.user_id = amqp_cstring_bytes("guest");
    p.expiration = amqp_cstring_bytes("60000");
    p.content_encoding = amqp_cstring_bytes("gzip");
    p.priority = 5;
    /* A header of the same name does not replace the property. */
    amqp_table_entry_t e[1] = {str_entry("amqp-user-id", "admin")};
    msgbus_msg_t *r = decode_props(&p, e, 1, "hello");
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "text/plain");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-correlation-id"), "corr-1");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-type"), "order.created");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-app-id"), "shop");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-reply-to"), "replies");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-user-id"), "guest");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-expiration"), "60000");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-content-encoding"), "gzip");
    ck_assert_str_eq(msgbus_msg_header(r, "amqp-priority"), "5");
    ck_assert_uint_eq(msgbus_msg_header_count(r), 9);

    /* A retry copy carries them as headers, not as properties again. */
    struct mb_amqp_out *o;
    tu_ck_ok(mb_amqp_out_new(&o, "", "orders.g", 8, r, 2, true, 131072));
    ck_assert(!(o->props._flags & (AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_TYPE_FLAG |
                                   AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_USER_ID_FLAG |
                                   AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG)));
    ck_entry(o, "amqp-type", "order.created");
    msgbus_msg_t *r2 = decode_out(o);
    ck_assert_uint_eq(msgbus_msg_header_count(r2), 9);
    ck_assert_str_eq(msgbus_msg_header(r2, "amqp-correlation-id"), "corr-1");
    msgbus_msg_free(r2);
    mb_amqp_out_free(o);
    msgbus_msg_free(r);

    /* A content-type header wins over the property (it may be longer than
     * a short string); the property wins over cloudEvents_datacontenttype. */
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
    p.content_type = amqp_cstring_bytes("application/xml");
    amqp_table_entry_t e2[1] = {str_entry("content-type", "text/csv")};
    r = decode_props(&p, e2, 1, NULL);
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "text/csv");
    msgbus_msg_free(r);
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
    p.content_type = amqp_cstring_bytes("application/xml");
    amqp_table_entry_t e3[1] = {str_entry("cloudEvents_datacontenttype", "text/csv")};
    r = decode_props(&p, e3, 1, NULL);
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "application/xml");
    msgbus_msg_free(r);
    /* Without the property, datacontenttype is the content type. */
    r = decode_headers(e3, 1);
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "text/csv");
    msgbus_msg_free(r);
}
END_TEST

START_TEST(foreign_structured_events_are_unpacked)
{
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG;
    p.content_type = amqp_cstring_bytes("application/cloudevents+json; charset=utf-8");
    msgbus_msg_t *r = decode_props(
        &p, NULL, 0,
        "{\"specversion\":\"1.0\",\"id\":\"s-1\",\"source\":\"/py\",\"type\":\"t.s\","
        "\"time\":\"2023-11-14T22:13:20Z\",\"datacontenttype\":\"text/plain\",\"data\":\"hi\"}");
    ck_assert_str_eq(msgbus_msg_id(r), "s-1");
    ck_assert_str_eq(msgbus_msg_type(r), "t.s");
    ck_assert_str_eq(msgbus_msg_source(r), "/py");
    ck_assert_int_eq(msgbus_msg_timestamp(r), 1700000000000LL);
    ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "text/plain");
    size_t n;
    const char *body = msgbus_msg_payload(r, &n);
    ck_assert(n == 2 && memcmp(body, "hi", 2) == 0);
    msgbus_msg_free(r);
}
END_TEST

START_TEST(a_broken_structured_body_arrives_as_sent_and_marked)
{
    const char *bodies[] = {"{not json", "[1,2]", "{\"specversion\":\"1.0\",\"id\":\"x\"}"};
    for (size_t i = 0; i < 3; i++) {
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof p);
        p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
        p.content_type = amqp_cstring_bytes("application/cloudevents+json");
        p.message_id = amqp_cstring_bytes("b-1");
        msgbus_msg_t *r = decode_props(&p, NULL, 0, bodies[i]);
        const char *why = msgbus_msg_header(r, "msgbus-invalid-cloudevent");
        ck_assert_msg(why && strstr(why, "structured CloudEvent"), "%s: %s", bodies[i],
                      why ? why : "(not marked)");
        size_t n;
        const char *body = msgbus_msg_payload(r, &n);
        ck_assert(n == strlen(bodies[i]) && memcmp(body, bodies[i], n) == 0);
        ck_assert_str_eq(msgbus_msg_id(r), "b-1");
        ck_assert_str_eq(msgbus_msg_header(r, "content-type"), "application/cloudevents+json");
        msgbus_msg_free(r);
    }
}
END_TEST

START_TEST(names_and_times_past_the_binding_limits)
{
    msgbus_t *bus = bus_in("binary");
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    /* An extension whose cloudEvents_ name would pass 255 bytes stays
     * ce_<ext>, and reads back as that header. */
    char name[256];
    memcpy(name, "ce_", 3);
    memset(name + 3, 'x', 250);
    name[253] = '\0';
    tu_ck_ok(msgbus_msg_set_header(m, name, "v"));
    /* A timestamp after 9999-12-31: no cloudEvents_time, exact in
     * msgbus-timestamp-ms. */
    tu_ck_ok(msgbus_msg_set_timestamp(m, 300000000000000LL));
    struct mb_amqp_out *o = encode(bus, m);
    ck_entry(o, name, "v");
    ck_assert_ptr_null(entry(o, "cloudEvents_time"));
    ck_entry(o, "msgbus-timestamp-ms", "300000000000000");
    msgbus_msg_t *r = decode_out(o);
    ck_assert_str_eq(msgbus_msg_header(r, name), "v");
    ck_assert_int_eq(msgbus_msg_timestamp(r), 300000000000000LL);
    ck_assert_uint_eq(msgbus_msg_header_count(r), 1);
    msgbus_msg_free(r);
    mb_amqp_out_free(o);
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_codec");
    TCase *tc = tcase_create("codec");
    tcase_add_test(tc, binary_writes_the_attributes_as_cloudEvents_string_headers);
    tcase_add_test(tc, structured_writes_the_event_as_the_body);
    tcase_add_test(tc, off_writes_the_message_id_only);
    tcase_add_test(tc, retry_copies_write_strings_and_keep_what_arrived);
    tcase_add_test(tc, every_prefix_is_read);
    tcase_add_test(tc, time_as_timestamp_or_integer);
    tcase_add_test(tc, integer_strings_are_read_whole);
    tcase_add_test(tc, older_integer_headers_are_read);
    tcase_add_test(tc, foreign_properties_become_headers);
    tcase_add_test(tc, foreign_structured_events_are_unpacked);
    tcase_add_test(tc, a_broken_structured_body_arrives_as_sent_and_marked);
    tcase_add_test(tc, names_and_times_past_the_binding_limits);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
