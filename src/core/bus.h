/*
 * bus.h — the core's own structures (bus, subscription, confirm token),
 * shared by bus.c and retry.c. Backends never include this: they see the
 * services of backend.h only.
 */
#ifndef MB_BUS_H
#define MB_BUS_H

#include <stdatomic.h>

#include "backends/backend.h"

#define MB_TOPIC_MAX 249

/* A subscription's retry policy (see msgbus_subscribe_ex). */
struct mb_retry_policy {
    long max_attempts; /* 0: unlimited */
    long initial_ms;
    double multiplier;
    long max_ms;
    double jitter;
    bool dlq;
    char *dlq_topic; /* NULL: <topic>.dlq (on a bus: always NULL) */
    char *dlq_group;
};

struct mb_hold;
struct mb_retry_worker;

struct mb_confirm {
    msgbus_delivery_cb cb;
    void *opaque;
    char *topic;
    char *id;
    msgbus_err_t status;
    char *error;
    struct mb_confirm *next;
    /* A publish msgbus makes for itself (a dead letter): its outcome goes
     * to the retry worker, not to the application's callbacks. */
    bool internal;
    /* The slab the token was cut from (bus.c), NULL for one of its own. */
    struct mb_token_slab *slab;
};

struct msgbus_sub {
    msgbus_t *bus;                    /* NULL once the bus closed it */
    const struct mb_backend_ops *ops; /* kept for release after bus close */
    char *topic;
    char *group;
    struct mb_backend_sub *bs;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    msgbus_msg_t *head, *tail;
    size_t qlen;
    bool closed;
    /* Held shared by ack/nack while they call the backend, exclusively by
     * close, so a settle never races the backend's unsubscribe. */
    pthread_rwlock_t settle_lock;
    _Atomic long refs; /* 1 while open + 1 per live received message */
    struct msgbus_sub *next;

    /* Retry and dead letters (retry.c). holds: keys whose messages are held
     * back behind a message waiting for its retry; guarded by mu. */
    struct mb_retry_policy policy;
    struct mb_hold *holds;
    _Atomic long dead_letters; /* handed to the worker, not yet settled */
};

struct msgbus {
    const struct mb_backend_ops *ops;
    struct mb_backend *be;
    struct mb_url *url;
    long queue_max;
    long close_timeout_ms;
    /* Set by msgbus_close (monotonic ms): one deadline shared by every step
     * of the close (dead letters of each subscription, then confirms), so
     * the whole close keeps to close_timeout_ms. 0 while open. */
    _Atomic int64_t close_until;
    _Atomic long outstanding;
    _Atomic long failed; /* since the previous flush */
    _Atomic bool closing;

    pthread_mutex_t mu; /* report queue; flush/poll waiters */
    pthread_cond_t cond;
    struct mb_confirm *rq_head, *rq_tail;

    /* Wake-up descriptor: readable while work > 0 (reports + queued
     * messages of all subs). Signalled/cleared only on transitions. */
    int efd;
    _Atomic long work;
    pthread_mutex_t fd_mu;

    pthread_mutex_t subs_mu;
    struct msgbus_sub *subs;

    /* Retry defaults from the URL, and the worker thread that runs retry
     * timers and dead letters (started on first use; retry.c). */
    struct mb_retry_policy policy;
    struct mb_retry_worker *worker;
    pthread_mutex_t worker_mu;
};

/* ---- bus.c services for retry.c ---- */
MB_HIDDEN void mb_work_add(msgbus_t *bus, long n);
MB_HIDDEN void mb_work_sub(msgbus_t *bus, long n);
MB_HIDDEN void mb_sub_unref(msgbus_sub_t *sub);
/* The backend settle with the subscription's close guard: MSGBUS_ERR_CLOSED
 * once the subscription is closed (the broker redelivers). */
MB_HIDDEN msgbus_err_t mb_sub_settle(msgbus_sub_t *sub, msgbus_msg_t *m, enum mb_settle how);
MB_HIDDEN msgbus_err_t mb_check_name(const char *what, const char *name);
MB_HIDDEN msgbus_err_t mb_subscribe_policy(msgbus_t *bus, const char *topic, const char *group,
                                           struct mb_retry_policy *pol, msgbus_sub_t **out);

/* ---- retry.c ---- */
/* The core's URL options for retry (looked up at open). */
MB_HIDDEN msgbus_err_t mb_retry_policy_from_url(struct mb_url *url, struct mb_retry_policy *out);
MB_HIDDEN void mb_retry_policy_free(struct mb_retry_policy *p);
/* Called by mb_sub_push under sub->mu: takes messages whose key is held
 * out of the chain [*first..] (returns how many remain in the chain). */
MB_HIDDEN size_t mb_hold_filter(msgbus_sub_t *sub, msgbus_msg_t **first, msgbus_msg_t **last);
/* Frees the holds of a closing subscription (their messages released). */
MB_HIDDEN void mb_holds_free(msgbus_sub_t *sub);
/* An internal confirm (token->internal) reached the core. */
MB_HIDDEN void mb_retry_confirmed(msgbus_t *bus, struct mb_confirm *token);
/* Stops the worker at bus close (after the subs closed and the flush). */
MB_HIDDEN void mb_retry_stop(msgbus_t *bus);
/* Stops the worker if running and frees what it still holds (after the
 * backend closed). */
MB_HIDDEN void mb_retry_release(msgbus_t *bus);

#endif
