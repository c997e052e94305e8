/*
 * test_url.c — URL parsing: good URLs give the parts they should, bad ones
 * give MSGBUS_ERR_CONFIG with a detail naming the problem and never the
 * password.
 */
#include <stdlib.h>
#include <string.h>

#include "core/url.h"
#include "testutil.h"

static struct mb_url *parse_ok(const char *text)
{
    struct mb_url *u = NULL;
    msgbus_err_t e = mb_url_parse(text, &u);
    ck_assert_msg(e == MSGBUS_OK, "'%s' should parse: %s", text, msgbus_last_error());
    return u;
}

START_TEST(kafka_host_list)
{
    struct mb_url *u = parse_ok("kafka://h1:9092,h2:9093,h3");
    ck_assert_str_eq(u->scheme, "kafka");
    ck_assert_uint_eq(u->nhosts, 3);
    ck_assert_str_eq(u->hosts[0].host, "h1");
    ck_assert_int_eq(u->hosts[0].port, 9092);
    ck_assert_str_eq(u->hosts[1].host, "h2");
    ck_assert_int_eq(u->hosts[1].port, 9093);
    ck_assert_int_eq(u->hosts[2].port, 0);
    ck_assert_ptr_null(u->user);
    mb_url_free(u);
}
END_TEST

START_TEST(amqp_credentials_vhost_and_options)
{
    struct mb_url *u = parse_ok("amqp://alice:s3cret@rabbit:5672/prod%2Fv?prefetch=500&heartbeat=30");
    ck_assert_str_eq(u->user, "alice");
    ck_assert_str_eq(u->password, "s3cret");
    ck_assert_str_eq(u->path, "prod/v");
    ck_assert(u->has_path);
    ck_assert_uint_eq(u->nopts, 2);
    ck_assert_str_eq(mb_url_opt(u, "prefetch"), "500");
    ck_assert_str_eq(mb_url_opt(u, "heartbeat"), "30");
    ck_assert_ptr_null(strstr(u->redacted, "s3cret"));
    ck_assert_str_eq(u->redacted, "amqp://alice:***@rabbit:5672/prod%2Fv?prefetch=500&heartbeat=30");
    mb_url_free(u);
}
END_TEST

START_TEST(percent_decoding_everywhere)
{
    struct mb_url *u = parse_ok("amqp://us%40er:p%3Aw%40d@host/%2F?k%20ey=v%26al");
    ck_assert_str_eq(u->user, "us@er");
    ck_assert_str_eq(u->password, "p:w@d");
    ck_assert_str_eq(u->path, "/");
    ck_assert_str_eq(mb_url_opt(u, "k ey"), "v&al");
    mb_url_free(u);
}
END_TEST

START_TEST(password_with_at_sign_uses_last_at)
{
    struct mb_url *u = parse_ok("amqp://bob:a@b@host:5672/");
    ck_assert_str_eq(u->password, "a@b");
    ck_assert_str_eq(u->hosts[0].host, "host");
    ck_assert_ptr_null(strstr(u->redacted, "a@b"));
    mb_url_free(u);
}
END_TEST

START_TEST(mem_forms)
{
    struct mb_url *u = parse_ok("mem://");
    ck_assert_uint_eq(u->nhosts, 0);
    ck_assert_str_eq(u->path, "");
    mb_url_free(u);
    u = parse_ok("mem://tests");
    ck_assert_uint_eq(u->nhosts, 1);
    ck_assert_str_eq(u->hosts[0].host, "tests");
    mb_url_free(u);
    u = parse_ok("MEM://x?prefetch=5");
    ck_assert_str_eq(u->scheme, "mem");
    mb_url_free(u);
}
END_TEST

START_TEST(ipv6_hosts)
{
    struct mb_url *u = parse_ok("kafka://[::1]:9092,[fe80::1]");
    ck_assert_str_eq(u->hosts[0].host, "::1");
    ck_assert_int_eq(u->hosts[0].port, 9092);
    ck_assert_str_eq(u->hosts[1].host, "fe80::1");
    mb_url_free(u);
}
END_TEST

START_TEST(empty_path_and_query_pieces)
{
    struct mb_url *u = parse_ok("amqp://h/?a=1&&b=");
    ck_assert(u->has_path);
    ck_assert_str_eq(u->path, "");
    ck_assert_str_eq(mb_url_opt(u, "a"), "1");
    ck_assert_str_eq(mb_url_opt(u, "b"), "");
    mb_url_free(u);
}
END_TEST

START_TEST(user_without_password)
{
    struct mb_url *u = parse_ok("amqp://guest@h");
    ck_assert_str_eq(u->user, "guest");
    ck_assert_ptr_null(u->password);
    mb_url_free(u);
}
END_TEST

/* Bad inputs: each must fail with MSGBUS_ERR_CONFIG, a detail containing
 * `needle`, and no secret. */
static const struct {
    const char *url;
    const char *needle;
} bad[] = {
    {"", "empty URL"},
    {"kafka", "expected scheme://"},
    {"://host", "expected scheme://"},
    {"kafka:/host:9092", "expected scheme://"},
    {"1kafka://h", "scheme"},
    {"ka fka://h", "space"},
    {"kafka://h:notaport", "bad port"},
    {"kafka://h:0", "out of range"},
    {"kafka://h:65536", "out of range"},
    {"kafka://h:123456", "bad port"},
    {"kafka://h:", "bad port"},
    {"kafka://h1,,h2", "empty host"},
    {"kafka://h1,", "empty host"},
    {"kafka://:9092", "empty host"},
    {"kafka://[::1", "without ']'"},
    {"kafka://[::1]x", "after ']'"},
    {"kafka://h o", "space"},
    {"kafka://h\tx", "control"},
    {"kafka://ho$t", "bad character"},
    {"amqp://user:secret@/vhost", "credentials but no host"},
    {"amqp://h/v%zz", "bad %-escape"},
    {"amqp://h/v%4", "truncated"},
    {"amqp://h/v%00", "%00"},
    {"amqp://h?novalue", "has no value"},
    {"amqp://h?=1", "empty name"},
    {"amqp://h?a=1&a=2", "given twice"},
    {"amqp://h#frag", "fragments"},
    {"amqp://u:pa%zzss@h", "bad %-escape"},
    {"kafka://h?x=%", "truncated"},
    {"amqp://user:hunter2@h:99999/", "out of range"},
};

START_TEST(bad_urls_are_config_errors_naming_the_problem)
{
    const char *u = bad[_i].url, *needle = bad[_i].needle;
    struct mb_url *out = (struct mb_url *)0x1;
    msgbus_err_t e = mb_url_parse(u, &out);
    ck_assert_msg(e == MSGBUS_ERR_CONFIG, "'%s' should be refused, got %s", u, msgbus_err_name(e));
    ck_assert_ptr_eq(out, (struct mb_url *)0x1); /* untouched on failure */
    ck_assert_msg(strstr(msgbus_last_error(), needle), "'%s': detail '%s' lacks '%s'", u,
                  msgbus_last_error(), needle);
    ck_assert_ptr_null(strstr(msgbus_last_error(), "secret"));
    ck_assert_ptr_null(strstr(msgbus_last_error(), "hunter2"));
}
END_TEST

START_TEST(typed_options)
{
    struct mb_url *u = parse_ok("amqp://h?n=42&neg=-1&big=9999&word=abc&t=true&f=off&b=maybe");
    long v;
    bool b;
    tu_ck_ok(mb_url_opt_int(u, "n", 0, 0, 100, &v));
    ck_assert_int_eq(v, 42);
    tu_ck_ok(mb_url_opt_int(u, "absent", 7, 0, 100, &v));
    ck_assert_int_eq(v, 7);
    tu_ck_err(mb_url_opt_int(u, "neg", 0, 0, 100, &v), MSGBUS_ERR_CONFIG);
    ck_assert(strstr(msgbus_last_error(), "out of range"));
    tu_ck_err(mb_url_opt_int(u, "big", 0, 0, 100, &v), MSGBUS_ERR_CONFIG);
    tu_ck_err(mb_url_opt_int(u, "word", 0, 0, 100, &v), MSGBUS_ERR_CONFIG);
    ck_assert(strstr(msgbus_last_error(), "option 'word'"));
    tu_ck_ok(mb_url_opt_bool(u, "t", false, &b));
    ck_assert(b);
    tu_ck_ok(mb_url_opt_bool(u, "f", true, &b));
    ck_assert(!b);
    tu_ck_err(mb_url_opt_bool(u, "b", true, &b), MSGBUS_ERR_CONFIG);
    ck_assert(strstr(msgbus_last_error(), "'maybe'"));
    mb_url_free(u);
}
END_TEST

START_TEST(unused_option_named_with_suggestion)
{
    static const char *const known[] = {"linger.ms", "prefetch", NULL};
    struct mb_url *u = parse_ok("kafka://h?lingr.ms=5");
    tu_ck_err(mb_url_check_unused(u, known), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "unknown option 'lingr.ms'"), "%s", msgbus_last_error());
    ck_assert_msg(strstr(msgbus_last_error(), "did you mean 'linger.ms'"), "%s", msgbus_last_error());
    mb_url_opt(u, "lingr.ms");
    tu_ck_ok(mb_url_check_unused(u, known));
    mb_url_free(u);
}
END_TEST

START_TEST(env_options_fill_in_and_url_wins)
{
    setenv("MSGBUS_TESTX_LINGER_MS", "7", 1);
    setenv("MSGBUS_TESTX_BATCH_SIZE", "100", 1);
    setenv("MSGBUS_TESTX_RETRY_MAX_ATTEMPTS", "3", 1);
    struct mb_url *u = parse_ok("kafka://h?batch.size=5");
    const char *const keep[] = {"queue_max", "retry_max_attempts", NULL};
    tu_ck_ok(mb_url_add_env(u, "TESTX", '.', keep));
    ck_assert_str_eq(mb_url_opt(u, "linger.ms"), "7");
    /* msgbus's own options keep their '_' on a backend whose separator is '.' */
    ck_assert_str_eq(mb_url_opt(u, "retry_max_attempts"), "3");
    ck_assert_ptr_null(mb_url_opt(u, "retry.max.attempts"));
    unsetenv("MSGBUS_TESTX_RETRY_MAX_ATTEMPTS");
    ck_assert_str_eq(mb_url_opt(u, "batch.size"), "5");
    char origin[128];
    mb_url_opt_origin(u, "linger.ms", origin, sizeof origin);
    ck_assert_str_eq(origin, "MSGBUS_TESTX_LINGER_MS");
    mb_url_free(u);
    unsetenv("MSGBUS_TESTX_LINGER_MS");
    unsetenv("MSGBUS_TESTX_BATCH_SIZE");
}
END_TEST

START_TEST(open_unset_env_is_config_error)
{
    unsetenv("MSGBUS_URL");
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, NULL, NULL), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_null(bus);
    ck_assert(strstr(msgbus_last_error(), "MSGBUS_URL is not set"));
    setenv("MSGBUS_URL", "", 1);
    tu_ck_err(msgbus_open(&bus, NULL, NULL), MSGBUS_ERR_CONFIG);
    unsetenv("MSGBUS_URL");
}
END_TEST

START_TEST(open_reads_env_url)
{
    setenv("MSGBUS_URL", "mem://from-env", 1);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, NULL, NULL));
    ck_assert_str_eq(msgbus_url(bus), "mem://from-env");
    ck_assert_str_eq(msgbus_backend(bus), "mem");
    msgbus_close(bus);
    unsetenv("MSGBUS_URL");
}
END_TEST

START_TEST(open_unknown_scheme_lists_backends)
{
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, "nats://u:topsecret@h:4222", NULL), MSGBUS_ERR_CONFIG);
    ck_assert(strstr(msgbus_last_error(), "unknown scheme 'nats'"));
    ck_assert(strstr(msgbus_last_error(), "mem://"));
    ck_assert_ptr_null(strstr(msgbus_last_error(), "topsecret"));
    ck_assert(strstr(msgbus_last_error(), "u:***@h"));
}
END_TEST

START_TEST(open_unknown_option_suggests)
{
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, "mem://x?prefech=10", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "unknown option 'prefech'"), "%s", msgbus_last_error());
    ck_assert(strstr(msgbus_last_error(), "did you mean 'prefetch'"));
    tu_ck_err(msgbus_open(&bus, "mem://x?queue_max=0", NULL), MSGBUS_ERR_CONFIG);
    ck_assert(strstr(msgbus_last_error(), "queue_max"));
    setenv("MSGBUS_MEM_PREFECH", "3", 1);
    tu_ck_err(msgbus_open(&bus, "mem://x", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "MSGBUS_MEM_PREFECH"), "%s", msgbus_last_error());
    unsetenv("MSGBUS_MEM_PREFECH");
    tu_ck_err(msgbus_open(&bus, "mem://x:5", NULL), MSGBUS_ERR_CONFIG);
    tu_ck_err(msgbus_open(&bus, "mem://u:p@x", NULL), MSGBUS_ERR_CONFIG);
    tu_ck_err(msgbus_open(&bus, "mem://x/path", NULL), MSGBUS_ERR_CONFIG);
    tu_ck_err(msgbus_open(&bus, "mem://x", (void *)1), MSGBUS_ERR_INVALID);
    tu_ck_err(msgbus_open(NULL, "mem://x", NULL), MSGBUS_ERR_INVALID);
    ck_assert_ptr_null(bus);
}
END_TEST

START_TEST(edit_distance)
{
    ck_assert_uint_eq(mb_edit_distance("linger.ms", "lingr.ms"), 1);
    ck_assert_uint_eq(mb_edit_distance("", "abc"), 3);
    ck_assert_uint_eq(mb_edit_distance("same", "same"), 0);
}
END_TEST


START_TEST(secrets_redacted_by_rule_in_url_and_options)
{
    const char *url = "kafka://u:PWone@h:9092?sasl.password=PWtwo&linger.ms=5&ssl.key.password="
                      "PWthree&SASL.PASSWORD=PWfour&sasl.p%61ssword=PWfive&ssl.key.pem=PWsix&"
                      "sasl.oauthbearer.client.secret=PWseven&api_token=PWeight#PWfrag";
    char buf[512];
    size_t n = msgbus_redact(url, buf, sizeof buf);
    ck_assert_uint_eq(n, strlen(buf));
    ck_assert_msg(strstr(buf, "PW") == NULL, "%s", buf);
    ck_assert_str_eq(buf, "kafka://u:***@h:9092?sasl.password=***&linger.ms=5&ssl.key.password=***&"
                          "SASL.PASSWORD=***&sasl.p%61ssword=***&ssl.key.pem=***&"
                          "sasl.oauthbearer.client.secret=***&api_token=***"); /* '#' is part of a value */
    msgbus_redact("sasl.password=PW&x=1&access_token=T", buf, sizeof buf);
    ck_assert_str_eq(buf, "sasl.password=***&x=1&access_token=***");
    msgbus_redact("amqp://guest@h/?heartbeat=30", buf, sizeof buf);
    ck_assert_str_eq(buf, "amqp://guest@h/?heartbeat=30");
    /* Truncated like snprintf, the length of the whole text returned. */
    ck_assert_uint_eq(msgbus_redact("mem://x?password=1234567", buf, 8), 20);
    ck_assert_str_eq(buf, "mem://x");
    ck_assert_uint_eq(msgbus_redact("mem://", NULL, 0), 6);

    struct mb_url *u;
    tu_ck_ok(mb_url_parse("kafka://u:PWone@h:9092?sasl.password=PWtwo&linger.ms=5&ssl.key.pem=PWsix",
                          &u));
    ck_assert_ptr_null(strstr(u->redacted, "PW"));
    ck_assert_ptr_null(strstr(u->redacted, "PWone"));
    mb_url_free(u);
}
END_TEST

START_TEST(secret_names)
{
    static const char *const secret[] = {"sasl.password", "ssl.key.password", "ssl.keystore.password",
                                         "sasl.oauthbearer.client.secret", "ssl.key.pem",
                                         "MSGBUS_KAFKA_SASL_PASSWORD", "MSGBUS_AMQP_PASS",
                                         "api_key", "auth_token", "sasl.oauthbearer.config", "sasl.jaas.config",
                                         NULL};
    static const char *const plain[] = {"linger.ms", "prefetch", "queue_max", "ssl.ca.location",
                                        "MSGBUS_KAFKA_LINGER_MS", "heartbeat", NULL};
    for (size_t i = 0; secret[i]; i++)
        ck_assert_msg(msgbus_secret_name(secret[i]), "%s", secret[i]);
    for (size_t i = 0; plain[i]; i++)
        ck_assert_msg(!msgbus_secret_name(plain[i]), "%s", plain[i]);
    ck_assert(!msgbus_secret_name(NULL));
}
END_TEST

START_TEST(open_errors_never_quote_a_secret_option)
{
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, "mem://x?api_token=SECRETVALUE", NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "api_token"), "%s", msgbus_last_error());
    ck_assert_ptr_null(strstr(msgbus_last_error(), "SECRETVALUE"));
}
END_TEST

START_TEST(names_a_broker_refuses_are_refused_everywhere)
{
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, "mem://names", NULL));
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    static const char *const refused[] = {".", "..", "amq.direct", "amq.x"};
    for (size_t i = 0; i < 4; i++) {
        tu_ck_err(msgbus_publish(bus, refused[i], m, NULL, NULL), MSGBUS_ERR_INVALID);
        ck_assert(strstr(msgbus_last_error(), "amq.*"));
        tu_ck_err(msgbus_declare(bus, "t", refused[i]), MSGBUS_ERR_INVALID);
        msgbus_sub_t *sub = NULL;
        tu_ck_err(msgbus_subscribe(bus, refused[i], NULL, &sub), MSGBUS_ERR_INVALID);
        ck_assert_ptr_null(sub);
    }
    tu_ck_ok(msgbus_publish(bus, "...", m, NULL, NULL)); /* only the two dot names */
    tu_ck_ok(msgbus_publish(bus, "amq", m, NULL, NULL));
    tu_ck_ok(msgbus_publish(bus, "x.amq.y", m, NULL, NULL));
    msgbus_msg_free(m);
    msgbus_close(bus);
}
END_TEST

START_TEST(redaction_has_no_blind_spots)
{
    char buf[512];
    /* A URL inside an option value does not make the list a URL. */
    msgbus_redact("url=https://idp/t&sasl.password=S3", buf, sizeof buf);
    ck_assert_str_eq(buf, "url=https://idp/t&sasl.password=***");
    /* '#' and '?' inside a secret are part of it. */
    msgbus_redact("kafka://u:p#w@h", buf, sizeof buf);
    ck_assert_str_eq(buf, "kafka://u:***@h");
    msgbus_redact("kafka://h?sasl.password=a#b&x=1", buf, sizeof buf);
    ck_assert_str_eq(buf, "kafka://h?sasl.password=***&x=1");
    msgbus_redact("pass=a&q?token=x://y", buf, sizeof buf);
    ck_assert_str_eq(buf, "pass=***&q?token=***"); /* 'q?token' is a name saying token */
    msgbus_redact("kafsl.mechanism=PLAIN://?sasl.password=S3&linger.ms=5", buf, sizeof buf);
    ck_assert_str_eq(buf, "kafsl.mechanism=PLAIN://?sasl.password=***&linger.ms=5");
    msgbus_redact("a=b=sasl.password=S3", buf, sizeof buf);
    ck_assert_str_eq(buf, "a=b=sasl.password=***");
    msgbus_redact("kafka://kafka-auth.internal:9092?linger.ms=5", buf, sizeof buf);
    ck_assert_str_eq(buf, "kafka://kafka-auth.internal:9092?linger.ms=5");
    /* Text that is an option list to one caller and a URL to another. */
    msgbus_redact("x://alissl.key.password.p://h=S3", buf, sizeof buf);
    ck_assert_str_eq(buf, "x://alissl.key.password.p://h=***");
    /* A %00 in a name does not hide the rest of it; nor does length. */
    msgbus_redact("x%00sasl.password=S3", buf, sizeof buf);
    ck_assert_str_eq(buf, "x%00sasl.password=***");
    char longname[700];
    memset(longname, 'a', 600);
    strcpy(longname + 600, "_password=S3");
    ck_assert_uint_eq(msgbus_redact(longname, buf, sizeof buf), 600 + strlen("_password=***"));
    ck_assert_ptr_null(strstr(buf, "S3"));
    msgbus_redact("pass=a&q?token=x://y", buf, sizeof buf);
    /* Redacting twice changes nothing more. */
    char twice[512];
    msgbus_redact(buf, twice, sizeof twice);
    ck_assert_str_eq(twice, buf);
    /* Errors about option lists quote them redacted. */
    struct mb_url *u = NULL;
    tu_ck_err(mb_url_parse_options("sasl.password=S3CRET&bad", &u), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_null(strstr(msgbus_last_error(), "S3CRET"));
    tu_ck_err(mb_url_parse("kafka://u:p#w@h", &u), MSGBUS_ERR_CONFIG);
    ck_assert_ptr_null(strstr(msgbus_last_error(), "p#w"));
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, "mem://redact", NULL));
    msgbus_sub_t *sub = NULL;
    tu_ck_err(msgbus_subscribe_ex(bus, "t", "g", "token=S3CRET&bogus=1", &sub), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "token=***"), "%s", msgbus_last_error());
    ck_assert_ptr_null(strstr(msgbus_last_error(), "S3CRET"));
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("url");
    TCase *tc = tcase_create("parse");
    tcase_add_test(tc, kafka_host_list);
    tcase_add_test(tc, amqp_credentials_vhost_and_options);
    tcase_add_test(tc, percent_decoding_everywhere);
    tcase_add_test(tc, password_with_at_sign_uses_last_at);
    tcase_add_test(tc, mem_forms);
    tcase_add_test(tc, ipv6_hosts);
    tcase_add_test(tc, empty_path_and_query_pieces);
    tcase_add_test(tc, user_without_password);
    tcase_add_loop_test(tc, bad_urls_are_config_errors_naming_the_problem, 0,
                        (int)(sizeof bad / sizeof bad[0]));
    tcase_add_test(tc, typed_options);
    tcase_add_test(tc, unused_option_named_with_suggestion);
    tcase_add_test(tc, env_options_fill_in_and_url_wins);
    tcase_add_test(tc, edit_distance);
    tcase_add_test(tc, secrets_redacted_by_rule_in_url_and_options);
    tcase_add_test(tc, secret_names);
    tcase_add_test(tc, redaction_has_no_blind_spots);
    suite_add_tcase(s, tc);
    TCase *to = tcase_create("open");
    tcase_add_test(to, open_unset_env_is_config_error);
    tcase_add_test(to, open_reads_env_url);
    tcase_add_test(to, open_unknown_scheme_lists_backends);
    tcase_add_test(to, open_unknown_option_suggests);
    tcase_add_test(to, open_errors_never_quote_a_secret_option);
    tcase_add_test(to, names_a_broker_refuses_are_refused_everywhere);
    suite_add_tcase(s, to);
    return tu_run_suite(s);
}
