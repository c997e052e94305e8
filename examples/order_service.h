/*
 * order_service.h — the order service of examples/order_service.c as a
 * function, so examples/demo.c can run it beside billing in one process
 * (mem:// is shared only between buses of one process).
 */
#ifndef EXAMPLE_ORDER_SERVICE_H
#define EXAMPLE_ORDER_SERVICE_H

typedef struct order_service_opts {
    const char *url;      /* broker URL; NULL: $MSGBUS_URL */
    const char *db_path;  /* the service's SQLite database (created if missing) */
    int orders;           /* orders to take */
    int rollback_every;   /* every n-th order's transaction rolls back (0: none) */
    int drain_timeout_ms; /* how long to wait for the relay to empty the outbox */
} order_service_opts_t;

typedef struct order_service_report {
    int committed, rolled_back;
    long long committed_cents; /* sum over the committed orders */
    unsigned long long pending_left, failed; /* outbox rows at the end */
} order_service_report_t;

/* Takes the orders (order row + outbox row in one transaction each), runs
 * the outbox relay on a thread until the outbox is empty, and returns 0,
 * or 1 with the reason printed on stderr. */
int order_service_run(const order_service_opts_t *o, order_service_report_t *r);

#endif
