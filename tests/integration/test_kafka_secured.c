/*
 * test_kafka_secured.c — the Kafka backend against the broker's SASL_SSL
 * listener (SCRAM-SHA-512 over TLS, scripts/brokers, docs/brokers.md
 * "Secured listeners"):
 *  - MSGBUS_TEST_KAFKA_SASL_URL (user:password@ plus ssl.ca.location)
 *    opens, declares, publishes with a confirm, subscribes as a group,
 *    receives and acks;
 *  - a wrong password is MSGBUS_ERR_AUTH naming the SASL failure from
 *    msgbus_open, within a few seconds, the password nowhere in the error
 *    or the log (at debug level);
 *  - an untrusted broker certificate is MSGBUS_ERR_CONNECT naming TLS
 *    certificate verification, fast;
 *  - a plaintext client on the SASL_SSL listener is MSGBUS_ERR_CONNECT
 *    saying the listener may need TLS/SASL, fast;
 *  - a TLS client on the plaintext listener is MSGBUS_ERR_CONNECT saying
 *    the TLS handshake failed, fast.
 * Every URL comes from scripts/brokers' .brokers/env; a missing one is a
 * failure, never a skip (docs/kafka.md, "Security").
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Fast: librdkafka reports these within about half a second; the
 * connect timeout (10 s) must not be what ends the wait. */
#define FAST_MS 5000

static const char *need_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        fprintf(stderr, "%s is not set: run scripts/brokers up and . .brokers/env "
                        "(the secured Kafka listener, docs/brokers.md)\n", name);
        exit(1);
    }
    return v;
}

/* Every log line at every level, checked for the password. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static const char *log_secret;
static int log_leaks, log_lines;

static void on_log(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    (void)level;
    pthread_mutex_lock(&log_mu);
    log_lines++;
    if (log_secret && strstr(line, log_secret)) {
        log_leaks++;
        fprintf(stderr, "LEAK in log line: (withheld)\n");
    }
    pthread_mutex_unlock(&log_mu);
}

static void watch_log(const char *secret)
{
    pthread_mutex_lock(&log_mu);
    log_secret = secret;
    log_leaks = log_lines = 0;
    pthread_mutex_unlock(&log_mu);
    msgbus_set_log(on_log, NULL, MSGBUS_LOG_DEBUG);
}

static void check_log_clean(void)
{
    msgbus_set_log(NULL, NULL, MSGBUS_LOG_WARN);
    pthread_mutex_lock(&log_mu);
    int leaks = log_leaks, lines = log_lines;
    pthread_mutex_unlock(&log_mu);
    printf("log: %d lines at debug level, %d with the secret\n", lines, leaks);
    ck_assert_int_eq(leaks, 0);
}

/* Opens `url`, expects `want` within FAST_MS with every needle (NULL
 * terminated) in the error detail and `secret` (may be NULL) nowhere. */
static void expect_fast_failure(const char *what, const char *url, msgbus_err_t want,
                                const char *secret, const char *const *needles)
{
    watch_log(secret);
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    int64_t ms = tu_now_ms() - t0;
    char detail[1024];
    snprintf(detail, sizeof detail, "%s", msgbus_last_error());
    if (bus)
        msgbus_close(bus);
    printf("%s: %s after %lld ms: %s\n", what, msgbus_err_name(e), (long long)ms,
           secret && strstr(detail, secret) ? "(withheld: holds the secret)" : detail);
    fflush(stdout);
    ck_assert_msg(e == want, "%s: got %s, want %s", what, msgbus_err_name(e), msgbus_err_name(want));
    ck_assert_ptr_null(bus);
    ck_assert_msg(ms < FAST_MS, "%s: took %lld ms", what, (long long)ms);
    for (size_t i = 0; needles[i]; i++)
        ck_assert_msg(strstr(detail, needles[i]), "%s: '%s' missing from the error", what,
                      needles[i]);
    if (secret)
        ck_assert_msg(!strstr(detail, secret), "%s: the password is in the error", what);
    check_log_clean();
}

static void on_report(void *opaque, const msgbus_report_t *r)
{
    msgbus_err_t *st = opaque;
    *st = r->status;
    if (r->status != MSGBUS_OK)
        printf("report: %s: %s\n", msgbus_err_name(r->status), r->error);
}

START_TEST(sasl_ssl_url_round_trip)
{
    const char *url = need_env("MSGBUS_TEST_KAFKA_SASL_URL");
    const char *pw = need_env("MSGBUS_TEST_KAFKA_SASL_PASSWORD");
    watch_log(pw);
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "sasl");
    tu_unique(group, sizeof group, "sasl-g");
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    printf("open over SASL_SSL: %lld ms, url %s\n", (long long)(tu_now_ms() - t0),
           msgbus_url(bus));
    ck_assert_ptr_null(strstr(msgbus_url(bus), pw));
    tu_ck_ok(msgbus_declare(bus, topic, group));

    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "secured", 7));
    char id[64];
    snprintf(id, sizeof id, "%s", msgbus_msg_id(m));
    msgbus_err_t st = MSGBUS_ERR_INTERNAL;
    tu_ck_ok(msgbus_publish(bus, topic, m, on_report, &st));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 15000, NULL));
    tu_ck_ok(st);

    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *got = tu_receive(sub, 15000);
    ck_assert_ptr_nonnull(got);
    size_t len;
    const char *p = msgbus_msg_payload(got, &len);
    ck_assert_int_eq((int)len, 7);
    ck_assert_int_eq(memcmp(p, "secured", 7), 0);
    ck_assert_str_eq(msgbus_msg_id(got), id);
    tu_ck_ok(msgbus_ack(got));
    msgbus_msg_free(got);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    printf("round trip over SASL_SSL: %lld ms\n", (long long)(tu_now_ms() - t0));
    check_log_clean();
}
END_TEST

START_TEST(wrong_password_is_auth_fast)
{
    const char *user = need_env("MSGBUS_TEST_KAFKA_SASL_USER");
    const char *host = need_env("MSGBUS_TEST_KAFKA_SASL_HOST");
    const char *ca = need_env("MSGBUS_TEST_TLS_CA");
    const char *bad = "Wr0ngPassw0rdNotTheBrokers";
    char url[1024];
    snprintf(url, sizeof url, "kafka://%s:%s@%s?ssl.ca.location=%s", user, bad, host, ca);
    static const char *const needles[] = {"SASL authentication", "SCRAM-SHA-512", NULL};
    expect_fast_failure("wrong password", url, MSGBUS_ERR_AUTH, bad, needles);
    /* The same through the environment variable form. */
    char url2[1024];
    snprintf(url2, sizeof url2, "kafka://%s?ssl.ca.location=%s&sasl.username=%s", host, ca, user);
    setenv("MSGBUS_KAFKA_SASL_PASSWORD", bad, 1);
    expect_fast_failure("wrong password (MSGBUS_KAFKA_SASL_PASSWORD)", url2, MSGBUS_ERR_AUTH, bad,
                        needles);
    unsetenv("MSGBUS_KAFKA_SASL_PASSWORD");
}
END_TEST

START_TEST(untrusted_certificate_is_tls_verification)
{
    const char *user = need_env("MSGBUS_TEST_KAFKA_SASL_USER");
    const char *pw = need_env("MSGBUS_TEST_KAFKA_SASL_PASSWORD");
    const char *host = need_env("MSGBUS_TEST_KAFKA_SASL_HOST");
    const char *other = need_env("MSGBUS_TEST_TLS_OTHER_CA");
    char url[1024];
    snprintf(url, sizeof url, "kafka://%s:%s@%s?ssl.ca.location=%s", user, pw, host, other);
    static const char *const needles[] = {"TLS", "certificate verif", NULL};
    expect_fast_failure("untrusted certificate", url, MSGBUS_ERR_CONNECT, pw, needles);
}
END_TEST

START_TEST(plaintext_client_on_sasl_ssl_listener)
{
    const char *host = need_env("MSGBUS_TEST_KAFKA_SASL_HOST");
    char url[512];
    snprintf(url, sizeof url, "kafka://%s", host);
    static const char *const needles[] = {"ApiVersion", "may require TLS or SASL", NULL};
    expect_fast_failure("plaintext client on SASL_SSL", url, MSGBUS_ERR_CONNECT, NULL, needles);
}
END_TEST

START_TEST(tls_client_on_plaintext_listener)
{
    const char *plain = tu_broker_url("kafka"); /* kafka://127.0.0.1:9092 */
    const char *ca = need_env("MSGBUS_TEST_TLS_CA");
    char url[1024];
    snprintf(url, sizeof url, "%s%ssecurity.protocol=SSL&ssl.ca.location=%s", plain,
             strchr(plain, '?') ? "&" : "?", ca);
    static const char *const needles[] = {"TLS handshake failed", "not TLS", NULL};
    expect_fast_failure("TLS client on plaintext", url, MSGBUS_ERR_CONNECT, NULL, needles);
}
END_TEST

int main(void)
{
    need_env("MSGBUS_TEST_KAFKA_SASL_URL");
    Suite *s = suite_create("kafka_secured");
    TCase *tc = tcase_create("sasl_ssl");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, sasl_ssl_url_round_trip);
    tcase_add_test(tc, wrong_password_is_auth_fast);
    tcase_add_test(tc, untrusted_certificate_is_tls_verification);
    tcase_add_test(tc, plaintext_client_on_sasl_ssl_listener);
    tcase_add_test(tc, tls_client_on_plaintext_listener);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
