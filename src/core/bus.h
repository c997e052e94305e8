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
    char *start; /* option start= as given (NULL: not given); parsed at
                    subscribe, where a duration counts back from */
};

struct mb_hold;
struct mb_retry_worker;

/* ---- stats (stats.c) ----
 * A latency histogram with fixed log buckets: values below 16 µs have a
 * bucket each, above that 8 buckets per power of two (12.5 % wide), up to
 * 2^40 µs. Written with relaxed atomic adds by whoever records (no lock,
 * no allocation); a reader diffs it against its previous copy to get the
 * figures of one interval. */
#define MB_HIST_SUB_BITS 3
#define MB_HIST_BUCKETS (16 + (40 - 4) * (1 << MB_HIST_SUB_BITS))
struct mb_hist {
    _Atomic uint64_t b[MB_HIST_BUCKETS];
    _Atomic int64_t max; /* largest since the reader last took it */
};
MB_HIDDEN void mb_hist_add(struct mb_hist *h, int64_t us);

/* Bus and subscription state as the backends report it. */
struct mb_state {
    msgbus_state_t state;
    char reason[512];
};

struct mb_state_ev;

/* Counters a subscription's settling threads write (the application's),
 * on their own cache line, away from what the backend's thread writes. */
struct mb_sub_stats {
    _Alignas(64) _Atomic uint64_t acked;
    _Atomic uint64_t nacked;
    _Atomic uint64_t settled; /* acks, nacks and msgbus_dead_letter calls */
    _Atomic uint64_t retried;
    _Atomic uint64_t dead_lettered;
    struct mb_hist settle_lat; /* receive→settle, sampled (docs/stats.md) */
};

/* What the stats reader keeps between snapshots to report "the last
 * interval" (guarded by the bus's stats lock). */
struct mb_hist_prev {
    uint64_t b[MB_HIST_BUCKETS];
};

/* Hooks as installed (msgbus_set_hooks); `on` is false when none. */
struct mb_hooks {
    bool on;
    msgbus_hooks_t h;
};

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
    /* What the on_publish hook returned, for on_confirm. */
    void *span;
    /* The slab the token was cut from (bus.c), NULL for one of its own. */
    struct mb_token_slab *slab;
    /* The message a backend sends in place (mb_msg_hold), released by the
     * backend when the broker's report comes. NULL: none. */
    msgbus_msg_t *held;
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

    /* Observability (stats.c). received is counted under mu by
     * msgbus_receive; the rest in `st`. state under the bus's state_mu. */
    uint64_t received;
    struct mb_state state;
    struct mb_hooks hooks;
    struct mb_hist_prev *settle_prev; /* reader's copy, stats lock */
    struct mb_sub_stats st;

    /* Positions and flow (caps.c; msgbus_sub_pause). paused under mu:
     * while set, msgbus_receive hands nothing out and the queued messages
     * are not counted in the bus's work (msgbus_fd). */
    struct mb_start start;
    bool paused;
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

    /* Observability (stats.c). Confirm-side counters on their own cache
     * line: written by the thread that confirms, read by stats. */
    struct {
        _Alignas(64) _Atomic uint64_t confirmed;
        _Atomic uint64_t failed_by[MSGBUS_ERR_INTERNAL + 1];
        struct mb_hist confirm_lat;
    } st;
    int64_t opened_mono_ms;
    long stats_interval_ms;
    struct mb_hooks hooks;
    /* Connection state, state events queued for the state callback (served
     * with the delivery reports, under mu), the callbacks. */
    pthread_mutex_t state_mu;
    struct mb_state state;
    uint64_t reconnects;
    bool lost; /* RECONNECTING or DOWN since the last UP */
    struct mb_state_ev *ev_head, *ev_tail; /* under mu */
    _Atomic long ev_count;                 /* changed under mu */
    _Atomic bool stats_due;                /* the ticker asks for a snapshot */
    bool be_closed; /* msgbus_close closed the backend: no snapshot may ask it */
    msgbus_state_cb state_cb;
    void *state_opaque;
    msgbus_stats_cb stats_cb;
    void *stats_opaque;
    /* Snapshots: one at a time; the previous histogram copies. */
    pthread_mutex_t snap_mu;
    struct mb_hist_prev confirm_prev;
    int64_t prev_snap_ms;
    /* The stats ticker (a thread, only with stats_interval_ms > 0). */
    pthread_t ticker;
    bool ticker_on;
    bool ticker_stop;
    pthread_mutex_t ticker_mu;
    pthread_cond_t ticker_cond;

    /* What the backend guarantees as configured, asked once after open. */
    struct mb_caps caps;

    /* CloudEvents (cloudevents.c): options cloudevents= and ce_source=. */
    enum mb_ce_mode ce_mode;
    char *ce_source;
};

/* How much of `n` messages added to (or taken from) the sub's queue counts
 * in the bus's work (msgbus_fd): none while it is paused. Under sub->mu. */
static inline long mb_sub_work(const msgbus_sub_t *sub, size_t n)
{
    return sub->paused ? 0 : (long)n;
}

/* ---- bus.c services for retry.c ---- */
MB_HIDDEN void mb_work_add(msgbus_t *bus, long n);
MB_HIDDEN void mb_work_sub(msgbus_t *bus, long n);
MB_HIDDEN void mb_sub_unref(msgbus_sub_t *sub);
/* The backend settle with the subscription's close guard: MSGBUS_ERR_CLOSED
 * once the subscription is closed (the broker redelivers). */
MB_HIDDEN msgbus_err_t mb_sub_settle(msgbus_sub_t *sub, msgbus_msg_t *m, enum mb_settle how);
MB_HIDDEN msgbus_err_t mb_check_name(const char *what, const char *name);

/* ---- cloudevents.c ---- */
/* Reads cloudevents= and ce_source= (the default source names this host
 * and program). */
MB_HIDDEN msgbus_err_t mb_ce_conf_read(msgbus_t *bus, struct mb_url *url);

/* ---- caps.c ---- */
MB_HIDDEN void mb_caps_load(msgbus_t *bus);
MB_HIDDEN bool mb_caps_has(const msgbus_t *bus, uint64_t cap);
/* MSGBUS_ERR_UNSUPPORTED: "<what>: <backend> has no '<cap>' capability: <why>". */
MB_HIDDEN msgbus_err_t mb_caps_refuse(const msgbus_t *bus, uint64_t cap, const char *what);
/* require=a,b: MSGBUS_ERR_CONFIG naming every capability missing, and why. */
MB_HIDDEN msgbus_err_t mb_caps_require(const msgbus_t *bus, const char *list);
/* The start of a subscription from option text (NULL: default), refused
 * (UNSUPPORTED) where the backend cannot start there. */
MB_HIDDEN msgbus_err_t mb_sub_start_resolve(const msgbus_t *bus, const char *text,
                                            struct mb_start *out);
MB_HIDDEN msgbus_err_t mb_subscribe_policy(msgbus_t *bus, const char *topic, const char *group,
                                           struct mb_retry_policy *pol, msgbus_sub_t **out);

/* ---- stats.c ---- */
MB_HIDDEN void mb_stats_init(msgbus_t *bus);
/* Starts the ticker when stats_interval_ms > 0 (after open succeeded). */
MB_HIDDEN void mb_stats_start(msgbus_t *bus);
/* Stops the ticker and frees queued events (at close). */
MB_HIDDEN void mb_stats_stop(msgbus_t *bus);
MB_HIDDEN void mb_stats_destroy(msgbus_t *bus);
/* Serves queued state events and a due stats snapshot on the calling
 * thread; returns how many callbacks ran. */
MB_HIDDEN int mb_stats_serve(msgbus_t *bus);
/* True when events or a snapshot wait (call under bus->mu). */
MB_HIDDEN bool mb_stats_pending_locked(msgbus_t *bus);
/* A received message leaves msgbus_receive / is settled / is freed. */
MB_HIDDEN void mb_stats_received(msgbus_sub_t *sub, msgbus_msg_t *m);
MB_HIDDEN void mb_stats_settled(msgbus_msg_t *m, msgbus_settled_t how);
/* Subscription made / being closed (state + hooks). */
MB_HIDDEN void mb_stats_sub_open(msgbus_sub_t *sub);
MB_HIDDEN void mb_stats_sub_free(msgbus_sub_t *sub);

/* ---- retry.c ---- */
/* The core's URL options for retry (looked up at open). */
MB_HIDDEN msgbus_err_t mb_retry_policy_from_url(struct mb_url *url, struct mb_retry_policy *out);
MB_HIDDEN void mb_retry_policy_free(struct mb_retry_policy *p);
/* Called by mb_sub_push under sub->mu: takes messages whose key is held
 * out of the chain [*first..] (returns how many remain in the chain). */
MB_HIDDEN size_t mb_hold_filter(msgbus_sub_t *sub, msgbus_msg_t **first, msgbus_msg_t **last);
/* Frees the holds of a closing subscription (their messages released). */
MB_HIDDEN void mb_holds_free(msgbus_sub_t *sub);
/* Under sub->mu: moves the parked messages `pred` picks onto *dropped
 * (linked by next) and returns how many. */
MB_HIDDEN size_t mb_holds_drop(msgbus_sub_t *sub, bool (*pred)(const msgbus_msg_t *, void *),
                               void *arg, msgbus_msg_t **dropped);
/* An internal confirm (token->internal) reached the core. */
MB_HIDDEN void mb_retry_confirmed(msgbus_t *bus, struct mb_confirm *token);
/* Stops the worker at bus close (after the subs closed and the flush). */
MB_HIDDEN void mb_retry_stop(msgbus_t *bus);
/* Stops the worker if running and frees what it still holds (after the
 * backend closed). */
MB_HIDDEN void mb_retry_release(msgbus_t *bus);

#endif
