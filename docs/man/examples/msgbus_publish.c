/* Publish three messages with a delivery callback, then wait for every
 * confirm: only then has the broker got them. */
#include <stdio.h>
#include <string.h>
#include <msgbus/msgbus.h>

static void on_delivery(void *opaque, const msgbus_report_t *r)
{
    int *confirmed = opaque;
    if (r->status == MSGBUS_OK)
        (*confirmed)++;
    else
        fprintf(stderr, "%s on %s: %s\n", r->msg_id, r->topic, r->error);
}

int main(void)
{
    msgbus_t *bus;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK)
        return 1;
    msgbus_declare(bus, "orders", "billing"); /* keep the messages for billing */
    int confirmed = 0;
    for (int i = 0; i < 3; i++) {
        char text[32];
        snprintf(text, sizeof text, "order %d", i);
        msgbus_msg_t *m;
        if (msgbus_msg_new(&m, text, strlen(text)) != MSGBUS_OK)
            return 1;
        msgbus_msg_set_key(m, "customer-7", 10); /* same key: kept in order */
        msgbus_err_t e = msgbus_publish(bus, "orders", m, on_delivery, &confirmed);
        msgbus_msg_free(m); /* msgbus_publish took a copy */
        if (e != MSGBUS_OK) {
            fprintf(stderr, "publish: %s\n", msgbus_last_error());
            return 1;
        }
    }
    msgbus_err_t e = msgbus_flush(bus, 10000, NULL);
    printf("%d confirmed (%s)\n", confirmed, msgbus_strerror(e));
    msgbus_close(bus);
    return e == MSGBUS_OK ? 0 : 1;
}
