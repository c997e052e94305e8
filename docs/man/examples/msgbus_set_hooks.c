/* Tracing without a tracer dependency: on_publish adds a header to what
 * is sent, on_receive reads it back, on_settle ends the "span". */
#include <stdio.h>
#include <string.h>
#include <msgbus/msgbus.h>

static void *on_publish(void *opaque, const char *topic, msgbus_msg_t *m)
{
    (void)opaque;
    (void)topic;
    msgbus_msg_set_header(m, "traceparent",
                          "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    return NULL;
}

static void *on_receive(void *opaque, msgbus_msg_t *m)
{
    int *seen = opaque;
    if (msgbus_msg_header(m, "traceparent"))
        (*seen)++;
    return NULL;
}

static void on_settle(void *opaque, const msgbus_msg_t *m, msgbus_settled_t how, void *span)
{
    (void)opaque;
    (void)span;
    printf("%s settled (%s)\n", msgbus_msg_id(m), how == MSGBUS_SETTLED_ACK ? "ack" : "other");
}

int main(void)
{
    int seen = 0;
    msgbus_hooks_t hooks;
    memset(&hooks, 0, sizeof hooks);
    hooks.opaque = &seen;
    hooks.on_publish = on_publish;
    hooks.on_receive = on_receive;
    hooks.on_settle = on_settle;

    msgbus_t *bus;
    msgbus_sub_t *sub;
    if (msgbus_open(&bus, "mem://example", NULL) != MSGBUS_OK ||
        msgbus_set_hooks(bus, &hooks, sizeof hooks) != MSGBUS_OK || /* before subscribing */
        msgbus_subscribe(bus, "orders", "billing", &sub) != MSGBUS_OK)
        return 1;
    msgbus_msg_t *m, *in;
    msgbus_msg_new(&m, "order 1", 7);
    msgbus_publish(bus, "orders", m, NULL, NULL);
    msgbus_msg_free(m);
    msgbus_flush(bus, 10000, NULL);
    if (msgbus_receive(sub, 5000, &in) == MSGBUS_OK) {
        msgbus_ack(in);
        msgbus_msg_free(in);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return seen == 1 ? 0 : 1;
}
