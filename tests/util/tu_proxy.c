/*
 * tu_proxy.c — the tests' TCP proxy (tu_proxy.h).
 */
#include "tu_proxy.h"

#include <amqp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

enum { TU_PROXY_LINKS = 64, TU_PROXY_BUF = 1 << 20 };

static struct {
    int listen_fd, port;
    char up_host[256];
    int up_port;
    tu_proxy_freeze_fn freeze;
    void *freeze_arg;
    _Atomic int frozen, stop, pumps;
    pthread_mutex_t mu;
    int fds[TU_PROXY_LINKS][2]; /* msgbus's side, the broker's; -1 when free */
    pthread_t acceptor;
} px = {.mu = PTHREAD_MUTEX_INITIALIZER};

struct tu_pump {
    int slot, cfd, ufd;
};

static bool tu_write_all(int fd, const unsigned char *p, size_t n)
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

/* Forwards both ways. With a freeze hook, msgbus's bytes go frame by frame
 * so that the frame the hook picks is held back, and the link with it. */
static void *tu_pump_main(void *arg)
{
    struct tu_pump *pm = arg;
    unsigned char *cbuf = malloc(TU_PROXY_BUF);
    unsigned char buf[65536];
    size_t clen = 0;
    bool header_done = false, frozen = false;
    while (cbuf && !atomic_load(&px.stop)) {
        if (frozen) {
            usleep(20000);
            continue;
        }
        struct pollfd p[2] = {{pm->cfd, POLLIN, 0}, {pm->ufd, POLLIN, 0}};
        if (poll(p, 2, 100) <= 0)
            continue;
        if (p[1].revents) {
            ssize_t r = recv(pm->ufd, buf, sizeof buf, 0);
            if (r <= 0 || !tu_write_all(pm->cfd, buf, (size_t)r))
                break;
        }
        if (!p[0].revents)
            continue;
        ssize_t r = recv(pm->cfd, cbuf + clen, TU_PROXY_BUF - clen, 0);
        if (r <= 0)
            break;
        clen += (size_t)r;
        if (!px.freeze) {
            if (!tu_write_all(pm->ufd, cbuf, clen))
                break;
            clen = 0;
            continue;
        }
        size_t off = 0;
        if (!header_done && clen >= 8) {
            if (!tu_write_all(pm->ufd, cbuf, 8))
                break;
            off = 8;
            header_done = true;
        }
        bool failed = false;
        while (header_done && clen - off >= 7) {
            const unsigned char *f = cbuf + off;
            size_t size = ((size_t)f[3] << 24) | ((size_t)f[4] << 16) | ((size_t)f[5] << 8) | f[6];
            if (clen - off < 7 + size + 1)
                break;
            if (px.freeze(px.freeze_arg, f, 7 + size + 1)) {
                frozen = true;
                atomic_fetch_add(&px.frozen, 1);
                break;
            }
            if (!tu_write_all(pm->ufd, f, 7 + size + 1)) {
                failed = true;
                break;
            }
            off += 7 + size + 1;
        }
        if (failed)
            break;
        memmove(cbuf, cbuf + off, clen - off);
        clen -= off;
    }
    pthread_mutex_lock(&px.mu);
    close(pm->cfd);
    close(pm->ufd);
    px.fds[pm->slot][0] = px.fds[pm->slot][1] = -1;
    pthread_mutex_unlock(&px.mu);
    free(cbuf);
    free(pm);
    atomic_fetch_sub(&px.pumps, 1);
    return NULL;
}

static int tu_connect_upstream(void)
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

static void *tu_acceptor_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&px.stop)) {
        struct pollfd p = {px.listen_fd, POLLIN, 0};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int cfd = accept(px.listen_fd, NULL, NULL);
        if (cfd < 0)
            continue;
        int ufd = tu_connect_upstream();
        int slot = -1;
        pthread_mutex_lock(&px.mu);
        for (int i = 0; i < TU_PROXY_LINKS && slot < 0 && ufd >= 0; i++)
            if (px.fds[i][0] < 0)
                slot = i;
        if (slot >= 0) {
            px.fds[slot][0] = cfd;
            px.fds[slot][1] = ufd;
        }
        pthread_mutex_unlock(&px.mu);
        if (slot < 0) {
            close(cfd);
            if (ufd >= 0)
                close(ufd);
            continue;
        }
        struct tu_pump *pm = malloc(sizeof *pm);
        ck_assert_ptr_nonnull(pm);
        *pm = (struct tu_pump){slot, cfd, ufd};
        atomic_fetch_add(&px.pumps, 1);
        pthread_t t;
        pthread_create(&t, NULL, tu_pump_main, pm);
        pthread_detach(t);
    }
    return NULL;
}

void tu_proxy_start_amqp(tu_proxy_freeze_fn freeze, void *arg, const char *query, char *url,
                         size_t n)
{
    char base[1024];
    snprintf(base, sizeof base, "%s", tu_broker_url("amqp"));
    char *q = strchr(base, '?');
    if (q)
        *q = '\0';
    struct amqp_connection_info ci;
    ck_assert_int_eq(amqp_parse_url(base, &ci), AMQP_STATUS_OK);
    snprintf(px.up_host, sizeof px.up_host, "%s", ci.host);
    px.up_port = ci.port;
    px.freeze = freeze;
    px.freeze_arg = arg;
    atomic_store(&px.stop, 0);
    atomic_store(&px.frozen, 0);
    for (int i = 0; i < TU_PROXY_LINKS; i++)
        px.fds[i][0] = px.fds[i][1] = -1;
    px.listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(px.listen_fd, 0);
    int one = 1;
    setsockopt(px.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(px.listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    ck_assert_int_eq(listen(px.listen_fd, 16), 0);
    socklen_t al = sizeof a;
    getsockname(px.listen_fd, (struct sockaddr *)&a, &al);
    px.port = ntohs(a.sin_port);
    ck_assert_int_eq(pthread_create(&px.acceptor, NULL, tu_acceptor_main, NULL), 0);
    snprintf(url, n, "amqp://%s:%s@127.0.0.1:%d/%s%s%s", ci.user, ci.password, px.port,
             ci.vhost && strcmp(ci.vhost, "/") ? ci.vhost : "", query && *query ? "?" : "",
             query ? query : "");
}

int tu_proxy_port(void)
{
    return px.port;
}

int tu_proxy_frozen(void)
{
    return atomic_load(&px.frozen);
}

void tu_proxy_cut_all(void)
{
    pthread_mutex_lock(&px.mu);
    for (int i = 0; i < TU_PROXY_LINKS; i++)
        if (px.fds[i][0] >= 0) {
            shutdown(px.fds[i][0], SHUT_RDWR);
            shutdown(px.fds[i][1], SHUT_RDWR);
        }
    pthread_mutex_unlock(&px.mu);
}

void tu_proxy_stop(void)
{
    atomic_store(&px.stop, 1);
    pthread_join(px.acceptor, NULL);
    close(px.listen_fd);
    tu_proxy_cut_all();
    /* The pumps notice `stop` within a poll slice and close their sockets. */
    for (int i = 0; i < 100 && atomic_load(&px.pumps) > 0; i++)
        usleep(20000);
}

bool tu_proxy_on_exchange_declare(void *arg, const unsigned char *f, size_t len)
{
    const _Atomic int *armed = arg;
    return atomic_load(armed) && len >= 12 && f[0] == 1 /* method */ && f[7] == 0 &&
           f[8] == 40 && f[9] == 0 && f[10] == 10;
}
