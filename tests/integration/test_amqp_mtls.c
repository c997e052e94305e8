/*
 * test_amqp_mtls.c — amqps:// with client certificates against the shared
 * RabbitMQ's TLS listener (scripts/brokers: 127.0.0.1:5671, verify_peer,
 * fail_if_no_peer_cert; docs/brokers.md "Secured listeners"). Needs
 * MSGBUS_TEST_AMQPS_URL and the MSGBUS_TEST_TLS_* files from .brokers/env:
 * missing ones are a failure, never a skip. Promises:
 *  - MSGBUS_TEST_AMQPS_URL opens, declares, publishes with a confirm,
 *    subscribes, receives and acks;
 *  - no client certificate → MSGBUS_ERR_AUTH naming the broker's TLS alert
 *    "certificate required", fast (TLS 1.3: the refusal is an alert on the
 *    first read, i.e. at login, not a handshake failure);
 *  - an expired client certificate → MSGBUS_ERR_AUTH naming "certificate
 *    expired", fast;
 *  - a certificate without its key, or with a key that is not its own →
 *    MSGBUS_ERR_CONFIG at open naming the option, before any network I/O
 *    reaches the broker;
 *  - a server certificate not signed by cacert → MSGBUS_ERR_CONNECT naming
 *    certificate verification;
 *  - a plaintext client on the TLS port and a TLS client on the plaintext
 *    port → MSGBUS_ERR_CONNECT saying which scheme to use;
 * each within 5 s, and none of these texts nor any log line (debug level)
 * carries the password.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define SECRET "Mtls-s3cret-pw"
#define FAST_MS 5000

static const char *need(const char *var)
{
    const char *v = getenv(var);
    if (!v || !*v) {
        fprintf(stderr,
                "FAIL: %s is not set: this test needs the shared RabbitMQ's TLS listener. "
                "Run `scripts/brokers up` and source .brokers/env (scripts/test does both).\n",
                var);
        exit(1);
    }
    return v;
}

/* Every log line at debug level, to look for the password in. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int secret_lines;
static void log_cb(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque, (void)level;
    pthread_mutex_lock(&log_lock);
    if (strstr(line, SECRET))
        secret_lines++;
    pthread_mutex_unlock(&log_lock);
}

/* amqps://guest:SECRET@<host:port of MSGBUS_TEST_AMQPS_URL>/?<query>: the
 * password is wrong on purpose; every refusal tested here comes before the
 * AMQP login. */
static void url_with(char *buf, size_t n, const char *query)
{
    const char *u = tu_broker_url("amqps");
    const char *at = strchr(u, '@');
    const char *hp = at ? at + 1 : u + strlen("amqps://");
    int len = (int)strcspn(hp, "/?");
    snprintf(buf, n, "amqps://guest:" SECRET "@%.*s/?%s&connect_timeout_ms=5000", len, hp,
             query);
}

/* Opens `url`, expects `want` within FAST_MS and a detail containing each
 * of the NULL-terminated words; returns the time taken. */
static int64_t expect_refusal(const char *what, const char *url, msgbus_err_t want, ...)
{
    msgbus_t *bus = NULL;
    int64_t t0 = tu_now_ms();
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    int64_t ms = tu_now_ms() - t0;
    const char *d = msgbus_last_error();
    printf("mtls: %s: %s in %lld ms: %s\n", what, msgbus_err_name(e), (long long)ms, d);
    ck_assert_msg(e == want, "%s: got %s, want %s (%s)", what, msgbus_err_name(e),
                  msgbus_err_name(want), d);
    ck_assert_ptr_null(bus);
    ck_assert_msg(ms < FAST_MS, "%s took %lld ms", what, (long long)ms);
    ck_assert_msg(!strstr(d, SECRET), "password in the detail: %s", d);
    ck_assert_msg(!strstr(d, "a socket error occurred") && !strstr(d, "a SSL error occurred"),
                  "%s: rabbitmq-c's generic text instead of the reason: %s", what, d);
    va_list ap;
    va_start(ap, want);
    for (const char *w; (w = va_arg(ap, const char *)) != NULL;)
        ck_assert_msg(strstr(d, w), "%s: '%s' missing from: %s", what, w, d);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    ck_assert_int_eq(secret_lines, 0);
    pthread_mutex_unlock(&log_lock);
    return ms;
}

static int confirmed;
static void on_report(void *opaque, const msgbus_report_t *r)
{
    (void)opaque;
    if (r->status == MSGBUS_OK)
        confirmed++;
}

START_TEST(client_certificate_url_round_trip)
{
    const char *url = tu_broker_url("amqps");
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "mtls");
    tu_unique(group, sizeof group, "g");
    int64_t t0 = tu_now_ms();
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    int64_t t_open = tu_now_ms() - t0;
    ck_assert_str_eq(msgbus_backend(bus), "amqp");
    tu_ck_ok(msgbus_declare(bus, topic, group));

    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "over mtls", 9));
    confirmed = 0;
    tu_ck_ok(msgbus_publish(bus, topic, m, on_report, NULL));
    msgbus_msg_free(m);
    size_t failed = 99;
    tu_ck_ok(msgbus_flush(bus, 10000, &failed));
    ck_assert_int_eq(failed, 0);
    ck_assert_int_eq(confirmed, 1);

    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *got = tu_receive(sub, 10000);
    ck_assert_msg(got != NULL, "nothing received over amqps");
    size_t len;
    const char *p = msgbus_msg_payload(got, &len);
    ck_assert_int_eq(len, 9);
    ck_assert_int_eq(memcmp(p, "over mtls", 9), 0);
    tu_ck_ok(msgbus_ack(got));
    msgbus_msg_free(got);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    printf("mtls: open %lld ms, declare+publish+confirm+subscribe+receive+ack %lld ms total\n",
           (long long)t_open, (long long)(tu_now_ms() - t0));
}
END_TEST

START_TEST(no_client_certificate_is_refused_with_the_brokers_reason)
{
    char url[4096], q[2048];
    snprintf(q, sizeof q, "cacert=%s", need("MSGBUS_TEST_TLS_CA"));
    url_with(url, sizeof url, q);
    expect_refusal("no client certificate", url, MSGBUS_ERR_AUTH, "certificate required",
                   "cert=", NULL);
}
END_TEST

START_TEST(expired_client_certificate_is_refused_naming_expiry)
{
    char url[4096], q[2048];
    snprintf(q, sizeof q, "cacert=%s&cert=%s&key=%s", need("MSGBUS_TEST_TLS_CA"),
             need("MSGBUS_TEST_TLS_EXPIRED_CERT"), need("MSGBUS_TEST_TLS_EXPIRED_KEY"));
    url_with(url, sizeof url, q);
    expect_refusal("expired client certificate", url, MSGBUS_ERR_AUTH, "certificate expired",
                   need("MSGBUS_TEST_TLS_EXPIRED_CERT"), NULL);
}
END_TEST

START_TEST(certificate_without_its_key_is_a_config_error)
{
    char url[4096], q[2048];
    snprintf(q, sizeof q, "cacert=%s&cert=%s", need("MSGBUS_TEST_TLS_CA"),
             need("MSGBUS_TEST_TLS_CLIENT_CERT"));
    url_with(url, sizeof url, q);
    expect_refusal("cert without key", url, MSGBUS_ERR_CONFIG, "'key'", "'cert'", NULL);
}
END_TEST

START_TEST(key_of_another_certificate_is_a_config_error)
{
    char url[4096], q[2048];
    snprintf(q, sizeof q, "cacert=%s&cert=%s&key=%s", need("MSGBUS_TEST_TLS_CA"),
             need("MSGBUS_TEST_TLS_CLIENT_CERT"), need("MSGBUS_TEST_TLS_EXPIRED_KEY"));
    url_with(url, sizeof url, q);
    expect_refusal("key of another certificate", url, MSGBUS_ERR_CONFIG, "option 'key'",
                   "mismatch", NULL);
}
END_TEST

START_TEST(untrusted_server_certificate_names_verification)
{
    char url[4096], q[2048];
    snprintf(q, sizeof q, "cacert=%s&cert=%s&key=%s", need("MSGBUS_TEST_TLS_OTHER_CA"),
             need("MSGBUS_TEST_TLS_CLIENT_CERT"), need("MSGBUS_TEST_TLS_CLIENT_KEY"));
    url_with(url, sizeof url, q);
    expect_refusal("untrusted server", url, MSGBUS_ERR_CONNECT, "verification", "cacert", NULL);
}
END_TEST

/* host:port of a broker URL ("amqp[s]://user:pw@host:port/..."). */
static void host_port(char *buf, size_t n, const char *url)
{
    const char *at = strchr(url, '@');
    const char *hp = at ? at + 1 : strstr(url, "://") + 3;
    snprintf(buf, n, "%.*s", (int)strcspn(hp, "/?"), hp);
}

START_TEST(plaintext_client_on_the_tls_port_is_told_to_use_amqps)
{
    char url[4096], hp[256];
    host_port(hp, sizeof hp, tu_broker_url("amqps"));
    snprintf(url, sizeof url, "amqp://guest:" SECRET "@%s/?connect_timeout_ms=5000", hp);
    expect_refusal("plaintext client on the TLS port", url, MSGBUS_ERR_CONNECT, "amqps://",
                   "TLS port", NULL);
}
END_TEST

START_TEST(tls_client_on_the_plaintext_port_is_told_so)
{
    char url[4096], hp[256];
    host_port(hp, sizeof hp, tu_broker_url("amqp"));
    snprintf(url, sizeof url,
             "amqps://guest:" SECRET "@%s/?cacert=%s&cert=%s&key=%s&connect_timeout_ms=5000", hp,
             need("MSGBUS_TEST_TLS_CA"), need("MSGBUS_TEST_TLS_CLIENT_CERT"),
             need("MSGBUS_TEST_TLS_CLIENT_KEY"));
    expect_refusal("TLS client on the plaintext port", url, MSGBUS_ERR_CONNECT,
                   "does not answer in TLS", "plain amqp://", NULL);
}
END_TEST

int main(void)
{
    /* Fail at once, before Check forks, when the broker's env is missing. */
    tu_broker_url("amqps");
    tu_broker_url("amqp");
    need("MSGBUS_TEST_TLS_CA");
    msgbus_set_log(log_cb, NULL, MSGBUS_LOG_DEBUG);
    Suite *s = suite_create("amqp_mtls");
    TCase *tc = tcase_create("mtls");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, client_certificate_url_round_trip);
    tcase_add_test(tc, no_client_certificate_is_refused_with_the_brokers_reason);
    tcase_add_test(tc, expired_client_certificate_is_refused_naming_expiry);
    tcase_add_test(tc, certificate_without_its_key_is_a_config_error);
    tcase_add_test(tc, key_of_another_certificate_is_a_config_error);
    tcase_add_test(tc, untrusted_server_certificate_names_verification);
    tcase_add_test(tc, plaintext_client_on_the_tls_port_is_told_to_use_amqps);
    tcase_add_test(tc, tls_client_on_the_plaintext_port_is_told_so);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
