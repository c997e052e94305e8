/* A handler that fails: each nack delivers the message again with its
 * attempt count raised; after retry_max_attempts it goes to the
 * dead-letter topic orders.dlq, with the last reason in a header. */
#include <stdio.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    msgbus_sub_t *sub, *dlq;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK ||
        msgbus_subscribe_ex(bus, "orders", "billing", "retry_max_attempts=3&retry_initial_ms=10",
                            &sub) != MSGBUS_OK ||
        msgbus_subscribe(bus, "orders.dlq", "dlq", &dlq) != MSGBUS_OK) {
        fprintf(stderr, "%s\n", msgbus_last_error());
        return 1;
    }
    msgbus_msg_t *m;
    msgbus_msg_new(&m, "order 1", 7);
    msgbus_publish(bus, "orders", m, NULL, NULL);
    msgbus_msg_free(m);
    msgbus_flush(bus, 10000, NULL);

    msgbus_msg_t *in;
    while (msgbus_receive(sub, 2000, &in) == MSGBUS_OK) {
        printf("attempt %d: failing\n", msgbus_msg_attempt(in));
        msgbus_nack_reason(in, "the invoice service is down");
        msgbus_msg_free(in);
    }
    int dead = 0;
    if (msgbus_receive(dlq, 5000, &in) == MSGBUS_OK) {
        printf("dead letter: %s\n", msgbus_msg_header(in, "msgbus-dlq-error"));
        msgbus_ack(in);
        msgbus_msg_free(in);
        dead = 1;
    }
    msgbus_sub_close(dlq);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return dead ? 0 : 1;
}
