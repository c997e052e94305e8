/*
 * bench_soak.c — a long run through one bus: publish → consume → ack of
 * many messages, sampling the process's memory (RSS), open descriptors
 * and threads every second, to show that nothing grows with the number
 * of messages.
 *
 *   bench_soak URL [messages=10000000] [bytes=64] [window=10000]
 *   (URL: any msgbus URL, e.g. "$MSGBUS_TEST_KAFKA_URL",
 *   "$MSGBUS_TEST_AMQP_URL", mem://soak)
 *
 * One thread publishes with a delivery report per message, keeping at most
 * `window` messages in flight — published but not yet both confirmed
 * (msgbus_poll serves the reports) and received; another receives and
 * acks. Bounding what is not yet received, not only what is unconfirmed,
 * keeps the backlog constant: on mem://, where a confirm comes at once, a
 * window on confirms alone let the backlog — and with it RSS — grow with
 * however much faster publishing was than receiving (2026-12-07: 490k
 * messages, 288 MiB, after 10 M), which says nothing about leaks. Each second one line: messages published, confirmed, received,
 * RSS, descriptors, threads. At the end:
 *
 *   SOAK url=… messages=… seconds=… rss_kib_first=… rss_kib_last=…
 *        rss_slope_kib_per_million=… fds=min..max threads=min..max failed=… lost=…
 *        rate=… cpu_msgbus=…
 *
 * The slope is a least-squares fit of RSS against messages received over
 * the second half of the run (the first half includes warm-up: librdkafka's
 * and the allocator's pools filling); flat memory is a slope near 0. `lost`
 * counts confirmed messages never received (must be 0). rate: messages
 * per second over the whole run; cpu_msgbus: the process's CPU time (every
 * thread, bench_util.h) per message in µs, publishing, receiving and
 * acking together (there is no raw side here). The topic and
 * group are unique per run and deleted at the end (bench_util.h).
 */
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "msgbus/msgbus.h"

static _Atomic long g_confirmed, g_failed, g_received;
static _Atomic bool g_done;
static msgbus_sub_t *g_sub;

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "bench_soak: %s: %s\n", what, detail);
    exit(2);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 3; /* ".", "..", and the directory's own descriptor */
}

static int count_threads(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

static void on_report(void *opaque, const msgbus_report_t *r)
{
    (void)opaque;
    if (r->status == MSGBUS_OK)
        atomic_fetch_add(&g_confirmed, 1);
    else
        atomic_fetch_add(&g_failed, 1);
}

static void *receiver(void *arg)
{
    (void)arg;
    msgbus_msg_t *batch[256];
    while (!atomic_load(&g_done)) {
        size_t n = 0;
        msgbus_err_t e = msgbus_receive_batch(g_sub, 256, 200, batch, &n);
        if (e != MSGBUS_OK && e != MSGBUS_ERR_TIMEOUT)
            die("msgbus_receive_batch", msgbus_last_error());
        for (size_t i = 0; i < n; i++) {
            if (msgbus_ack(batch[i]) != MSGBUS_OK)
                die("msgbus_ack", msgbus_last_error());
            msgbus_msg_free(batch[i]);
        }
        atomic_fetch_add(&g_received, (long)n);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        die("arguments", "bench_soak URL [messages=10000000] [bytes=64] [window=10000]");
    const char *url = argv[1];
    long total = argc > 2 ? atol(argv[2]) : 10000000;
    long bytes = argc > 3 ? atol(argv[3]) : 64;
    long window = argc > 4 ? atol(argv[4]) : 10000;
    if (total < 1000 || bytes < 1 || bytes > 1000000 || window < 1)
        die("arguments", "messages >= 1000, bytes 1..1000000, window >= 1");
    msgbus_t *bus = NULL;
    if (msgbus_open(&bus, url, NULL) != MSGBUS_OK)
        die("msgbus_open", msgbus_last_error());
    char topic[128];
    snprintf(topic, sizeof topic, "soak-%d-%ld", (int)getpid(), (long)time(NULL));
    if (msgbus_declare(bus, topic, "soak") != MSGBUS_OK ||
        msgbus_subscribe(bus, topic, "soak", &g_sub) != MSGBUS_OK)
        die("subscribe", msgbus_last_error());
    pthread_t t;
    pthread_create(&t, NULL, receiver, NULL);

    char *payload = malloc((size_t)bytes);
    memset(payload, 's', (size_t)bytes);
    enum { MAXS = 100000 };
    static double xs[MAXS], ys[MAXS];
    int ns = 0, fd_min = 1 << 30, fd_max = 0, th_min = 1 << 30, th_max = 0;
    long rss_first = -1, rss_last = 0;
    double t0 = now_s(), next = t0 + 1, progress_at = t0, c0 = bench_cpu_s();
    long sent = 0, last_received = 0;
    while (sent < total || atomic_load(&g_received) < atomic_load(&g_confirmed) ||
           atomic_load(&g_confirmed) + atomic_load(&g_failed) < sent) {
        if (atomic_load(&g_received) != last_received) {
            last_received = atomic_load(&g_received);
            progress_at = now_s();
        } else if (sent >= total && now_s() - progress_at > 60) {
            printf("nothing received for 60 s: stopping\n");
            break;
        }
        long settled = atomic_load(&g_confirmed), received = atomic_load(&g_received);
        if (received < settled)
            settled = received;
        if (sent < total && sent - settled - atomic_load(&g_failed) < window) {
            msgbus_msg_t *m = NULL;
            if (msgbus_msg_new(&m, payload, (size_t)bytes) != MSGBUS_OK)
                die("msgbus_msg_new", msgbus_last_error());
            msgbus_err_t e = msgbus_publish(bus, topic, m, on_report, NULL);
            msgbus_msg_free(m);
            if (e == MSGBUS_OK)
                sent++;
            else if (e != MSGBUS_ERR_QUEUE_FULL)
                die("msgbus_publish", msgbus_last_error());
            if ((sent & 255) == 0)
                msgbus_poll(bus, 0, NULL);
        } else {
            msgbus_poll(bus, 1, NULL); /* a report wakes it; a receive does not */
        }
        double now = now_s();
        if (now >= next || (sent >= total && ns == 0)) {
            next = now + 1;
            long rss = rss_kib();
            int fds = count_fds(), th = count_threads();
            if (rss_first < 0)
                rss_first = rss;
            rss_last = rss;
            fd_min = fds < fd_min ? fds : fd_min;
            fd_max = fds > fd_max ? fds : fd_max;
            th_min = th < th_min ? th : th_min;
            th_max = th > th_max ? th : th_max;
            if (ns < MAXS) {
                xs[ns] = (double)atomic_load(&g_received);
                ys[ns++] = (double)rss;
            }
            printf("t=%.0fs published=%ld confirmed=%ld received=%ld rss=%ld KiB fds=%d "
                   "threads=%d\n",
                   now - t0, sent, atomic_load(&g_confirmed), atomic_load(&g_received), rss,
                   fds, th);
            fflush(stdout);
        }
    }
    atomic_store(&g_done, true);
    pthread_join(t, NULL);
    double secs = now_s() - t0, cpu_us = (bench_cpu_s() - c0) * 1e6 / (double)total;
    /* Least squares over the second half of the samples. */
    double slope = 0;
    int from = ns / 2, k = ns - from;
    if (k >= 3) {
        double sx = 0, sy = 0, sxx = 0, sxy = 0;
        for (int i = from; i < ns; i++) {
            sx += xs[i];
            sy += ys[i];
            sxx += xs[i] * xs[i];
            sxy += xs[i] * ys[i];
        }
        double d = k * sxx - sx * sx;
        if (d != 0)
            slope = (k * sxy - sx * sy) / d * 1e6;
    }
    long lost = atomic_load(&g_confirmed) - atomic_load(&g_received);
    /* The URL without credentials or options (they may hold secrets). */
    char shown[256];
    const char *at = strchr(url, '@');
    const char *host = at ? at + 1 : strstr(url, "://") ? strstr(url, "://") + 3 : url;
    snprintf(shown, sizeof shown, "%.*s://%s", (int)strcspn(url, ":"), url, host);
    shown[strcspn(shown, "?")] = '\0';
    printf("SOAK url=%s messages=%ld seconds=%.0f rss_kib_first=%ld rss_kib_last=%ld "
           "rss_slope_kib_per_million=%.1f fds=%d..%d threads=%d..%d failed=%ld lost=%ld "
           "rate=%.0f cpu_msgbus=%.2f\n",
           shown, total, secs, rss_first, rss_last, slope, fd_min, fd_max, th_min, th_max,
           atomic_load(&g_failed), lost > 0 ? lost : 0, (double)total / secs, cpu_us);
    free(payload);
    msgbus_sub_close(g_sub);
    msgbus_close(bus);
    bench_delete(url, topic, "soak");
    return lost > 0 ? 1 : 0;
}
