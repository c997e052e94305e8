/*
 * demo.c — the order service (order_service.c) and billing (billing.c)
 * with the broker between them, run side by side in one process:
 *
 *   order service:  each order row and its message commit in ONE SQLite
 *                   transaction; every 10th transaction rolls back, and its
 *                   message must never leave. A relay thread publishes the
 *                   committed outbox rows.
 *   billing:        consumes "orders" through the inbox into a ledger; every
 *                   50th message is published a second time on purpose (as a
 *                   broker may redeliver) and must be applied once.
 *
 * Runs on $MSGBUS_URL, or on the embedded default mem://demo when it is
 * unset (one process, because mem:// is in-process). Each service opens
 * its own bus, as two processes would. Prints what happened and exits
 * non-zero unless the ledger matches the committed orders exactly.
 *
 *   ./demo                                          # mem:// + SQLite
 *   MSGBUS_URL=kafka://127.0.0.1:9092 ./demo
 *   MSGBUS_URL=amqp://guest:guest@127.0.0.1:5672/ ./demo
 *   MSGBUS_URL='mem://demo?fault.dup=0.05&fault.redeliver=0.02&fault.confirm_fail=0.01&fault.disconnect_every=250&fault.seed=42' ./demo
 *
 * The last one runs on an embedded broker that misbehaves on purpose
 * (docs/testing.md): it repeats deliveries, loses acks, refuses publishes
 * and drops the connection. The inbox then skips more repeats than the
 * ones billing sends itself, and the ledger must still be exact.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <msgbus/msgbus.h>

#include "billing.h"
#include "order_service.h"

#define ORDERS 1000

typedef struct ready {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ready;
} ready_t;

static void on_ready(void *arg)
{
    ready_t *r = arg;
    pthread_mutex_lock(&r->mu);
    r->ready = 1;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

typedef struct billing_thread {
    billing_opts_t opts;
    billing_report_t report;
    int rc;
} billing_thread_t;

static void *run_billing(void *arg)
{
    billing_thread_t *b = arg;
    b->rc = billing_run(&b->opts, &b->report);
    if (b->rc) /* never leave the main thread waiting for the ready signal */
        on_ready(b->opts.ready_arg);
    return NULL;
}

int main(void)
{
    const char *url = getenv("MSGBUS_URL");
    if (!url || !*url) {
        url = "mem://demo";
        printf("MSGBUS_URL is not set: using the embedded broker %s\n", url);
    }
    char dir[] = "/tmp/msgbus-demo-XXXXXX";
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    char orders_path[256], billing_path[256];
    snprintf(orders_path, sizeof orders_path, "%s/orders.db", dir);
    snprintf(billing_path, sizeof billing_path, "%s/billing.db", dir);
    /* A bus of the demo's own, only to show where it runs (password as ***). */
    msgbus_t *probe;
    msgbus_err_t e = msgbus_open(&probe, url, NULL);
    if (e) {
        fprintf(stderr, "demo: %s (%s)\n", msgbus_strerror(e), msgbus_last_error());
        return 1;
    }
    printf("broker: %s (%s); databases in %s\n", msgbus_url(probe), msgbus_backend(probe), dir);
    msgbus_close(probe);

    /* Billing first: subscribing declares its group, which keeps every
     * order published from then on. */
    ready_t ready = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    atomic_int expect = 0;
    billing_thread_t b = {{url, billing_path, 30000, &expect, 50, on_ready, &ready}, {0}, 0};
    pthread_t th;
    if (pthread_create(&th, NULL, run_billing, &b)) {
        fprintf(stderr, "demo: cannot start the billing thread\n");
        return 1;
    }
    pthread_mutex_lock(&ready.mu);
    while (!ready.ready)
        pthread_cond_wait(&ready.cv, &ready.mu);
    pthread_mutex_unlock(&ready.mu);

    order_service_opts_t o = {url, orders_path, ORDERS, 10, 30000};
    order_service_report_t os = {0};
    int os_rc = b.rc ? 1 : order_service_run(&o, &os);
    /* Billing may stop once it has applied every committed order. */
    atomic_store(&expect, os_rc ? -1 : os.committed);
    pthread_join(th, NULL);
    if (os_rc || b.rc) {
        printf("demo: a service failed (see above); databases kept in %s\n", dir);
        return 1;
    }

    billing_report_t *r = &b.report;
    printf("order service: %d orders committed (%lld cents), %d rolled back; outbox: %llu "
           "pending, %llu failed\n",
           os.committed, os.committed_cents, os.rolled_back, os.pending_left, os.failed);
    printf("billing: %d delivered (%d sent twice on purpose), %d applied, %d duplicates "
           "skipped\n",
           r->delivered, r->sent_twice, r->applied, r->duplicates);
    printf("ledger: %lld rows, %lld distinct messages, %lld cents\n", r->ledger_rows,
           r->ledger_distinct, r->ledger_cents);

    /* With fault.* options the broker repeats messages of its own too: the
     * inbox skips those as well. Without them, the only repeats are
     * billing's own. */
    int faults = strstr(url, "fault.") != NULL;
    int ok = r->ledger_rows == os.committed && r->ledger_distinct == os.committed &&
             r->ledger_cents == os.committed_cents && r->applied == os.committed &&
             (faults ? r->duplicates >= r->sent_twice : r->duplicates == r->sent_twice) &&
             os.pending_left == 0 && os.failed == 0;
    printf("%s\n", ok ? "demo: every committed order billed exactly once; no rolled-back order "
                        "left the service"
                      : "demo: MISMATCH");
    if (ok) { /* keep the databases when something is wrong, for a look */
        const char *files[] = {"orders.db", "orders.db-wal", "orders.db-shm",
                               "billing.db", "billing.db-wal", "billing.db-shm"};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            char p[300];
            snprintf(p, sizeof p, "%s/%s", dir, files[i]);
            unlink(p);
        }
        rmdir(dir);
    } else {
        printf("databases kept in %s\n", dir);
    }
    return ok ? 0 : 1;
}
