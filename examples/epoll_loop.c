/*
 * epoll_loop.c — msgbus inside an application's own epoll loop, beside a
 * timer: the timer publishes a message every 10 ms; msgbus_fd(bus) wakes
 * the loop for delivery confirms (msgbus_poll) and for received messages
 * (msgbus_receive with timeout 0). Nothing blocks. Exits 0 once every
 * message was confirmed and received, with a summary.
 *
 *   ./epoll_loop                                   # mem://
 *   MSGBUS_URL=kafka://127.0.0.1:9092 ./epoll_loop [COUNT]
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <msgbus/msgbus.h>

typedef struct counts {
    int confirmed, failed;
} counts_t;

static void on_delivery(void *opaque, const msgbus_report_t *r)
{
    counts_t *c = opaque;
    if (r->status == MSGBUS_OK)
        c->confirmed++;
    else
        c->failed++;
}

static int fail(const char *what, msgbus_err_t e)
{
    fprintf(stderr, "epoll_loop: %s: %s (%s)\n", what, msgbus_strerror(e), msgbus_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 50;
    if (count <= 0) {
        fprintf(stderr, "usage: epoll_loop [COUNT]\n");
        return 2;
    }
    const char *url = getenv("MSGBUS_URL");
    if (!url || !*url) {
        url = "mem://epoll";
        printf("MSGBUS_URL is not set: using the in-process broker %s\n", url);
    }
    msgbus_t *bus;
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    if (e)
        return fail("open", e);
    /* A topic of this run only, so messages of an earlier run do not count. */
    char topic[64];
    snprintf(topic, sizeof topic, "epoll-loop-%ld-%ld", (long)getpid(), (long)time(NULL));
    msgbus_sub_t *sub;
    if ((e = msgbus_subscribe(bus, topic, "epoll", &sub)))
        return fail("subscribe", e);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec every10ms = {{0, 10000000L}, {0, 10000000L}};
    timerfd_settime(tfd, 0, &every10ms, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = tfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &ev);
    ev.data.fd = msgbus_fd(bus); /* owned by the bus: never read or close it */
    epoll_ctl(ep, EPOLL_CTL_ADD, ev.data.fd, &ev);

    counts_t c = {0, 0};
    int published = 0, received = 0, wakeups = 0, rc = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (received < count || c.confirmed + c.failed < published) {
        struct epoll_event ready[2];
        int n = epoll_wait(ep, ready, 2, 10000);
        if (n == 0) {
            fprintf(stderr, "epoll_loop: nothing happened for 10 s\n");
            rc = 1;
            break;
        }
        for (int i = 0; i < n; i++) {
            if (ready[i].data.fd == tfd) {
                uint64_t ticks;
                if (read(tfd, &ticks, sizeof ticks) != sizeof ticks || published >= count)
                    continue;
                char text[64];
                snprintf(text, sizeof text, "tick %d", ++published);
                msgbus_msg_t *m;
                if ((e = msgbus_msg_new(&m, text, strlen(text))))
                    return fail("msg_new", e);
                e = msgbus_publish(bus, topic, m, on_delivery, &c); /* never blocks */
                msgbus_msg_free(m);
                if (e)
                    return fail("publish", e);
                continue;
            }
            /* The bus has work: serve confirms, then take every waiting message. */
            wakeups++;
            msgbus_poll(bus, 0, NULL);
            msgbus_msg_t *in;
            while (msgbus_receive(sub, 0, &in) == MSGBUS_OK) {
                received++;
                msgbus_ack(in);
                msgbus_msg_free(in);
            }
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
    printf("epoll_loop: %d published, %d confirmed, %d failed, %d received in %.0f ms "
           "(%d wake-ups of the bus fd)\n",
           published, c.confirmed, c.failed, received, ms, wakeups);
    close(tfd);
    close(ep);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return rc || c.failed || received < count ? 1 : 0;
}
