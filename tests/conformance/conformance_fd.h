/*
 * conformance_fd.h — conformance test of msgbus_fd: readable while work
 * waits, unreadable once all is served. Part of conformance.c (included
 * once, after its helpers).
 */
#ifndef MSGBUS_CONFORMANCE_FD_H
#define MSGBUS_CONFORMANCE_FD_H

#include <poll.h>
#include <unistd.h>

#include "conformance_util.h"
/* ---------------------------------------------------------------- fd */

static bool cf_fd_readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, timeout_ms);
    ck_assert_msg(r >= 0, "poll failed");
    return r == 1 && (p.revents & POLLIN);
}

/* The fd must be unreadable once all work is served. msgbus.h allows a
 * rare readable-with-nothing-to-do: then serving must find nothing, and
 * after that the fd must settle unreadable. Returns spurious wake-ups. */
static int cf_fd_settles_unreadable(msgbus_t *bus, msgbus_sub_t *sub, int fd)
{
    usleep(200 * 1000);
    if (!cf_fd_readable(fd, 0))
        return 0;
    int served = 0;
    tu_ck_ok(msgbus_poll(bus, 0, &served));
    ck_assert_msg(served == 0, "fd readable with %d unexpected callbacks", served);
    msgbus_msg_t *m = tu_receive(sub, 0);
    ck_assert_msg(m == NULL, "fd readable with an unexpected message");
    usleep(200 * 1000);
    ck_assert_msg(!cf_fd_readable(fd, 0), "fd stays readable with nothing to do");
    return 1;
}

START_TEST(fd_is_readable_while_work_waits_and_not_after)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "fd");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    int fd = msgbus_fd(bus);
    ck_assert_int_ge(fd, 0);
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    int spurious = cf_fd_settles_unreadable(bus, sub, fd);

    /* Delivery callbacks and messages make it readable; serving them all
     * makes it unreadable again. */
    struct cf_reports rep;
    cf_reports_init(&rep, topic, 8);
    for (int i = 0; i < 3; i++) {
        char payload[16];
        snprintf(payload, sizeof payload, "n=%d", i);
        free(cf_publish(bus, topic, NULL, payload, strlen(payload), &rep));
    }
    int got = 0, idle_wakeups = 0;
    int64_t deadline = tu_now_ms() + CF_FIRST_MS;
    while ((got < 3 || rep.calls < 3) && tu_now_ms() < deadline) {
        if (!cf_fd_readable(fd, (int)(deadline - tu_now_ms())))
            break;
        int served = 0, before = got;
        tu_ck_ok(msgbus_poll(bus, 0, &served));
        msgbus_msg_t *m;
        while ((m = tu_receive(sub, 0)) != NULL) {
            got++;
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
        if (served == 0 && got == before)
            idle_wakeups++;
        ck_assert_msg(idle_wakeups < 50, "fd keeps waking with nothing to do");
    }
    ck_assert_msg(rep.calls == 3 && rep.ok == 3, "fd loop served %d of 3 callbacks", rep.calls);
    ck_assert_msg(got == 3, "fd loop received %d of 3 messages", got);
    spurious += cf_fd_settles_unreadable(bus, sub, fd);

    /* With every callback served, a readable fd means a message waits:
     * receive with no wait must get it. */
    free(cf_publish(bus, topic, NULL, "n=3", 3, &rep));
    cf_flush_ok(bus); /* serves the callback */
    ck_assert_int_eq(rep.calls, 4);
    ck_assert_msg(cf_fd_readable(fd, CF_FIRST_MS), "fd not readable with a message waiting");
    msgbus_msg_t *m = tu_receive(sub, 0);
    ck_assert_msg(m != NULL, "fd was readable but no message could be received");
    ck_assert_int_eq(cf_payload_number(m), 3);
    /* Held but not yet settled: nothing more to do, so unreadable. */
    spurious += cf_fd_settles_unreadable(bus, sub, fd);
    tu_ck_ok(msgbus_ack(m));
    msgbus_msg_free(m);
    spurious += cf_fd_settles_unreadable(bus, sub, fd);
    printf("  fd: 3 callbacks + 4 messages served through the fd, %d idle wake-ups, %d "
           "spurious readable\n",
           idle_wakeups, spurious);
    cf_ids_free(&rep.ids);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

#endif
