/*
 * test_cloudevents_amqp.c — msgbus messages as CloudEvents of the AMQP
 * binding, through the real RabbitMQ (MSGBUS_TEST_AMQP_URL), read and
 * written by a raw rabbitmq-c client inside the test (issue 21;
 * docs/amqp.md "CloudEvents"):
 *   - what msgbus writes in each mode of cloudevents= (binary, structured,
 *     off) as a foreign consumer sees it — and every header value msgbus
 *     writes, on publishes, retry copies and dead letters, is a string
 *     (what Watermill and other string-only readers need);
 *   - foreign events under each prefix (cloudEvents_, cloudEvents:, ce-),
 *     with time as a string, an AMQP timestamp and an integer, and in
 *     structured mode, arrive with the right id, type, source and time;
 *     foreign basic properties are visible as headers; a broken structured
 *     body is delivered as sent, marked msgbus-invalid-cloudevent.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define SOURCE "//it-host/amqp21"

/* ---- the raw client ----------------------------------------------------------------- */

static amqp_connection_state_t raw;

static void raw_open(void)
{
    char url[1024];
    snprintf(url, sizeof url, "%s", tu_broker_url("amqp"));
    char *query = strchr(url, '?');
    if (query)
        *query = '\0';
    struct amqp_connection_info ci;
    ck_assert_int_eq(amqp_parse_url(url, &ci), AMQP_STATUS_OK);
    raw = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(raw);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(amqp_socket_open(s, ci.host, ci.port), AMQP_STATUS_OK);
    amqp_rpc_reply_t rep = amqp_login(raw, ci.vhost && *ci.vhost ? ci.vhost : "/", 0, 131072, 0,
                                      AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    ck_assert_int_eq(rep.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(raw, 1);
    ck_assert_int_eq(amqp_get_rpc_reply(raw).reply_type, AMQP_RESPONSE_NORMAL);
    amqp_confirm_select(raw, 1);
    ck_assert_int_eq(amqp_get_rpc_reply(raw).reply_type, AMQP_RESPONSE_NORMAL);
}

static void raw_close(void)
{
    amqp_channel_close(raw, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(raw, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(raw);
}

/* basic.get from `queue` until a message comes (10 s at most). */
static void raw_get(const char *queue, amqp_message_t *out)
{
    for (int i = 0; i < 100; i++) {
        amqp_basic_get(raw, 1, amqp_cstring_bytes(queue), 1);
        amqp_rpc_reply_t r = amqp_get_rpc_reply(raw);
        ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
        if (r.reply.id == AMQP_BASIC_GET_OK_METHOD) {
            amqp_rpc_reply_t m = amqp_read_message(raw, 1, out, 0);
            ck_assert_int_eq(m.reply_type, AMQP_RESPONSE_NORMAL);
            return;
        }
        usleep(100000);
    }
    ck_abort_msg("no message in queue '%s' within 10 s", queue);
}

/* Publishes and waits for the broker's confirm. */
static void raw_send(const char *exchange, const amqp_basic_properties_t *p, const char *body)
{
    int st = amqp_basic_publish(raw, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes("rk"), 0,
                                0, p, amqp_cstring_bytes(body));
    ck_assert_msg(st == AMQP_STATUS_OK, "raw publish: %s", amqp_error_string2(st));
    amqp_frame_t f;
    struct timeval tv = {10, 0};
    ck_assert_int_eq(amqp_simple_wait_frame_noblock(raw, &f, &tv), AMQP_STATUS_OK);
    ck_assert_uint_eq(f.payload.method.id, AMQP_BASIC_ACK_METHOD);
}

static const amqp_field_value_t *find(const amqp_basic_properties_t *p, const char *name)
{
    if (!(p->_flags & AMQP_BASIC_HEADERS_FLAG))
        return NULL;
    for (int i = 0; i < p->headers.num_entries; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        if (e->key.len == strlen(name) && memcmp(e->key.bytes, name, e->key.len) == 0)
            return &e->value;
    }
    return NULL;
}

/* Every header is a string (kind S); returns how many there are. */
static int all_strings(const amqp_basic_properties_t *p, const char *what)
{
    int n = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? p->headers.num_entries : 0;
    for (int i = 0; i < n; i++) {
        const amqp_table_entry_t *e = &p->headers.entries[i];
        ck_assert_msg(e->value.kind == AMQP_FIELD_KIND_UTF8, "%s: header '%.*s' is of kind '%c'",
                      what, (int)e->key.len, (const char *)e->key.bytes, e->value.kind);
    }
    return n;
}

static bool str_is(const amqp_field_value_t *v, const char *want)
{
    /* rabbitmq-c decodes an empty string as NULL bytes. */
    return v && v->kind == AMQP_FIELD_KIND_UTF8 && v->value.bytes.len == strlen(want) &&
           (!v->value.bytes.len || memcmp(v->value.bytes.bytes, want, v->value.bytes.len) == 0);
}

#define ck_header(p, name, want)                                                               \
    ck_assert_msg(str_is(find((p), (name)), (want)), "header '%s' is not the string '%s'",     \
                  (name), (want))

static int prefixed(const amqp_basic_properties_t *p, const char *prefix)
{
    int n = 0;
    for (int i = 0; (p->_flags & AMQP_BASIC_HEADERS_FLAG) && i < p->headers.num_entries; i++) {
        const amqp_bytes_t *k = &p->headers.entries[i].key;
        n += k->len >= strlen(prefix) && memcmp(k->bytes, prefix, strlen(prefix)) == 0;
    }
    return n;
}

static bool bytes_is(amqp_bytes_t b, const char *s)
{
    return b.len == strlen(s) && (!b.len || memcmp(b.bytes, s, b.len) == 0);
}

/* ---- msgbus side --------------------------------------------------------------------- */

static msgbus_t *open_bus(const char *opts)
{
    char url[1024];
    const char *base = tu_broker_url("amqp");
    snprintf(url, sizeof url, "%s%s%s", base, strchr(base, '?') ? "&" : "?", opts);
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static msgbus_msg_t *event(const char *id, int64_t ts)
{
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "{\"total\":42}", 12));
    tu_ck_ok(msgbus_msg_set_id(m, id));
    tu_ck_ok(msgbus_msg_set_key(m, "", 0)); /* rides in msgbus-key */
    tu_ck_ok(msgbus_msg_set_type(m, "com.example.order.paid"));
    tu_ck_ok(msgbus_msg_set_subject(m, "order/17"));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "ce_tenant", "acme"));
    tu_ck_ok(msgbus_msg_set_header(m, "trace", "abc"));
    tu_ck_ok(msgbus_msg_set_timestamp(m, ts));
    return m;
}

static void publish_one(msgbus_t *bus, const char *topic, msgbus_msg_t *m)
{
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    size_t failed = 99;
    tu_ck_ok(msgbus_flush(bus, 10000, &failed));
    ck_assert_uint_eq(failed, 0);
}

/* ---- what msgbus writes ------------------------------------------------------------ */

START_TEST(binary_events_as_a_foreign_consumer_sees_them)
{
    char topic[128], queue[160];
    tu_unique(topic, sizeof topic, "amqp21-ce-bin");
    snprintf(queue, sizeof queue, "%s.raw", topic);
    msgbus_t *bus = open_bus("ce_source=" SOURCE);
    tu_ck_ok(msgbus_declare(bus, topic, "raw"));
    raw_open();
    publish_one(bus, topic, event("bin-1", 1700000000123LL));
    amqp_message_t got;
    raw_get(queue, &got);
    const amqp_basic_properties_t *p = &got.properties;
    int n = all_strings(p, "binary");
    ck_header(p, "cloudEvents_specversion", "1.0");
    ck_header(p, "cloudEvents_id", "bin-1");
    ck_header(p, "cloudEvents_source", SOURCE);
    ck_header(p, "cloudEvents_type", "com.example.order.paid");
    ck_header(p, "cloudEvents_time", "2023-11-14T22:13:20.123Z");
    ck_header(p, "cloudEvents_subject", "order/17");
    ck_header(p, "cloudEvents_tenant", "acme");
    ck_header(p, "msgbus-timestamp-ms", "1700000000123");
    ck_header(p, "msgbus-key", "");
    ck_header(p, "content-type", "application/json");
    ck_header(p, "trace", "abc");
    ck_assert_ptr_null(find(p, "cloudEvents:id"));
    ck_assert(bytes_is(p->message_id, "bin-1"));
    ck_assert(bytes_is(p->content_type, "application/json"));
    ck_assert(bytes_is(got.body, "{\"total\":42}"));
    printf("binary: %d headers, all strings, 7 cloudEvents_ attributes\n", n);
    amqp_destroy_message(&got);

    /* The type defaults to the topic. */
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    publish_one(bus, topic, m);
    raw_get(queue, &got);
    ck_header(&got.properties, "cloudEvents_type", topic);
    ck_assert_ptr_null(find(&got.properties, "cloudEvents_subject"));
    all_strings(&got.properties, "binary, defaults");
    amqp_destroy_message(&got);
    raw_close();
    msgbus_close(bus);
}
END_TEST

START_TEST(structured_and_off)
{
    char topic[128], queue[160];
    tu_unique(topic, sizeof topic, "amqp21-ce-str");
    snprintf(queue, sizeof queue, "%s.raw", topic);
    msgbus_t *bus = open_bus("cloudevents=structured&ce_source=" SOURCE);
    tu_ck_ok(msgbus_declare(bus, topic, "raw"));
    raw_open();
    publish_one(bus, topic, event("str-1", 1700000000123LL));
    amqp_message_t got;
    raw_get(queue, &got);
    const amqp_basic_properties_t *p = &got.properties;
    int n = all_strings(p, "structured");
    ck_assert_int_eq(prefixed(p, "cloudEvents"), 0);
    ck_assert(bytes_is(p->content_type, "application/cloudevents+json"));
    ck_assert(bytes_is(p->message_id, "str-1"));
    json_error_t je;
    json_t *o = json_loadb(got.body.bytes, got.body.len, 0, &je);
    ck_assert_msg(o, "body is not JSON: %s", je.text);
    ck_assert_str_eq(json_string_value(json_object_get(o, "specversion")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(o, "id")), "str-1");
    ck_assert_str_eq(json_string_value(json_object_get(o, "type")), "com.example.order.paid");
    ck_assert_str_eq(json_string_value(json_object_get(o, "source")), SOURCE);
    ck_assert_str_eq(json_string_value(json_object_get(o, "time")), "2023-11-14T22:13:20.123Z");
    ck_assert_str_eq(json_string_value(json_object_get(o, "tenant")), "acme");
    ck_assert_str_eq(json_string_value(json_object_get(o, "datacontenttype")), "application/json");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(o, "data"), "total")), 42);
    json_decref(o);
    printf("structured: %d headers, all strings, event in the body\n", n);
    amqp_destroy_message(&got);
    msgbus_close(bus);

    bus = open_bus("cloudevents=off");
    publish_one(bus, topic, event("off-1", 1700000000123LL));
    raw_get(queue, &got);
    p = &got.properties;
    n = all_strings(p, "off");
    ck_assert_int_eq(prefixed(p, "cloudEvents"), 0);
    ck_assert(bytes_is(p->message_id, "off-1"));
    ck_header(p, "ce_tenant", "acme");
    ck_header(p, "msgbus-timestamp-ms", "1700000000123");
    printf("off: %d headers, all strings, message_id only\n", n);
    amqp_destroy_message(&got);
    raw_close();
    msgbus_close(bus);
}
END_TEST

START_TEST(retry_copies_and_dead_letters_write_strings)
{
    char topic[128], dlq[160], dlq_queue[200], queue[200];
    tu_unique(topic, sizeof topic, "amqp21-ce-retry");
    snprintf(dlq, sizeof dlq, "%s.dlq", topic);
    snprintf(dlq_queue, sizeof dlq_queue, "%s.raw", dlq);
    snprintf(queue, sizeof queue, "%s.g", topic);
    msgbus_t *bus = open_bus("retry_max_attempts=2&retry_initial_ms=0");
    tu_ck_ok(msgbus_declare(bus, dlq, "raw"));
    raw_open();
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    publish_one(bus, topic, event("retry-1", 1700000000123LL));

    /* Attempt 1, nacked: the retry copy goes back to the group's queue. */
    msgbus_msg_t *in = tu_receive(sub, 10000);
    ck_assert_int_eq(msgbus_msg_attempt(in), 1);
    tu_ck_ok(msgbus_nack(in));
    msgbus_msg_free(in);
    /* Attempt 2 (the copy), nacked: dead-lettered. */
    in = tu_receive(sub, 10000);
    ck_assert_int_eq(msgbus_msg_attempt(in), 2);
    ck_assert_str_eq(msgbus_msg_id(in), "retry-1");
    ck_assert_str_eq(msgbus_msg_type(in), "com.example.order.paid");
    ck_assert_str_eq(msgbus_msg_subject(in), "order/17");
    ck_assert_int_eq(msgbus_msg_timestamp(in), 1700000000123LL);
    tu_ck_ok(msgbus_nack(in));
    msgbus_msg_free(in);
    amqp_message_t got;
    raw_get(dlq_queue, &got);
    const amqp_basic_properties_t *p = &got.properties;
    int n = all_strings(p, "dead letter");
    ck_header(p, "msgbus-dlq-attempts", "2");
    ck_header(p, "cloudEvents_id", "retry-1");
    ck_header(p, "cloudEvents_type", "com.example.order.paid");
    ck_assert(find(p, "msgbus-dlq-topic") && find(p, "msgbus-dlq-time"));
    printf("dead letter: %d headers, all strings\n", n);
    amqp_destroy_message(&got);
    msgbus_sub_close(sub);

    /* A retry copy as it sits in the queue: the subscription closes before
     * it is delivered, and the raw client takes it. */
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    publish_one(bus, topic, event("retry-2", 1700000000123LL));
    in = tu_receive(sub, 10000);
    tu_ck_ok(msgbus_nack(in));
    msgbus_msg_free(in);
    usleep(500000); /* the copy is confirmed, the original acked */
    msgbus_sub_close(sub);
    raw_get(queue, &got);
    p = &got.properties;
    n = all_strings(p, "retry copy");
    ck_header(p, "msgbus-attempt", "2");
    ck_header(p, "msgbus-key", "");
    ck_header(p, "msgbus-timestamp-ms", "1700000000123");
    ck_header(p, "cloudEvents_id", "retry-2");
    printf("retry copy: %d headers, all strings\n", n);
    amqp_destroy_message(&got);
    raw_close();
    msgbus_close(bus);
}
END_TEST

/* ---- what msgbus reads ------------------------------------------------------------- */

static amqp_table_entry_t str_entry(const char *name, const char *v)
{
    amqp_table_entry_t e;
    memset(&e, 0, sizeof e);
    e.key = amqp_cstring_bytes(name);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(v);
    return e;
}

/* A binary event under `prefix` with time as `time` (kind set by caller). */
static void send_binary(const char *topic, const char *prefix, const char *id,
                        amqp_field_value_t time)
{
    char names[5][64];
    const char *attrs[] = {"specversion", "id", "type", "source", "time"};
    for (int i = 0; i < 5; i++)
        snprintf(names[i], sizeof names[i], "%s%s", prefix, attrs[i]);
    amqp_table_entry_t e[5] = {str_entry(names[0], "1.0"), str_entry(names[1], id),
                               str_entry(names[2], "com.example.foreign"),
                               str_entry(names[3], "/foreign/producer")};
    e[4].key = amqp_cstring_bytes(names[4]);
    e[4].value = time;
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    p.content_type = amqp_cstring_bytes("text/plain");
    p.headers.num_entries = 5;
    p.headers.entries = e;
    raw_send(topic, &p, "hello");
}

static void expect_foreign(msgbus_sub_t *sub, const char *id, int64_t ts)
{
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_msg(msgbus_msg_id(m) && strcmp(msgbus_msg_id(m), id) == 0, "id %s, want %s",
                  msgbus_msg_id(m) ? msgbus_msg_id(m) : "(none)", id);
    ck_assert_str_eq(msgbus_msg_type(m), "com.example.foreign");
    ck_assert_str_eq(msgbus_msg_source(m), "/foreign/producer");
    ck_assert_int_eq(msgbus_msg_timestamp(m), ts);
    ck_assert_str_eq(msgbus_msg_header(m, "content-type"), "text/plain");
    size_t n;
    const char *body = msgbus_msg_payload(m, &n);
    ck_assert(n == 5 && memcmp(body, "hello", 5) == 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
}

START_TEST(foreign_events_under_every_prefix)
{
    char topic[128];
    tu_unique(topic, sizeof topic, "amqp21-ce-in");
    msgbus_t *bus = open_bus("ce_source=" SOURCE);
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    raw_open();

    amqp_field_value_t t;
    memset(&t, 0, sizeof t);
    t.kind = AMQP_FIELD_KIND_UTF8;
    t.value.bytes = amqp_cstring_bytes("2023-11-14T22:13:20.250Z");
    send_binary(topic, "cloudEvents_", "in-underscore", t);
    t.kind = AMQP_FIELD_KIND_TIMESTAMP; /* seconds */
    t.value.u64 = 1700000000;
    send_binary(topic, "cloudEvents:", "in-colon", t);
    t.kind = AMQP_FIELD_KIND_I64; /* milliseconds */
    t.value.i64 = 1700000000777LL;
    send_binary(topic, "ce-", "in-dash", t);
    t.kind = AMQP_FIELD_KIND_UTF8;
    t.value.bytes = amqp_cstring_bytes("2023-11-14T22:13:20Z");
    send_binary(topic, "CE-", "in-dash-upper", t);
    expect_foreign(sub, "in-underscore", 1700000000250LL);
    expect_foreign(sub, "in-colon", 1700000000000LL);
    expect_foreign(sub, "in-dash", 1700000000777LL);
    expect_foreign(sub, "in-dash-upper", 1700000000000LL);
    printf("foreign binary: 4 prefixes read (cloudEvents_, cloudEvents:, ce-, CE-)\n");

    /* Structured, with the basic properties a foreign client sets. */
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
               AMQP_BASIC_TYPE_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_REPLY_TO_FLAG;
    p.content_type = amqp_cstring_bytes("application/cloudevents+json");
    p.correlation_id = amqp_cstring_bytes("corr-9");
    p.type = amqp_cstring_bytes("legacy.type");
    p.app_id = amqp_cstring_bytes("shop");
    p.reply_to = amqp_cstring_bytes("replies");
    raw_send(topic, &p,
             "{\"specversion\":\"1.0\",\"id\":\"in-structured\",\"type\":\"com.example.foreign\","
             "\"source\":\"/foreign/producer\",\"time\":\"2023-11-14T22:13:20.5Z\","
             "\"datacontenttype\":\"text/plain\",\"data\":\"hello\",\"region\":\"eu\"}");
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_str_eq(msgbus_msg_id(m), "in-structured");
    ck_assert_str_eq(msgbus_msg_type(m), "com.example.foreign");
    ck_assert_str_eq(msgbus_msg_source(m), "/foreign/producer");
    ck_assert_int_eq(msgbus_msg_timestamp(m), 1700000000500LL);
    ck_assert_str_eq(msgbus_msg_header(m, "content-type"), "text/plain");
    ck_assert_str_eq(msgbus_msg_header(m, "ce_region"), "eu");
    ck_assert_str_eq(msgbus_msg_header(m, "amqp-correlation-id"), "corr-9");
    ck_assert_str_eq(msgbus_msg_header(m, "amqp-type"), "legacy.type");
    ck_assert_str_eq(msgbus_msg_header(m, "amqp-app-id"), "shop");
    ck_assert_str_eq(msgbus_msg_header(m, "amqp-reply-to"), "replies");
    size_t n;
    const char *body = msgbus_msg_payload(m, &n);
    ck_assert(n == 5 && memcmp(body, "hello", 5) == 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    printf("foreign structured: unpacked; 4 properties shown as headers\n");

    /* A broken structured body: delivered as sent, marked. */
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    p.content_type = amqp_cstring_bytes("application/cloudevents+json");
    p.message_id = amqp_cstring_bytes("in-broken");
    raw_send(topic, &p, "{\"specversion\":");
    m = tu_receive(sub, 10000);
    ck_assert_str_eq(msgbus_msg_id(m), "in-broken");
    ck_assert_ptr_nonnull(msgbus_msg_header(m, "msgbus-invalid-cloudevent"));
    body = msgbus_msg_payload(m, &n);
    ck_assert(n == 15 && memcmp(body, "{\"specversion\":", 15) == 0);
    printf("broken structured: delivered, msgbus-invalid-cloudevent: %s\n",
           msgbus_msg_header(m, "msgbus-invalid-cloudevent"));
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    raw_close();
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(msgbus_reads_its_own_events_in_every_mode)
{
    const char *modes[] = {"binary", "structured", "off"};
    for (int i = 0; i < 3; i++) {
        char topic[128], opts[128];
        tu_unique(topic, sizeof topic, "amqp21-ce-self");
        snprintf(opts, sizeof opts, "cloudevents=%s&ce_source=" SOURCE, modes[i]);
        msgbus_t *bus = open_bus(opts);
        msgbus_sub_t *sub;
        tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
        publish_one(bus, topic, event("self-1", 1700000000123LL));
        msgbus_msg_t *m = tu_receive(sub, 10000);
        ck_assert_str_eq(msgbus_msg_id(m), "self-1");
        ck_assert_int_eq(msgbus_msg_timestamp(m), 1700000000123LL);
        ck_assert_str_eq(msgbus_msg_header(m, "content-type"), "application/json");
        ck_assert_str_eq(msgbus_msg_header(m, "ce_tenant"), "acme");
        ck_assert_str_eq(msgbus_msg_header(m, "trace"), "abc");
        size_t kl = 9, n;
        ck_assert_ptr_nonnull(msgbus_msg_key(m, &kl));
        ck_assert_uint_eq(kl, 0);
        const char *body = msgbus_msg_payload(m, &n);
        ck_assert(n == 12 && memcmp(body, "{\"total\":42}", 12) == 0);
        if (i < 2) {
            ck_assert_str_eq(msgbus_msg_type(m), "com.example.order.paid");
            ck_assert_str_eq(msgbus_msg_source(m), SOURCE);
            ck_assert_str_eq(msgbus_msg_subject(m), "order/17");
        } else {
            ck_assert_ptr_null(msgbus_msg_type(m));
        }
        ck_assert_uint_eq(msgbus_msg_header_count(m), 3);
        printf("%s: msgbus reads back id, time, key, payload, 3 headers%s\n", modes[i],
               i < 2 ? ", type, source, subject" : "");
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
        msgbus_sub_close(sub);
        msgbus_close(bus);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cloudevents_amqp");
    TCase *tc = tcase_create("amqp");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, binary_events_as_a_foreign_consumer_sees_them);
    tcase_add_test(tc, structured_and_off);
    tcase_add_test(tc, retry_copies_and_dead_letters_write_strings);
    tcase_add_test(tc, foreign_events_under_every_prefix);
    tcase_add_test(tc, msgbus_reads_its_own_events_in_every_mode);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
