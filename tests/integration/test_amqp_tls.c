/*
 * test_amqp_tls.c — amqps:// against a real RabbitMQ TLS listener.
 *
 * main() makes a CA, a server certificate for "localhost" and an unrelated
 * second CA with openssl, and starts a second private RabbitMQ node with
 * only a TLS listener on 127.0.0.1 (tests/integration/amqp_private_node.sh; it
 * leaves the shared test node alone), runs the tests, and stops that node
 * by pid. Promises:
 *  - a client trusting the right CA connects, publishes and receives;
 *  - a client trusting another CA is refused with MSGBUS_ERR_CONNECT and a
 *    detail that says the certificate could not be verified;
 *  - the certificate names "localhost", so 127.0.0.1 fails hostname
 *    verification unless tls_verify_hostname=false says so by name;
 *  - TLS options on a plain amqp:// URL are a configuration error.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tu_amqp.h"


static void url_for(char *buf, size_t n, const char *host, const char *ca, const char *extra)
{
    snprintf(buf, n, "amqps://guest:guest@%s:%d/?cacert=%s/%s&connect_timeout_ms=5000%s", host,
             tu_node.port, tu_node.dir, ca, extra);
}

START_TEST(trusted_ca_connects_and_messages_flow)
{
    char url[2048], topic[128];
    url_for(url, sizeof url, "localhost", "ca.pem", "");
    tu_unique(topic, sizeof topic, "tls");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    ck_assert_str_eq(msgbus_backend(bus), "amqp");
    msgbus_sub_t *sub;
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", &sub));
    tu_publish_str(bus, topic, "k", "over tls");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    ck_assert_int_eq(len, 8);
    ck_assert_int_eq(memcmp(p, "over tls", 8), 0);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    printf("tls: published=1 received=1 over amqps://localhost:%d\n", tu_node.port);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(other_ca_is_refused_clearly)
{
    char url[2048];
    url_for(url, sizeof url, "localhost", "other-ca.pem", "");
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONNECT);
    ck_assert_ptr_null(bus);
    const char *d = msgbus_last_error();
    printf("tls: wrong CA refused: %s\n", d);
    ck_assert_msg(strstr(d, "verif") && strstr(d, "cert"), "unclear detail: %s", d);
    ck_assert_msg(!strstr(d, "guest:guest"), "password in detail: %s", d);
}
END_TEST

START_TEST(hostname_is_verified_unless_turned_off_by_name)
{
    char url[2048];
    url_for(url, sizeof url, "127.0.0.1", "ca.pem", "");
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONNECT);
    printf("tls: hostname mismatch refused: %s\n", msgbus_last_error());
    ck_assert_msg(strstr(msgbus_last_error(), "hostname"), "%s", msgbus_last_error());

    url_for(url, sizeof url, "127.0.0.1", "ca.pem", "&tls_verify_hostname=false");
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_close(bus);
}
END_TEST

START_TEST(tls_options_need_amqps)
{
    char url[2048];
    snprintf(url, sizeof url, "amqp://guest:guest@localhost:%d/?cacert=%s/ca.pem", tu_node.port, tu_node.dir);
    msgbus_t *bus = NULL;
    tu_ck_err(msgbus_open(&bus, url, NULL), MSGBUS_ERR_CONFIG);
    ck_assert_msg(strstr(msgbus_last_error(), "amqps"), "%s", msgbus_last_error());
}
END_TEST

int main(void)
{
    if (!tu_node_start("amqp-tls", 0, "tls"))
        return 1;

    Suite *s = suite_create("amqp_tls");
    TCase *tc = tcase_create("tls");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, trusted_ca_connects_and_messages_flow);
    tcase_add_test(tc, other_ca_is_refused_clearly);
    tcase_add_test(tc, hostname_is_verified_unless_turned_off_by_name);
    tcase_add_test(tc, tls_options_need_amqps);
    suite_add_tcase(s, tc);
    int rc = tu_run_suite(s);
    tu_node_stop();
    return rc;
}
