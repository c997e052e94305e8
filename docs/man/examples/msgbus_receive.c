/* Consume as a member of a group: receive, process, ack, free. */
#include <stdio.h>
#include <string.h>
#include <msgbus/msgbus.h>

int main(void)
{
    msgbus_t *bus;
    msgbus_sub_t *sub;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK ||
        msgbus_subscribe(bus, "orders", "billing", &sub) != MSGBUS_OK) {
        fprintf(stderr, "%s\n", msgbus_last_error());
        return 1;
    }
    msgbus_msg_t *m;
    msgbus_msg_new(&m, "order 1", 7);
    msgbus_publish(bus, "orders", m, NULL, NULL);
    msgbus_msg_free(m);
    msgbus_flush(bus, 10000, NULL);

    msgbus_msg_t *in;
    msgbus_err_t e;
    int n = 0;
    while ((e = msgbus_receive(sub, n == 0 ? 5000 : 200, &in)) == MSGBUS_OK) {
        size_t len;
        const char *payload = msgbus_msg_payload(in, &len);
        printf("%.*s (id %s, attempt %d)\n", (int)len, payload, msgbus_msg_id(in),
               msgbus_msg_attempt(in));
        msgbus_ack(in); /* done: not delivered again */
        msgbus_msg_free(in);
        n++;
    }
    /* MSGBUS_ERR_TIMEOUT: nothing more came */
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return e == MSGBUS_ERR_TIMEOUT && n == 1 ? 0 : 1;
}
