/*
 * test_cloudevents.c — the core half of CloudEvents (src/core/cloudevents.c)
 * without a broker: the per-message attributes and their rule, the bus
 * options, the values a publish writes, the structured form both ways, and
 * the trust boundary for attributes that arrive. The bindings' halves are
 * tested with their backends; the real SDK in tests/python.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "core/bus.h"
#include "core/msg.h"

static msgbus_t *open_mem(const char *extra)
{
    char url[300], name[64];
    tu_unique(name, sizeof name, "ce");
    snprintf(url, sizeof url, "mem://%s%s", name, extra ? extra : "");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

static msgbus_msg_t *new_msg(const char *payload)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
    return m;
}

START_TEST(attributes_follow_their_rule)
{
    msgbus_msg_t *m = new_msg("x");
    ck_assert_ptr_null(msgbus_msg_type(m));
    tu_ck_ok(msgbus_msg_set_type(m, "com.example.order.créé"));
    tu_ck_ok(msgbus_msg_set_source(m, "//shop/orders"));
    tu_ck_ok(msgbus_msg_set_subject(m, "order-42"));
    ck_assert_str_eq(msgbus_msg_type(m), "com.example.order.créé");
    ck_assert_str_eq(msgbus_msg_source(m), "//shop/orders");
    ck_assert_str_eq(msgbus_msg_subject(m), "order-42");
    char big[MSGBUS_MAX_CE_ATTR + 2];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    const char *bad[] = {"", "a\nb", "tab\there", "\x7f", "\xc3", "\xc2\x85", "\xed\xa0\x80",
                         "\xf4\x90\x80\x80", big};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tu_ck_err(msgbus_msg_set_type(m, bad[i]), MSGBUS_ERR_INVALID);
        ck_assert_msg(strstr(msgbus_last_error(), "CloudEvents type"), "%s", msgbus_last_error());
    }
    big[MSGBUS_MAX_CE_ATTR] = '\0';
    tu_ck_ok(msgbus_msg_set_subject(m, big)); /* exactly the limit */
    ck_assert_str_eq(msgbus_msg_type(m), "com.example.order.créé"); /* unchanged */
    tu_ck_ok(msgbus_msg_set_type(m, NULL));
    ck_assert_ptr_null(msgbus_msg_type(m));
    tu_ck_err(msgbus_msg_set_type(NULL, "t"), MSGBUS_ERR_INVALID);
    ck_assert_ptr_null(msgbus_msg_source(NULL));
    msgbus_msg_free(m);
}
END_TEST

START_TEST(bus_options_are_checked)
{
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, "mem://ce-opt?cloudevents=always", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "cloudevents"), "%s", msgbus_last_error());
    tu_ck_err(msgbus_open(&bus, "mem://ce-opt?ce_source=a%01b", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "ce_source"), "%s", msgbus_last_error());
    ck_assert_ptr_null(bus);
    bus = open_mem("?cloudevents=structured&ce_source=//here/svc");
    ck_assert_int_eq(mb_bus_ce_mode(bus), MB_CE_STRUCTURED);
    msgbus_close(bus);
    bus = open_mem("?cloudevents=off");
    ck_assert_int_eq(mb_bus_ce_mode(bus), MB_CE_OFF);
    msgbus_close(bus);
}
END_TEST

START_TEST(a_publish_writes_the_defaults_or_the_message_own)
{
    msgbus_t *bus = open_mem(NULL);
    msgbus_msg_t *m = new_msg("x");
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1796630400500LL));
    struct mb_ce_attrs a;
    mb_ce_attrs(bus, "orders", m, &a);
    ck_assert_str_eq(a.id, msgbus_msg_id(m));
    ck_assert_str_eq(a.type, "orders");
    char host[256] = "";
    gethostname(host, sizeof host);
    char want[300];
    snprintf(want, sizeof want, "//%s/", host);
    ck_assert_msg(strncmp(a.source, want, strlen(want)) == 0, "default source %s", a.source);
    ck_assert_str_eq(a.time, "2026-12-07T08:00:00.500Z");
    ck_assert_ptr_null(a.subject);
    ck_assert_ptr_null(a.datacontenttype);
    tu_ck_ok(msgbus_msg_set_type(m, "t.own"));
    tu_ck_ok(msgbus_msg_set_source(m, "//own"));
    tu_ck_ok(msgbus_msg_set_subject(m, "s"));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
    mb_ce_attrs(bus, "orders", m, &a);
    ck_assert_str_eq(a.type, "t.own");
    ck_assert_str_eq(a.source, "//own");
    ck_assert_str_eq(a.subject, "s");
    ck_assert_str_eq(a.datacontenttype, "text/plain");
    /* Past year 9999 RFC 3339 has no form: no time is written. */
    tu_ck_ok(msgbus_msg_set_timestamp(m, MB_CE_MAX_TIME_MS + 1));
    mb_ce_attrs(bus, "orders", m, &a);
    ck_assert_str_eq(a.time, "");
    char *json = NULL;
    size_t jlen = 0;
    tu_ck_ok(mb_ce_structured(bus, "orders", m, &json, &jlen));
    ck_assert_msg(!strstr(json, "\"time\""), "%s", json);
    free(json);
    tu_ck_ok(msgbus_msg_set_timestamp(m, MB_CE_MAX_TIME_MS));
    mb_ce_attrs(bus, "orders", m, &a);
    ck_assert_str_eq(a.time, "9999-12-31T23:59:59.999Z");
    const char *attr;
    ck_assert(mb_ce_extension_header("ce_traceparent", &attr) && strcmp(attr, "traceparent") == 0);
    ck_assert(!mb_ce_extension_header("ce_type", &attr));
    ck_assert(!mb_ce_extension_header("ce_Trace", &attr));
    ck_assert(!mb_ce_extension_header("ce_", &attr));
    ck_assert(!mb_ce_extension_header("x-ce_a", &attr));
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

/* Encodes `m` structured, parses it back as a received message. */
static msgbus_msg_t *round_trip(msgbus_t *bus, const msgbus_msg_t *m, json_t **as_json)
{
    char *text = NULL;
    size_t len = 0;
    tu_ck_ok(mb_ce_structured(bus, "orders", m, &text, &len));
    json_error_t je;
    *as_json = json_loadb(text, len, 0, &je);
    ck_assert_msg(*as_json, "structured JSON: %s", je.text);
    msgbus_msg_t *in = mb_msg_alloc();
    tu_ck_ok(msgbus_msg_set_payload(in, text, len));
    free(text);
    const char *ct = "application/cloudevents+json; charset=utf-8";
    tu_ck_ok(mb_msg_received_header(in, "content-type", 12, ct, strlen(ct)));
    tu_ck_ok(mb_msg_ce_unpack(in));
    ck_assert_ptr_null(msgbus_msg_header(in, MB_H_INVALID_CE));
    return in;
}

START_TEST(structured_round_trips_json_text_and_binary_data)
{
    msgbus_t *bus = open_mem("?ce_source=//test/ce");
    /* JSON data is embedded as JSON. */
    msgbus_msg_t *m = new_msg("{\"n\": 1}");
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "ce_traceparent", "00-abc-01"));
    tu_ck_ok(msgbus_msg_set_header(m, "other", "kept as a header, not an attribute"));
    tu_ck_ok(msgbus_msg_set_subject(m, "order-42"));
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1000));
    json_t *o;
    msgbus_msg_t *in = round_trip(bus, m, &o);
    ck_assert_str_eq(json_string_value(json_object_get(o, "specversion")), "1.0");
    ck_assert_str_eq(json_string_value(json_object_get(o, "id")), msgbus_msg_id(m));
    ck_assert_str_eq(json_string_value(json_object_get(o, "source")), "//test/ce");
    ck_assert_str_eq(json_string_value(json_object_get(o, "type")), "orders");
    ck_assert_str_eq(json_string_value(json_object_get(o, "time")), "1970-01-01T00:00:01.000Z");
    ck_assert_str_eq(json_string_value(json_object_get(o, "traceparent")), "00-abc-01");
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(o, "data"), "n")), 1);
    ck_assert_ptr_null(json_object_get(o, "other"));
    json_decref(o);
    ck_assert_str_eq(msgbus_msg_id(in), msgbus_msg_id(m));
    ck_assert_str_eq(msgbus_msg_type(in), "orders");
    ck_assert_str_eq(msgbus_msg_source(in), "//test/ce");
    ck_assert_str_eq(msgbus_msg_subject(in), "order-42");
    ck_assert_int_eq(msgbus_msg_timestamp(in), 1000);
    ck_assert_str_eq(msgbus_msg_header(in, "content-type"), "application/json");
    ck_assert_str_eq(msgbus_msg_header(in, "ce_traceparent"), "00-abc-01");
    size_t len;
    const char *p = msgbus_msg_payload(in, &len);
    ck_assert_msg(len == 7 && memcmp(p, "{\"n\":1}", 7) == 0, "data %.*s", (int)len, p);
    msgbus_msg_free(in);

    /* Text of another type is a JSON string; bytes are data_base64. */
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "text/plain"));
    tu_ck_ok(msgbus_msg_set_payload(m, "héllo", strlen("héllo")));
    in = round_trip(bus, m, &o);
    ck_assert_str_eq(json_string_value(json_object_get(o, "data")), "héllo");
    json_decref(o);
    p = msgbus_msg_payload(in, &len);
    ck_assert(len == strlen("héllo") && memcmp(p, "héllo", len) == 0);
    msgbus_msg_free(in);
    const unsigned char bin[] = {0, 1, 2, 0xff, 0xfe};
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/octet-stream"));
    tu_ck_ok(msgbus_msg_set_payload(m, bin, sizeof bin));
    in = round_trip(bus, m, &o);
    ck_assert_str_eq(json_string_value(json_object_get(o, "data_base64")), "AAEC//4=");
    json_decref(o);
    p = msgbus_msg_payload(in, &len);
    ck_assert(len == sizeof bin && memcmp(p, bin, len) == 0);
    msgbus_msg_free(in);
    /* JSON content type whose payload is not JSON: kept exact (base64). */
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_payload(m, "{not json", 9));
    in = round_trip(bus, m, &o);
    ck_assert_ptr_nonnull(json_object_get(o, "data_base64"));
    json_decref(o);
    p = msgbus_msg_payload(in, &len);
    ck_assert(len == 9 && memcmp(p, "{not json", 9) == 0);
    msgbus_msg_free(in);
    /* Empty payload. */
    tu_ck_ok(msgbus_msg_del_header(m, "content-type"));
    tu_ck_ok(msgbus_msg_set_payload(m, "", 0));
    in = round_trip(bus, m, &o);
    json_decref(o);
    ck_assert_ptr_null(msgbus_msg_header(in, "content-type"));
    msgbus_msg_payload(in, &len);
    ck_assert_uint_eq(len, 0);
    msgbus_msg_free(in);
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

static msgbus_msg_t *structured_in(const char *json)
{
    msgbus_msg_t *in = mb_msg_alloc();
    tu_ck_ok(msgbus_msg_set_payload(in, json, strlen(json)));
    tu_ck_ok(mb_msg_received_header(in, "content-type", 12, "application/cloudevents+json", 28));
    tu_ck_ok(mb_msg_ce_unpack(in));
    return in;
}

START_TEST(a_broken_structured_event_arrives_as_it_was_with_a_reason)
{
    static const char *const bad[][2] = {
        {"{", "not a JSON object"},
        {"[1]", "not a JSON object"},
        {"{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\"}", "'type'"},
        {"{\"specversion\":\"1.0\",\"id\":1,\"source\":\"s\",\"type\":\"t\"}", "'id'"},
        {"{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\",\"type\":\"t\",\"data\":1,"
         "\"data_base64\":\"AA==\"}",
         "both"},
        {"{\"specversion\":\"1.0\",\"id\":\"a\",\"source\":\"s\",\"type\":\"t\","
         "\"data_base64\":\"!!\"}",
         "base64"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        msgbus_msg_t *in = structured_in(bad[i][0]);
        const char *why = msgbus_msg_header(in, MB_H_INVALID_CE);
        ck_assert_msg(why && strstr(why, bad[i][1]), "case %zu: %s", i, why ? why : "(none)");
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        ck_assert(len == strlen(bad[i][0]) && memcmp(p, bad[i][0], len) == 0);
        ck_assert_str_eq(msgbus_msg_header(in, "content-type"), "application/cloudevents+json");
        ck_assert_ptr_null(msgbus_msg_id(in));
        msgbus_msg_free(in);
    }
    /* A foreign event: an extension as a number, a bad time kept visible,
     * an id that fails the id rule recorded, a non-JSON text data. */
    msgbus_msg_t *in = structured_in(
        "{\"specversion\":\"1.0\",\"id\":\"has space\",\"source\":\"//x\",\"type\":\"t\","
        "\"time\":\"yesterday\",\"priority\":5,\"datacontenttype\":\"text/plain\","
        "\"data\":\"hi\"}");
    ck_assert_ptr_null(msgbus_msg_header(in, MB_H_INVALID_CE));
    ck_assert_ptr_null(msgbus_msg_id(in));
    ck_assert_ptr_nonnull(msgbus_msg_header(in, MB_H_INVALID_ID));
    ck_assert_str_eq(msgbus_msg_header(in, "ce_time"), "yesterday");
    ck_assert_str_eq(msgbus_msg_header(in, "ce_priority"), "5");
    ck_assert_str_eq(msgbus_msg_header(in, "content-type"), "text/plain");
    size_t len;
    const char *p = msgbus_msg_payload(in, &len);
    ck_assert(len == 2 && memcmp(p, "hi", 2) == 0);
    msgbus_msg_free(in);
    /* Another content type: left alone. */
    in = mb_msg_alloc();
    tu_ck_ok(msgbus_msg_set_payload(in, "{}", 2));
    tu_ck_ok(mb_msg_received_header(in, "content-type", 12, "application/json", 16));
    tu_ck_ok(mb_msg_ce_unpack(in));
    ck_assert_ptr_null(msgbus_msg_header(in, MB_H_INVALID_CE));
    msgbus_msg_free(in);
}
END_TEST

START_TEST(received_attributes_cross_the_trust_boundary)
{
    msgbus_msg_t *in = mb_msg_alloc();
    tu_ck_ok(mb_msg_received_ce(in, "id", 2, "abc-1", 5));
    tu_ck_ok(mb_msg_received_ce(in, "specversion", 11, "1.0", 3));
    tu_ck_ok(mb_msg_received_ce(in, "TYPE", 4, "t", 1)); /* HTTP-style names: any case */
    tu_ck_ok(mb_msg_received_ce(in, "source", 6, "bad\nsource", 10));
    tu_ck_ok(mb_msg_received_ce(in, "subject", 7, "s", 1));
    tu_ck_ok(mb_msg_received_ce(in, "time", 4, "2026-12-07T09:00:00.5+01:00", 27));
    tu_ck_ok(mb_msg_received_ce(in, "datacontenttype", 15, "application/xml", 15));
    tu_ck_ok(mb_msg_received_ce(in, "Comexampleext", 13, "v", 1));
    tu_ck_ok(mb_msg_received_ce(in, "specversion", 11, "0.3", 3));
    tu_ck_ok(mb_msg_received_ce(in, "ext", 3, "nul\0inside", 10));
    ck_assert_str_eq(msgbus_msg_id(in), "abc-1");
    ck_assert_str_eq(msgbus_msg_type(in), "t");
    ck_assert_ptr_null(msgbus_msg_source(in));
    ck_assert_str_eq(msgbus_msg_header(in, "ce_source"), "bad\nsource");
    ck_assert_str_eq(msgbus_msg_subject(in), "s");
    ck_assert_int_eq(msgbus_msg_timestamp(in), 1796630400500LL);
    ck_assert_str_eq(msgbus_msg_header(in, "content-type"), "application/xml");
    ck_assert_str_eq(msgbus_msg_header(in, "ce_comexampleext"), "v");
    ck_assert_str_eq(msgbus_msg_header(in, "ce_specversion"), "0.3");
    ck_assert_ptr_null(msgbus_msg_header(in, "ce_ext"));
    ck_assert_str_eq(msgbus_msg_header(in, "msgbus-invalid-headers"), "1");
    /* A second, different id: no id, both recorded. */
    tu_ck_ok(mb_msg_received_ce(in, "id", 2, "abc-2", 5));
    ck_assert_ptr_null(msgbus_msg_id(in));
    msgbus_msg_free(in);
}
END_TEST

START_TEST(mem_delivers_the_attributes_and_the_defaults)
{
    msgbus_t *bus = open_mem("?ce_source=//mem/test");
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, "orders", "g", &sub));
    msgbus_msg_t *m = new_msg("a");
    tu_ck_ok(msgbus_publish(bus, "orders", m, NULL, NULL));
    tu_ck_ok(msgbus_msg_set_type(m, "t.own"));
    tu_ck_ok(msgbus_msg_set_subject(m, "subj"));
    tu_ck_ok(msgbus_publish(bus, "orders", m, NULL, NULL));
    msgbus_msg_free(m);
    msgbus_msg_t *in = tu_receive(sub, 5000);
    ck_assert_str_eq(msgbus_msg_type(in), "orders");
    ck_assert_str_eq(msgbus_msg_source(in), "//mem/test");
    ck_assert_ptr_null(msgbus_msg_subject(in));
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    in = tu_receive(sub, 5000);
    ck_assert_str_eq(msgbus_msg_type(in), "t.own");
    ck_assert_str_eq(msgbus_msg_subject(in), "subj");
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cloudevents");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, attributes_follow_their_rule);
    tcase_add_test(tc, bus_options_are_checked);
    tcase_add_test(tc, a_publish_writes_the_defaults_or_the_message_own);
    tcase_add_test(tc, structured_round_trips_json_text_and_binary_data);
    tcase_add_test(tc, a_broken_structured_event_arrives_as_it_was_with_a_reason);
    tcase_add_test(tc, received_attributes_cross_the_trust_boundary);
    tcase_add_test(tc, mem_delivers_the_attributes_and_the_defaults);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
