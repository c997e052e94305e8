/* After fixing what made messages fail: move the dead letters of
 * orders.dlq back to orders, where the group reads them again. */
#include <stdio.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    msgbus_sub_t *sub;
    msgbus_msg_t *m, *in;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK ||
        msgbus_subscribe(bus, "orders", "billing", &sub) != MSGBUS_OK)
        return 1;
    msgbus_msg_new(&m, "order 1", 7);
    msgbus_publish(bus, "orders", m, NULL, NULL);
    msgbus_msg_free(m);
    msgbus_flush(bus, 10000, NULL);
    if (msgbus_receive(sub, 5000, &in) == MSGBUS_OK) {
        msgbus_dead_letter(in, "price missing"); /* a poison message, for now */
        msgbus_msg_free(in);
    }

    size_t moved = 0;
    msgbus_err_t e = msgbus_dlq_replay(bus, "orders.dlq", NULL, 0, 2000, &moved);
    printf("moved %zu (%s)\n", moved, msgbus_strerror(e));
    int back = 0;
    if (msgbus_receive(sub, 5000, &in) == MSGBUS_OK) {
        back = msgbus_msg_attempt(in) == 1; /* a fresh start */
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return e == MSGBUS_OK && moved == 1 && back ? 0 : 1;
}
