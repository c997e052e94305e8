/*
 * billing.h — the billing consumer of examples/billing.c as a function, so
 * examples/demo.c can run it beside the order service in one process.
 */
#ifndef EXAMPLE_BILLING_H
#define EXAMPLE_BILLING_H

#include <stdatomic.h>

typedef struct billing_opts {
    const char *url;     /* broker URL; NULL: $MSGBUS_URL */
    const char *db_path; /* billing's SQLite database (created if missing) */
    int idle_ms;         /* stop when no order came for this long */
    atomic_int *expect;  /* may be NULL; when > 0: stop once that many orders
                            are applied (after a short drain) */
    int duplicate_every; /* > 0: publish every n-th delivery a second time,
                            as a broker may redeliver, to show the inbox at work */
    void (*on_ready)(void *arg); /* called once subscribed (may be NULL) */
    void *ready_arg;
} billing_opts_t;

typedef struct billing_report {
    int delivered, applied, duplicates, sent_twice;
    long long ledger_rows, ledger_distinct, ledger_cents;
} billing_report_t;

/* Subscribes to "orders" as group "billing" and applies each order once to
 * the ledger through the inbox. Returns 0, or 1 with the reason on stderr. */
int billing_run(const billing_opts_t *o, billing_report_t *r);

#endif
