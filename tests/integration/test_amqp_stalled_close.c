/*
 * test_amqp_stalled_close.c — msgbus_close and msgbus_sub_close return
 * within close_timeout_ms (+1 s) on a stalled link, while the I/O thread
 * sits in a blocking rabbitmq-c RPC.
 *
 * A TCP proxy inside the test stands between msgbus and the shared
 * RabbitMQ (MSGBUS_TEST_AMQP_URL). It cuts the connection, lets the
 * reconnect through (login, channels), and freezes the link — nothing
 * forwarded either way, sockets left open — the moment msgbus sends
 * exchange.declare (re-declaring its topology after the reconnect). The
 * I/O thread then waits inside that RPC for rpc_timeout_ms (30 s); with
 * heartbeat=0 nothing else would notice. Before the fix close took 18.8 s
 * (29 s with heartbeat=0) for close_timeout_ms=2000. Unconfirmed messages
 * must be reported MSGBUS_ERR_CLOSED.
 */
#include <amqp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netdb.h>

#include "testutil.h"

/* ---- the proxy ---------------------------------------------------------------- */

enum { MAX_CONNS = 64 };

static struct proxy {
    int listen_fd, port;
    char up_host[256];
    int up_port;
    _Atomic int freeze_on_declare; /* freeze a link when it sends exchange.declare */
    _Atomic int frozen;            /* links frozen so far */
    _Atomic int stop;
    pthread_mutex_t mu;
    int fds[MAX_CONNS][2]; /* client, upstream; -1 when free */
    pthread_t acceptor;
} px = {.mu = PTHREAD_MUTEX_INITIALIZER};

struct pump {
    int slot, cfd, ufd;
};

static bool write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Forwards both ways. Client bytes are forwarded frame by frame so that an
 * exchange.declare (class 40, method 10) can be held back: from then on
 * the link is frozen until the proxy stops. */
static void *pump_main(void *arg)
{
    struct pump *pm = arg;
    unsigned char *cbuf = malloc(1 << 20);
    size_t clen = 0;
    bool header_done = false, frozen = false;
    unsigned char buf[65536];
    while (!atomic_load(&px.stop)) {
        struct pollfd p[2] = {{pm->cfd, POLLIN, 0}, {pm->ufd, POLLIN, 0}};
        if (frozen) {
            usleep(20000);
            continue;
        }
        if (poll(p, 2, 100) <= 0)
            continue;
        if (p[1].revents) {
            ssize_t r = recv(pm->ufd, buf, sizeof buf, 0);
            if (r <= 0 || !write_all(pm->cfd, buf, (size_t)r))
                break;
        }
        if (p[0].revents) {
            ssize_t r = recv(pm->cfd, cbuf + clen, (1 << 20) - clen, 0);
            if (r <= 0)
                break;
            clen += (size_t)r;
            size_t off = 0;
            if (!header_done && clen >= 8) {
                if (!write_all(pm->ufd, cbuf, 8))
                    break;
                off = 8;
                header_done = true;
            }
            while (header_done && clen - off >= 7) {
                const unsigned char *f = cbuf + off;
                size_t size = ((size_t)f[3] << 24) | ((size_t)f[4] << 16) | ((size_t)f[5] << 8) | f[6];
                if (clen - off < 7 + size + 1)
                    break;
                if (atomic_load(&px.freeze_on_declare) && f[0] == 1 && size >= 4 && f[7] == 0 &&
                    f[8] == 40 && f[9] == 0 && f[10] == 10) {
                    frozen = true;
                    atomic_fetch_add(&px.frozen, 1);
                    break;
                }
                if (!write_all(pm->ufd, f, 7 + size + 1))
                    goto out;
                off += 7 + size + 1;
            }
            memmove(cbuf, cbuf + off, clen - off);
            clen -= off;
        }
    }
out:
    pthread_mutex_lock(&px.mu);
    if (px.fds[pm->slot][0] >= 0) {
        close(pm->cfd);
        close(pm->ufd);
        px.fds[pm->slot][0] = px.fds[pm->slot][1] = -1;
    }
    pthread_mutex_unlock(&px.mu);
    free(cbuf);
    free(pm);
    return NULL;
}

static int connect_upstream(void)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", px.up_port);
    if (getaddrinfo(px.up_host, ps, &hints, &ai) != 0)
        return -1;
    int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

static void *acceptor_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&px.stop)) {
        struct pollfd p = {px.listen_fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int cfd = accept(px.listen_fd, NULL, NULL);
        if (cfd < 0)
            continue;
        int ufd = connect_upstream();
        if (ufd < 0) {
            close(cfd);
            continue;
        }
        pthread_mutex_lock(&px.mu);
        int slot = -1;
        for (int i = 0; i < MAX_CONNS && slot < 0; i++)
            if (px.fds[i][0] < 0)
                slot = i;
        if (slot >= 0) {
            px.fds[slot][0] = cfd;
            px.fds[slot][1] = ufd;
        }
        pthread_mutex_unlock(&px.mu);
        if (slot < 0) {
            close(cfd);
            close(ufd);
            continue;
        }
        struct pump *pm = malloc(sizeof *pm);
        *pm = (struct pump){slot, cfd, ufd};
        pthread_t t;
        pthread_create(&t, NULL, pump_main, pm);
        pthread_detach(t);
    }
    return NULL;
}

static void proxy_start(void)
{
    char url[1024];
    snprintf(url, sizeof url, "%s", tu_broker_url("amqp"));
    char *q = strchr(url, '?');
    if (q)
        *q = '\0';
    struct amqp_connection_info ci;
    ck_assert_int_eq(amqp_parse_url(url, &ci), AMQP_STATUS_OK);
    snprintf(px.up_host, sizeof px.up_host, "%s", ci.host);
    px.up_port = ci.port;
    atomic_store(&px.stop, 0);
    atomic_store(&px.freeze_on_declare, 0);
    atomic_store(&px.frozen, 0);
    for (int i = 0; i < MAX_CONNS; i++)
        px.fds[i][0] = px.fds[i][1] = -1;
    px.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(px.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(px.listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(px.listen_fd, 16), 0);
    socklen_t al = sizeof a;
    getsockname(px.listen_fd, (struct sockaddr *)&a, &al);
    px.port = ntohs(a.sin_port);
    pthread_create(&px.acceptor, NULL, acceptor_main, NULL);
}

/* Cuts every link (msgbus sees the connection lost and reconnects). */
static void proxy_cut_all(void)
{
    pthread_mutex_lock(&px.mu);
    for (int i = 0; i < MAX_CONNS; i++)
        if (px.fds[i][0] >= 0) {
            shutdown(px.fds[i][0], SHUT_RDWR);
            shutdown(px.fds[i][1], SHUT_RDWR);
        }
    pthread_mutex_unlock(&px.mu);
}

static void proxy_stop(void)
{
    atomic_store(&px.stop, 1);
    pthread_join(px.acceptor, NULL);
    close(px.listen_fd);
    proxy_cut_all();
    usleep(300000); /* the pumps notice `stop` and close their sockets */
}

/* ---- the test ---------------------------------------------------------------------- */

struct reports {
    _Atomic int calls, closed;
};

static void on_report(void *opaque, const msgbus_report_t *r)
{
    struct reports *c = opaque;
    atomic_fetch_add(&c->calls, 1);
    if (r->status == MSGBUS_ERR_CLOSED)
        atomic_fetch_add(&c->closed, 1);
}

static void on_log(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    (void)level;
    fprintf(stderr, "log: %.300s\n", line);
}

/* Opens a bus through the proxy, declares and subscribes, then stalls the
 * link inside the re-declare after a reconnect. */
static msgbus_t *stalled_bus(const char *opts, msgbus_sub_t **sub)
{
    msgbus_set_log(on_log, NULL, MSGBUS_LOG_WARN);
    proxy_start();
    char url[1024], topic[128];
    snprintf(url, sizeof url, "amqp://guest:guest@127.0.0.1:%d/?close_timeout_ms=2000&%s",
             px.port, opts);
    tu_unique(topic, sizeof topic, "stall");
    msgbus_t *bus;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, "g"));
    tu_ck_ok(msgbus_subscribe(bus, topic, "g", sub));
    atomic_store(&px.freeze_on_declare, 1);
    proxy_cut_all();
    int64_t until = tu_now_ms() + 15000;
    while (atomic_load(&px.frozen) == 0 && tu_now_ms() < until)
        usleep(10000);
    ck_assert_msg(atomic_load(&px.frozen) > 0, "the reconnect never re-declared");
    usleep(300000); /* the I/O thread is inside the exchange.declare RPC */
    return bus;
}

static void publish_some(msgbus_t *bus, struct reports *rep, int n)
{
    for (int i = 0; i < n; i++) {
        msgbus_msg_t *m;
        tu_ck_ok(msgbus_msg_new(&m, "stalled", 7));
        tu_ck_ok(msgbus_publish(bus, "stall-out", m, on_report, rep));
        msgbus_msg_free(m);
    }
}

static void bus_close_is_bounded(const char *opts)
{
    msgbus_sub_t *sub;
    msgbus_t *bus = stalled_bus(opts, &sub);
    struct reports rep = {0};
    publish_some(bus, &rep, 3);
    int64_t t0 = tu_now_ms();
    msgbus_close(bus);
    int64_t took = tu_now_ms() - t0;
    printf("msgbus_close on a stalled link (%s, close_timeout_ms=2000): %lld ms; %d of 3 "
           "reported MSGBUS_ERR_CLOSED\n",
           opts, (long long)took, atomic_load(&rep.closed));
    proxy_stop();
    ck_assert_int_lt(took, 3000);
    ck_assert_int_eq(atomic_load(&rep.calls), 3);
    ck_assert_int_eq(atomic_load(&rep.closed), 3);
}

START_TEST(close_is_bounded_with_heartbeats)
{
    bus_close_is_bounded("heartbeat=10");
}
END_TEST

START_TEST(close_is_bounded_without_heartbeats)
{
    bus_close_is_bounded("heartbeat=0");
}
END_TEST

START_TEST(sub_close_is_bounded)
{
    msgbus_sub_t *sub;
    msgbus_t *bus = stalled_bus("heartbeat=0", &sub);
    int64_t t0 = tu_now_ms();
    msgbus_sub_close(sub);
    int64_t took_sub = tu_now_ms() - t0;
    t0 = tu_now_ms();
    msgbus_close(bus);
    int64_t took_bus = tu_now_ms() - t0;
    printf("msgbus_sub_close on a stalled link (heartbeat=0, close_timeout_ms=2000): %lld ms; "
           "then msgbus_close: %lld ms\n",
           (long long)took_sub, (long long)took_bus);
    proxy_stop();
    ck_assert_int_lt(took_sub, 3000);
    ck_assert_int_lt(took_bus, 3000);
}
END_TEST

int main(void)
{
    tu_broker_url("amqp");
    Suite *s = suite_create("amqp_stalled_close");
    TCase *tc = tcase_create("stalled");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, close_is_bounded_with_heartbeats);
    tcase_add_test(tc, close_is_bounded_without_heartbeats);
    tcase_add_test(tc, sub_close_is_bounded);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
