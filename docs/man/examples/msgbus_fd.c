/* Drive a bus from an application's own event loop (poll(2) here): wait
 * on msgbus_fd, then serve callbacks and messages until none is left. */
#include <poll.h>
#include <stdio.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    msgbus_sub_t *sub;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK ||
        msgbus_subscribe(bus, "ticks", NULL, &sub) != MSGBUS_OK)
        return 1;
    msgbus_msg_t *m;
    msgbus_msg_new(&m, "tick", 4);
    msgbus_publish(bus, "ticks", m, NULL, NULL);
    msgbus_msg_free(m);

    int received = 0;
    while (received < 1) {
        struct pollfd p = {.fd = msgbus_fd(bus), .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0)
            break; /* timed out */
        msgbus_poll(bus, 0, NULL); /* delivery callbacks, state changes */
        msgbus_msg_t *in;
        while (msgbus_receive(sub, 0, &in) == MSGBUS_OK) {
            msgbus_ack(in);
            msgbus_msg_free(in);
            received++;
        }
    }
    printf("received %d\n", received);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return received == 1 ? 0 : 1;
}
