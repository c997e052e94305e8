/* Replay: move a group back to the oldest message the broker keeps, so
 * its next member reads everything again (here mem://, which keeps the
 * last 100 messages of each topic with retain=100). */
#include <stdio.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    msgbus_sub_t *sub;
    msgbus_msg_t *m, *in;
    if (msgbus_open(&bus, "mem://replay-example?retain=100", NULL) != MSGBUS_OK)
        return 1;
    msgbus_declare(bus, "orders", "billing");
    for (int i = 0; i < 3; i++) {
        msgbus_msg_new(&m, "order", 5);
        msgbus_publish(bus, "orders", m, NULL, NULL);
        msgbus_msg_free(m);
    }
    msgbus_flush(bus, 10000, NULL);

    /* billing reads and acks all three */
    msgbus_subscribe(bus, "orders", "billing", &sub);
    for (int i = 0; i < 3 && msgbus_receive(sub, 5000, &in) == MSGBUS_OK; i++) {
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    msgbus_sub_close(sub); /* the group must have no active member */

    msgbus_err_t e = msgbus_group_reset(bus, "orders", "billing", "earliest");
    if (e != MSGBUS_OK) {
        fprintf(stderr, "reset: %s\n", msgbus_last_error());
        return 1;
    }
    int again = 0;
    msgbus_subscribe(bus, "orders", "billing", &sub);
    while (msgbus_receive(sub, again < 3 ? 5000 : 200, &in) == MSGBUS_OK) {
        msgbus_ack(in);
        msgbus_msg_free(in);
        again++;
    }
    printf("read %d again\n", again);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return again == 3 ? 0 : 1;
}
