/*
 * metrics.c — `--metrics ADDR:PORT` of `outbox relay` and `sub`: a tiny
 * HTTP/1.0 server on a thread of its own that answers GET /metrics with the
 * Prometheus text exposition format (version 0.0.4), and the rendering of
 * the bus's msgbus_stats_json snapshot into it. Also the connection-state
 * lines of -v (cli_watch_state).
 *
 * One connection at a time, closed after the answer: a scraper needs no
 * more, and a bounded request (8 KiB) and a 5 s socket timeout keep one
 * stuck client from holding the thread for long.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------ state lines */

static void on_state(void *opaque, const msgbus_state_event_t *ev)
{
    const char *cmd = opaque;
    if (ev->sub)
        fprintf(stderr, "msgbus %s: subscription '%s'%s%s: %s -> %s (%s)\n", cmd,
                ev->topic ? ev->topic : "", ev->group ? " group " : " (broadcast)",
                ev->group ? ev->group : "", msgbus_state_name(ev->previous),
                msgbus_state_name(ev->state), ev->reason ? ev->reason : "");
    else
        fprintf(stderr, "msgbus %s: state %s -> %s (%s)\n", cmd, msgbus_state_name(ev->previous),
                msgbus_state_name(ev->state), ev->reason ? ev->reason : "");
}

void cli_watch_state(const char *cmd, msgbus_t *bus)
{
    /* Changes before the callback are not replayed: say where we start. */
    char reason[256];
    msgbus_state_t st = msgbus_state(bus, reason, sizeof reason);
    fprintf(stderr, "msgbus %s: state %s (%s)\n", cmd, msgbus_state_name(st), reason);
    msgbus_set_state_cb(bus, on_state, (void *)cmd);
}

/* ------------------------------------------------------------- exposition */

void cli_prom_family(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped, as the format wants. */
static void put_label_value(FILE *f, const char *v)
{
    fputc('"', f);
    for (; v && *v; v++) {
        if (*v == '\\' || *v == '"')
            fputc('\\', f), fputc(*v, f);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
    fputc('"', f);
}

static void put_value(FILE *f, double v)
{
    if (isnan(v))
        fputs("NaN", f);
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        fprintf(f, "%.0f", v);
    else
        fprintf(f, "%.15g", v);
}

void cli_prom_sample(FILE *f, const char *name, const char *labels[], double v)
{
    fputs(name, f);
    if (labels && labels[0]) {
        fputc('{', f);
        for (int i = 0; labels[i]; i += 2) {
            fprintf(f, "%s%s=", i ? "," : "", labels[i]);
            put_label_value(f, labels[i + 1]);
        }
        fputc('}', f);
    }
    fputc(' ', f);
    put_value(f, v);
    fputc('\n', f);
}

static double jnum(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *const states[] = {"CONNECTING", "UP", "RECONNECTING", "DOWN"};

static void state_set(FILE *f, const char *name, const char *topic, const char *group,
                      const char *cur)
{
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
        const char *l[] = {"topic", topic, "group", group, "state", states[i], NULL};
        const char **lp = topic ? l : l + 4;
        cli_prom_sample(f, name, lp, cur && !strcmp(cur, states[i]) ? 1 : 0);
    }
}

/* The quantiles of a {"count","p50","p90","p99","max"} object (µs, over the
 * interval since the previous snapshot) as a summary in seconds. *count
 * accumulates the interval counts into the cumulative _count. */
static void latency(FILE *f, const char *name, json_t *h, const char *topic, const char *group,
                    uint64_t *count)
{
    static const struct {
        const char *key, *q;
    } qs[] = {{"p50", "0.5"}, {"p90", "0.9"}, {"p99", "0.99"}};
    double n = jnum(h, "count");
    if (!isnan(n) && count)
        *count += (uint64_t)n;
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        const char *l[] = {"topic", topic, "group", group, "quantile", qs[i].q, NULL};
        cli_prom_sample(f, name, topic ? l : l + 4, jnum(h, qs[i].key) / 1e6);
    }
    char cn[128];
    snprintf(cn, sizeof cn, "%s_count", name);
    const char *l[] = {"topic", topic, "group", group, NULL};
    cli_prom_sample(f, cn, topic ? l : NULL, count ? (double)*count : 0);
}

/* Cumulative latency counts per subscription (the snapshots give counts
 * per interval). Keyed by topic + group; a handful of entries. */
struct cli_prom_state {
    pthread_mutex_t mu;
    uint64_t confirm_count;
    struct sub_count {
        char *key;
        uint64_t n;
    } *subs;
    size_t n_subs;
};

cli_prom_state_t *cli_prom_state_new(void)
{
    cli_prom_state_t *s = calloc(1, sizeof *s);
    if (s)
        pthread_mutex_init(&s->mu, NULL);
    return s;
}

void cli_prom_state_free(cli_prom_state_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->n_subs; i++)
        free(s->subs[i].key);
    free(s->subs);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static uint64_t *sub_count(cli_prom_state_t *s, const char *topic, const char *group)
{
    char key[1024];
    snprintf(key, sizeof key, "%s\n%s", topic, group);
    for (size_t i = 0; i < s->n_subs; i++)
        if (!strcmp(s->subs[i].key, key))
            return &s->subs[i].n;
    struct sub_count *ns = realloc(s->subs, (s->n_subs + 1) * sizeof *ns);
    if (!ns)
        return NULL;
    s->subs = ns;
    if (!(ns[s->n_subs].key = strdup(key)))
        return NULL;
    ns[s->n_subs].n = 0;
    return &ns[s->n_subs++].n;
}

/* One per-subscription family: every subscription's value of `key`. */
static void sub_family(FILE *f, json_t *subs, const char *name, const char *type,
                       const char *help, const char *key, double scale)
{
    size_t i;
    json_t *s;
    int any = 0;
    json_array_foreach(subs, i, s) any |= json_is_number(json_object_get(s, key));
    if (!any)
        return;
    cli_prom_family(f, name, type, help);
    json_array_foreach(subs, i, s)
    {
        json_t *v = json_object_get(s, key);
        if (!json_is_number(v))
            continue;
        const char *g = json_string_value(json_object_get(s, "group"));
        const char *l[] = {"topic", json_string_value(json_object_get(s, "topic")), "group",
                           g ? g : "", NULL};
        cli_prom_sample(f, name, l, json_number_value(v) * scale);
    }
}

msgbus_err_t cli_prom_bus(FILE *f, msgbus_t *bus, cli_prom_state_t *ps)
{
    char *text = NULL;
    msgbus_err_t e = msgbus_stats_json(bus, &text);
    if (e)
        return e;
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);
    msgbus_stats_free(text);
    if (!json_is_object(o)) {
        json_decref(o);
        return MSGBUS_ERR_INTERNAL;
    }
    pthread_mutex_lock(&ps->mu);

    cli_prom_family(f, "msgbus_info", "gauge", "The msgbus library and backend of this process.");
    const char *il[] = {"version", json_string_value(json_object_get(o, "msgbus_version")),
                        "backend", json_string_value(json_object_get(o, "backend")), NULL};
    cli_prom_sample(f, "msgbus_info", il, 1);
    cli_prom_family(f, "msgbus_uptime_seconds", "gauge", "Seconds since the bus was opened.");
    cli_prom_sample(f, "msgbus_uptime_seconds", NULL, jnum(o, "uptime_ms") / 1e3);
    cli_prom_family(f, "msgbus_state", "gauge",
                    "The bus connection's state: 1 for the current one, 0 for the others.");
    state_set(f, "msgbus_state", NULL, NULL, json_string_value(json_object_get(o, "state")));
    cli_prom_family(f, "msgbus_reconnects_total", "counter",
                    "Times the connection was lost and re-established.");
    cli_prom_sample(f, "msgbus_reconnects_total", NULL, jnum(o, "reconnects"));
    cli_prom_family(f, "msgbus_published_total", "counter",
                    "Messages published (confirmed + failed + outstanding).");
    cli_prom_sample(f, "msgbus_published_total", NULL, jnum(o, "published"));
    cli_prom_family(f, "msgbus_confirmed_total", "counter", "Publishes the broker confirmed.");
    cli_prom_sample(f, "msgbus_confirmed_total", NULL, jnum(o, "confirmed"));
    cli_prom_family(f, "msgbus_failed_total", "counter", "Publishes that failed, all errors.");
    cli_prom_sample(f, "msgbus_failed_total", NULL, jnum(o, "failed"));
    cli_prom_family(f, "msgbus_failed_by_error_total", "counter",
                    "Publishes that failed, by error code (only codes seen).");
    const char *ek;
    json_t *ev;
    json_object_foreach(json_object_get(o, "failed_by_error"), ek, ev)
    {
        const char *l[] = {"error", ek, NULL};
        cli_prom_sample(f, "msgbus_failed_by_error_total", l, json_number_value(ev));
    }
    cli_prom_family(f, "msgbus_outstanding", "gauge", "Publishes awaiting their confirm now.");
    cli_prom_sample(f, "msgbus_outstanding", NULL, jnum(o, "outstanding"));
    cli_prom_family(f, "msgbus_queue_max", "gauge",
                    "The most publishes that may await confirms at once (queue_max).");
    cli_prom_sample(f, "msgbus_queue_max", NULL, jnum(o, "queue_max"));
    cli_prom_family(f, "msgbus_confirm_latency_seconds", "summary",
                    "Publish to confirm latency: quantiles over the time since the previous "
                    "scrape (NaN when none), _count cumulative.");
    latency(f, "msgbus_confirm_latency_seconds", json_object_get(o, "confirm_latency_us"), NULL,
            NULL, &ps->confirm_count);
    cli_prom_family(f, "msgbus_confirm_latency_max_seconds", "gauge",
                    "Slowest confirm since the previous scrape (NaN when none).");
    cli_prom_sample(f, "msgbus_confirm_latency_max_seconds", NULL,
                    jnum(json_object_get(o, "confirm_latency_us"), "max") / 1e6);

    json_t *subs = json_object_get(o, "subscriptions");
    if (json_array_size(subs)) {
        size_t i;
        json_t *s;
        cli_prom_family(f, "msgbus_subscription_state", "gauge",
                        "A subscription's state: 1 for the current one, 0 for the others.");
        json_array_foreach(subs, i, s)
        {
            const char *g = json_string_value(json_object_get(s, "group"));
            state_set(f, "msgbus_subscription_state",
                      json_string_value(json_object_get(s, "topic")), g ? g : "",
                      json_string_value(json_object_get(s, "state")));
        }
        sub_family(f, subs, "msgbus_subscription_received_total", "counter",
                   "Messages handed out by msgbus_receive.", "received", 1);
        sub_family(f, subs, "msgbus_subscription_acked_total", "counter", "Messages acked.",
                   "acked", 1);
        sub_family(f, subs, "msgbus_subscription_nacked_total", "counter", "Messages nacked.",
                   "nacked", 1);
        sub_family(f, subs, "msgbus_subscription_retried_total", "counter",
                   "Messages sent for another attempt.", "retried", 1);
        sub_family(f, subs, "msgbus_subscription_dead_lettered_total", "counter",
                   "Messages sent to the dead-letter topic.", "dead_lettered", 1);
        sub_family(f, subs, "msgbus_subscription_unsettled", "gauge",
                   "Messages received and not settled yet.", "unsettled", 1);
        sub_family(f, subs, "msgbus_subscription_queued", "gauge",
                   "Messages fetched from the broker, not received yet.", "queued", 1);
        sub_family(f, subs, "msgbus_subscription_lag", "gauge",
                   "Messages on the broker not consumed yet by the group (Kafka: high "
                   "watermark - committed, summed over partitions; RabbitMQ: ready count).",
                   "lag", 1);
        cli_prom_family(f, "msgbus_subscription_settle_latency_seconds", "summary",
                        "Receive to settle latency (sampled): quantiles over the time since the "
                        "previous scrape (NaN when none), _count cumulative.");
        json_array_foreach(subs, i, s)
        {
            const char *t = json_string_value(json_object_get(s, "topic"));
            const char *g = json_string_value(json_object_get(s, "group"));
            latency(f, "msgbus_subscription_settle_latency_seconds",
                    json_object_get(s, "settle_latency_us"), t ? t : "", g ? g : "",
                    sub_count(ps, t ? t : "", g ? g : ""));
        }
    }
    pthread_mutex_unlock(&ps->mu);
    json_decref(o);
    return MSGBUS_OK;
}

/* ------------------------------------------------------------ HTTP server */

#define REQ_MAX 8192

struct cli_metrics {
    int lfd, wake[2];
    pthread_t th;
    cli_metrics_render_fn render;
    void *opaque;
    const char *cmd;
};

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the client went away: nothing to tell */
        p += w, n -= (size_t)w;
    }
}

static void respond(int fd, const char *status, const char *type, const char *extra,
                    const char *body, size_t len, int head)
{
    char hdr[512];
    int n = snprintf(hdr, sizeof hdr,
                     "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
                     "Connection: close\r\n\r\n",
                     status, type, len, extra ? extra : "");
    send_all(fd, hdr, (size_t)n);
    if (!head)
        send_all(fd, body, len);
}

static void serve(struct cli_metrics *m, int fd)
{
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    char req[REQ_MAX + 1];
    size_t len = 0;
    /* Read up to the blank line that ends the headers (a scraper sends no
     * body); more than REQ_MAX bytes before it is refused. */
    for (;;) {
        if (len == REQ_MAX) {
            static const char msg[] = "request too large\n";
            respond(fd, "431 Request Header Fields Too Large", "text/plain", NULL, msg,
                    sizeof msg - 1, 0);
            return;
        }
        ssize_t r = recv(fd, req + len, REQ_MAX - len, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return; /* closed or timed out before a full request */
        len += (size_t)r;
        req[len] = '\0';
        if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
            break;
    }
    char method[16], target[256];
    if (sscanf(req, "%15s %255s", method, target) != 2) {
        static const char msg[] = "bad request\n";
        respond(fd, "400 Bad Request", "text/plain", NULL, msg, sizeof msg - 1, 0);
        return;
    }
    int head = !strcmp(method, "HEAD");
    if (!head && strcmp(method, "GET")) {
        static const char msg[] = "only GET and HEAD\n";
        respond(fd, "405 Method Not Allowed", "text/plain", "Allow: GET, HEAD\r\n", msg,
                sizeof msg - 1, 0);
        return;
    }
    char *q = strchr(target, '?');
    if (q)
        *q = '\0';
    if (strcmp(target, "/metrics")) {
        static const char msg[] = "not found: the metrics are at /metrics\n";
        respond(fd, "404 Not Found", "text/plain", NULL, msg, sizeof msg - 1, head);
        return;
    }
    char *body = NULL;
    size_t blen = 0;
    FILE *f = open_memstream(&body, &blen);
    int ok = f && m->render(m->opaque, f) == 0;
    if (f)
        fclose(f);
    if (ok)
        respond(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8", NULL, body, blen, head);
    else {
        static const char msg[] = "cannot read the figures (see the process's stderr)\n";
        respond(fd, "500 Internal Server Error", "text/plain", NULL, msg, sizeof msg - 1, head);
    }
    free(body);
}

static void *metrics_main(void *arg)
{
    struct cli_metrics *m = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = m->lfd, .events = POLLIN}, {.fd = m->wake[0], .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        if (!(p[0].revents & POLLIN))
            continue;
        int fd = accept(m->lfd, NULL, NULL);
        if (fd < 0)
            continue; /* e.g. the client reset before accept; try the next */
        serve(m, fd);
        close(fd);
    }
    return NULL;
}

int cli_metrics_addr(const char *cmd, const char *addr, char *host, size_t cap, char port[8])
{
    /* ADDR:PORT, [IPv6]:PORT, or :PORT for every address. */
    const char *colon = strrchr(addr, ':');
    if (!colon || !colon[1] || (size_t)(colon - addr) >= cap)
        return cli_usage_error(cmd, "--metrics needs ADDR:PORT (e.g. 127.0.0.1:9464), not '%s'",
                               addr);
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']')
        h++, hl -= 2;
    else if (memchr(addr, ':', hl))
        return cli_usage_error(cmd, "--metrics: write an IPv6 address in brackets, [%.*s]:PORT",
                               (int)hl, addr);
    snprintf(host, cap, "%.*s", (int)hl, h);
    uint64_t p;
    if (cli_parse_u64(cmd, "--metrics port", colon + 1, &p))
        return CLI_USAGE;
    if (p > 65535)
        return cli_usage_error(cmd, "--metrics port %llu is above 65535", (unsigned long long)p);
    snprintf(port, 8, "%u", (unsigned)p);
    return CLI_OK;
}

int cli_metrics_start(const char *cmd, const char *addr, int quiet, cli_metrics_render_fn render,
                      void *opaque, cli_metrics_t **out)
{
    *out = NULL;
    char host[256], port[8];
    int rc = cli_metrics_addr(cmd, addr, host, sizeof host, port);
    if (rc)
        return rc;
    const char *h = host;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *ai = NULL;
    int gai = getaddrinfo(*h ? h : NULL, port, &hints, &ai);
    if (gai)
        return cli_usage_error(cmd, "--metrics: cannot resolve '%s': %s", h, gai_strerror(gai));
    int fd = -1, err = 0;
    for (struct addrinfo *a = ai; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && listen(fd, 16) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0) {
        fprintf(stderr, "msgbus %s: --metrics: cannot listen on %s: %s\n", cmd, addr,
                strerror(err));
        return CLI_FAILED;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    char nh[NI_MAXHOST] = "?", np[NI_MAXSERV] = "?";
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        getnameinfo((struct sockaddr *)&ss, sl, nh, sizeof nh, np, sizeof np,
                    NI_NUMERICHOST | NI_NUMERICSERV);
    struct cli_metrics *m = calloc(1, sizeof *m);
    if (!m || pipe(m->wake) != 0) {
        free(m);
        close(fd);
        fprintf(stderr, "msgbus %s: --metrics: out of resources\n", cmd);
        return CLI_FAILED;
    }
    m->lfd = fd;
    m->render = render;
    m->opaque = opaque;
    m->cmd = cmd;
    /* Signals stay with the command's own thread: the server's thread
     * starts with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int pe = pthread_create(&m->th, NULL, metrics_main, m);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pe) {
        close(m->wake[0]), close(m->wake[1]), close(fd);
        free(m);
        fprintf(stderr, "msgbus %s: --metrics: cannot start a thread\n", cmd);
        return CLI_FAILED;
    }
    if (!quiet)
        fprintf(stderr, "msgbus %s: metrics on http://%s%s%s:%s/metrics\n", cmd,
                strchr(nh, ':') ? "[" : "", nh, strchr(nh, ':') ? "]" : "", np);
    *out = m;
    return CLI_OK;
}

void cli_metrics_stop(cli_metrics_t *m)
{
    if (!m)
        return;
    ssize_t w;
    do
        w = write(m->wake[1], "x", 1);
    while (w < 0 && errno == EINTR);
    pthread_join(m->th, NULL);
    close(m->wake[0]), close(m->wake[1]), close(m->lfd);
    free(m);
}
