/*
 * hello.c — publish a few messages and consume them, on $MSGBUS_URL
 * (mem:// when it is unset, and it says so).
 *
 *   MSGBUS_URL=kafka://127.0.0.1:9092 ./hello
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgbus/msgbus.h>

static int fail(const char *what, msgbus_err_t e)
{
    fprintf(stderr, "hello: %s: %s (%s)\n", what, msgbus_strerror(e), msgbus_last_error());
    return 1;
}

int main(void)
{
    const char *url = getenv("MSGBUS_URL");
    if (!url || !*url) {
        url = "mem://hello";
        printf("MSGBUS_URL is not set: using the in-process broker %s\n", url);
    }
    msgbus_t *bus;
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    if (e)
        return fail("open", e);
    printf("connected to %s (%s)\n", msgbus_url(bus), msgbus_backend(bus));

    /* Subscribe first: a group's storage exists from then on. */
    msgbus_sub_t *sub;
    if ((e = msgbus_subscribe(bus, "hello", "readers", &sub)))
        return fail("subscribe", e);

    for (int i = 1; i <= 3; i++) {
        char text[64];
        snprintf(text, sizeof text, "hello #%d", i);
        msgbus_msg_t *m;
        if ((e = msgbus_msg_new(&m, text, strlen(text))))
            return fail("msg_new", e);
        msgbus_msg_set_key(m, "greeting", 8);
        msgbus_msg_set_header(m, "content-type", "text/plain");
        e = msgbus_publish(bus, "hello", m, NULL, NULL);
        msgbus_msg_free(m);
        if (e)
            return fail("publish", e);
    }
    if ((e = msgbus_flush(bus, 10000, NULL)))
        return fail("flush", e);
    printf("published 3 messages, all confirmed\n");

    int got = 0;
    while (got < 3) {
        msgbus_msg_t *in;
        if ((e = msgbus_receive(sub, 10000, &in)))
            return fail("receive", e);
        size_t len;
        const char *p = msgbus_msg_payload(in, &len);
        printf("received '%.*s' (id %s, attempt %d)\n", (int)len, p, msgbus_msg_id(in),
               msgbus_msg_attempt(in));
        msgbus_ack(in);
        msgbus_msg_free(in);
        got++;
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);
    printf("done\n");
    return 0;
}
