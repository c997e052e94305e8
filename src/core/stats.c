/*
 * stats.c — what an operator sees of a bus: connection and subscription
 * state, counters, latency histograms, the JSON snapshot
 * (msgbus_stats_json, docs/stats.md), the periodic stats callback, and the
 * tracer hooks (docs/tracing.md).
 *
 * The hot path pays next to nothing: a confirm adds to a counter on a cache
 * line only confirming threads write, a received message is counted under
 * the lock msgbus_receive already holds, and latencies go into fixed
 * histograms by one relaxed atomic add. Everything else — percentiles,
 * published = confirmed + failed + outstanding, unsettled = received −
 * settled, lag — is worked out when a snapshot is asked for.
 */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/bus.h"

/* State events waiting beyond this are dropped (and counted): a callback
 * that is never served must not grow memory without bound. */
#define MB_STATE_EV_MAX 1024

struct mb_state_ev {
    struct mb_state_ev *next;
    msgbus_state_t state, previous;
    int64_t time_ms;
    msgbus_sub_t *sub; /* holds a reference; NULL: the bus */
    char reason[512];
};

int64_t mb_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------ histograms */

static int mb_hist_index(int64_t us)
{
    if (us < 16)
        return us < 0 ? 0 : (int)us;
    int e = 63 - __builtin_clzll((unsigned long long)us);
    int sub = (int)((us >> (e - MB_HIST_SUB_BITS)) & ((1 << MB_HIST_SUB_BITS) - 1));
    int i = 16 + (e - 4) * (1 << MB_HIST_SUB_BITS) + sub;
    return i < MB_HIST_BUCKETS ? i : MB_HIST_BUCKETS - 1;
}

/* The largest value bucket i holds. */
static int64_t mb_hist_upper(int i)
{
    if (i < 16)
        return i;
    int e = 4 + (i - 16) / (1 << MB_HIST_SUB_BITS);
    int sub = (i - 16) % (1 << MB_HIST_SUB_BITS);
    int64_t width = INT64_C(1) << (e - MB_HIST_SUB_BITS);
    return ((int64_t)((1 << MB_HIST_SUB_BITS) + sub) << (e - MB_HIST_SUB_BITS)) + width - 1;
}

void mb_hist_add(struct mb_hist *h, int64_t us)
{
    if (us < 0)
        us = 0;
    atomic_fetch_add_explicit(&h->b[mb_hist_index(us)], 1, memory_order_relaxed);
    int64_t cur = atomic_load_explicit(&h->max, memory_order_relaxed);
    while (us > cur && !atomic_compare_exchange_weak_explicit(&h->max, &cur, us,
                                                              memory_order_relaxed,
                                                              memory_order_relaxed))
        ;
}

/* {"count", "p50", "p90", "p99", "max"} of what was added since `prev`
 * (updated); the percentiles are the upper bounds of their buckets (at
 * most 12.5 % high), never above the interval's max. */
static json_t *mb_hist_json(struct mb_hist *h, struct mb_hist_prev *prev)
{
    uint64_t d[MB_HIST_BUCKETS], total = 0;
    for (int i = 0; i < MB_HIST_BUCKETS; i++) {
        uint64_t cur = atomic_load_explicit(&h->b[i], memory_order_relaxed);
        d[i] = cur - prev->b[i];
        prev->b[i] = cur;
        total += d[i];
    }
    int64_t mx = atomic_exchange_explicit(&h->max, 0, memory_order_relaxed);
    json_t *o = json_object();
    json_object_set_new(o, "count", json_integer((json_int_t)total));
    static const struct {
        const char *name;
        double q;
    } qs[] = {{"p50", 0.50}, {"p90", 0.90}, {"p99", 0.99}};
    for (size_t k = 0; k < sizeof qs / sizeof qs[0]; k++) {
        if (total == 0) {
            json_object_set_new(o, qs[k].name, json_null());
            continue;
        }
        uint64_t rank = (uint64_t)(qs[k].q * (double)total + 0.999999);
        if (rank < 1)
            rank = 1;
        uint64_t cum = 0;
        int64_t v = 0;
        for (int i = 0; i < MB_HIST_BUCKETS; i++) {
            cum += d[i];
            if (cum >= rank) {
                v = mb_hist_upper(i);
                break;
            }
        }
        if (mx > 0 && v > mx)
            v = mx;
        json_object_set_new(o, qs[k].name, json_integer(v));
    }
    json_object_set_new(o, "max", total ? json_integer(mx) : json_null());
    return o;
}

/* ----------------------------------------------------------------- state */

MSGBUS_API const char *msgbus_state_name(msgbus_state_t state)
{
    switch (state) {
    case MSGBUS_STATE_CONNECTING: return "CONNECTING";
    case MSGBUS_STATE_UP: return "UP";
    case MSGBUS_STATE_RECONNECTING: return "RECONNECTING";
    case MSGBUS_STATE_DOWN: return "DOWN";
    }
    return "?";
}

static void mb_copy_reason(char *dst, size_t size, const char *src)
{
    if (dst && size) {
        size_t n = strlen(src);
        if (n >= size)
            n = size - 1;
        memcpy(dst, src, n);
        dst[n] = '\0';
    }
}

/* A state and its reason, read under the lock that guards it. */
static msgbus_state_t mb_state_read(pthread_mutex_t *mu, const struct mb_state *st, char *reason,
                                    size_t size)
{
    pthread_mutex_lock(mu);
    msgbus_state_t s = st->state;
    mb_copy_reason(reason, size, st->reason);
    pthread_mutex_unlock(mu);
    return s;
}

/* Records a change (caller holds the guarding lock); false when `st`
 * already says exactly that. *prev gets the state before. */
static bool mb_state_write(struct mb_state *st, msgbus_state_t state, const char *reason,
                           msgbus_state_t *prev)
{
    *prev = st->state;
    if (st->state == state && strcmp(st->reason, reason) == 0)
        return false;
    st->state = state;
    mb_copy_reason(st->reason, sizeof st->reason, reason);
    return true;
}

MSGBUS_API msgbus_state_t msgbus_state(const msgbus_t *cbus, char *reason, size_t size)
{
    msgbus_t *bus = (msgbus_t *)cbus;
    if (!bus) {
        mb_error(MSGBUS_ERR_INVALID, "msgbus_state: bus is NULL");
        mb_copy_reason(reason, size, "");
        return MSGBUS_STATE_DOWN;
    }
    return mb_state_read(&bus->state_mu, &bus->state, reason, size);
}

MSGBUS_API msgbus_state_t msgbus_sub_state(const msgbus_sub_t *csub, char *reason, size_t size)
{
    msgbus_sub_t *sub = (msgbus_sub_t *)csub;
    if (!sub) {
        mb_error(MSGBUS_ERR_INVALID, "msgbus_sub_state: sub is NULL");
        mb_copy_reason(reason, size, "");
        return MSGBUS_STATE_DOWN;
    }
    return mb_state_read(&sub->mu, &sub->state, reason, size);
}

/* Queues one event for the state callback (when one is installed). */
static void mb_state_enqueue(msgbus_t *bus, msgbus_sub_t *sub, msgbus_state_t state,
                             msgbus_state_t previous, const char *reason)
{
    struct mb_state_ev *ev = calloc(1, sizeof *ev);
    if (!ev) {
        mb_log(MSGBUS_LOG_ERROR, "out of memory queueing a state event (%s: %s)",
               msgbus_state_name(state), reason);
        return;
    }
    ev->state = state;
    ev->previous = previous;
    ev->time_ms = mb_now_ms();
    mb_copy_reason(ev->reason, sizeof ev->reason, reason);
    if (sub) {
        atomic_fetch_add(&sub->refs, 1);
        ev->sub = sub;
    }
    pthread_mutex_lock(&bus->mu);
    bool want = bus->state_cb != NULL && !atomic_load(&bus->closing);
    bool full = want && bus->ev_count >= MB_STATE_EV_MAX;
    if (want && !full) {
        if (bus->ev_tail)
            bus->ev_tail->next = ev;
        else
            bus->ev_head = ev;
        bus->ev_tail = ev;
        bus->ev_count++;
        pthread_cond_broadcast(&bus->cond);
    }
    pthread_mutex_unlock(&bus->mu);
    if (!want || full) {
        if (full)
            mb_log(MSGBUS_LOG_WARN,
                   "%d state events wait for msgbus_poll: dropping this one (%s: %s); "
                   "msgbus_state has the current state",
                   MB_STATE_EV_MAX, msgbus_state_name(state), reason);
        if (ev->sub)
            mb_sub_unref(ev->sub);
        free(ev);
        return;
    }
    mb_work_add(bus, 1);
}

void mb_bus_state(msgbus_t *bus, msgbus_state_t state, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&bus->state_mu);
    msgbus_state_t prev;
    if (!mb_state_write(&bus->state, state, reason, &prev)) {
        pthread_mutex_unlock(&bus->state_mu);
        return;
    }
    if (state == MSGBUS_STATE_UP) {
        if (bus->lost)
            bus->reconnects++;
        bus->lost = false;
    } else if (state == MSGBUS_STATE_RECONNECTING || state == MSGBUS_STATE_DOWN) {
        bus->lost = true;
    }
    pthread_mutex_unlock(&bus->state_mu);
    mb_log(state == MSGBUS_STATE_DOWN ? MSGBUS_LOG_WARN : MSGBUS_LOG_INFO, "%s: %s -> %s (%s)",
           bus->url->redacted, msgbus_state_name(prev), msgbus_state_name(state), reason);
    mb_state_enqueue(bus, NULL, state, prev, reason);
}

void mb_sub_state(msgbus_sub_t *sub, msgbus_state_t state, const char *fmt, ...)
{
    char reason[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&sub->mu);
    msgbus_state_t prev;
    bool same = !mb_state_write(&sub->state, state, reason, &prev);
    bool closed = sub->closed;
    pthread_mutex_unlock(&sub->mu);
    if (same || closed || !sub->bus)
        return;
    mb_log(state == MSGBUS_STATE_DOWN ? MSGBUS_LOG_WARN : MSGBUS_LOG_INFO,
           "subscription to '%s'%s%s: %s -> %s (%s)", sub->topic, sub->group ? " as " : "",
           sub->group ? sub->group : "", msgbus_state_name(prev), msgbus_state_name(state),
           reason);
    mb_state_enqueue(sub->bus, sub, state, prev, reason);
}

MSGBUS_API msgbus_err_t msgbus_set_state_cb(msgbus_t *bus, msgbus_state_cb cb, void *opaque)
{
    if (!bus)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_set_state_cb: bus is NULL");
    pthread_mutex_lock(&bus->mu);
    bus->state_cb = cb;
    bus->state_opaque = opaque;
    pthread_mutex_unlock(&bus->mu);
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_set_stats_cb(msgbus_t *bus, msgbus_stats_cb cb, void *opaque)
{
    if (!bus)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_set_stats_cb: bus is NULL");
    pthread_mutex_lock(&bus->mu);
    bus->stats_cb = cb;
    bus->stats_opaque = opaque;
    pthread_mutex_unlock(&bus->mu);
    return MSGBUS_OK;
}

/* ----------------------------------------------------------------- hooks */

MSGBUS_API msgbus_err_t msgbus_set_hooks(msgbus_t *bus, const msgbus_hooks_t *hooks, size_t size)
{
    if (!bus)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_set_hooks: bus is NULL");
    if (!hooks) {
        memset(&bus->hooks, 0, sizeof bus->hooks);
        return MSGBUS_OK;
    }
    if (size == 0 || size > sizeof(msgbus_hooks_t) || size < sizeof(void *))
        return mb_error(MSGBUS_ERR_INVALID,
                        "msgbus_set_hooks: size %zu is not sizeof(msgbus_hooks_t) (%zu)", size,
                        sizeof(msgbus_hooks_t));
    msgbus_hooks_t h;
    memset(&h, 0, sizeof h);
    memcpy(&h, hooks, size); /* an older caller's struct: the rest stays NULL */
    bus->hooks.h = h;
    bus->hooks.on = h.on_publish || h.on_confirm || h.on_receive || h.on_settle;
    return MSGBUS_OK;
}

void mb_stats_received(msgbus_sub_t *sub, msgbus_msg_t *m)
{
    if (sub->hooks.on && (sub->hooks.h.on_receive || sub->hooks.h.on_settle)) {
        m->hook_armed = true;
        m->hook_span = sub->hooks.h.on_receive
                           ? sub->hooks.h.on_receive(sub->hooks.h.opaque, m)
                           : NULL;
    }
}

void mb_stats_settled(msgbus_msg_t *m, msgbus_settled_t how)
{
    msgbus_sub_t *sub = m->sub;
    if (!sub)
        return;
    if (how != MSGBUS_SETTLED_NONE) {
        atomic_fetch_add_explicit(&sub->st.settled, 1, memory_order_relaxed);
        if (how == MSGBUS_SETTLED_ACK)
            atomic_fetch_add_explicit(&sub->st.acked, 1, memory_order_relaxed);
        else if (how == MSGBUS_SETTLED_NACK)
            atomic_fetch_add_explicit(&sub->st.nacked, 1, memory_order_relaxed);
        if (m->recv_us)
            mb_hist_add(&sub->st.settle_lat, mb_mono_us() - m->recv_us);
    }
    if (m->hook_armed) {
        m->hook_armed = false;
        if (sub->hooks.h.on_settle)
            sub->hooks.h.on_settle(sub->hooks.h.opaque, m, how, m->hook_span);
        m->hook_span = NULL;
    }
}

void mb_stats_sub_open(msgbus_sub_t *sub)
{
    sub->hooks = sub->bus->hooks;
    sub->state.state = MSGBUS_STATE_CONNECTING;
    snprintf(sub->state.reason, sizeof sub->state.reason, "subscribing");
}

void mb_stats_sub_free(msgbus_sub_t *sub)
{
    free(sub->settle_prev);
    sub->settle_prev = NULL;
}

/* ------------------------------------------------------------- snapshots */

static json_t *mb_sub_json(msgbus_t *bus, msgbus_sub_t *sub)
{
    json_t *o = json_object();
    json_object_set_new(o, "topic", json_string(sub->topic));
    json_object_set_new(o, "group", sub->group ? json_string(sub->group) : json_null());
    pthread_mutex_lock(&sub->mu);
    uint64_t received = sub->received;
    size_t queued = sub->qlen;
    struct mb_state st = sub->state;
    pthread_mutex_unlock(&sub->mu);
    uint64_t settled = atomic_load_explicit(&sub->st.settled, memory_order_relaxed);
    json_object_set_new(o, "state", json_string(msgbus_state_name(st.state)));
    json_object_set_new(o, "state_reason", json_string(st.reason));
    json_object_set_new(o, "received", json_integer((json_int_t)received));
    json_object_set_new(o, "acked", json_integer((json_int_t)atomic_load(&sub->st.acked)));
    json_object_set_new(o, "nacked", json_integer((json_int_t)atomic_load(&sub->st.nacked)));
    json_object_set_new(o, "retried", json_integer((json_int_t)atomic_load(&sub->st.retried)));
    json_object_set_new(o, "dead_lettered",
                        json_integer((json_int_t)atomic_load(&sub->st.dead_lettered)));
    json_object_set_new(o, "unsettled",
                        json_integer(received > settled ? (json_int_t)(received - settled) : 0));
    json_object_set_new(o, "queued", json_integer((json_int_t)queued));
    if (!sub->settle_prev)
        sub->settle_prev = calloc(1, sizeof *sub->settle_prev);
    if (sub->settle_prev)
        json_object_set_new(o, "settle_latency_us",
                            mb_hist_json(&sub->st.settle_lat, sub->settle_prev));
    /* Lag asks the broker: under the settle guard so the backend's
     * unsubscribe cannot run meanwhile. */
    if (bus->ops->version >= 2 && bus->ops->sub_stats) {
        pthread_rwlock_rdlock(&sub->settle_lock);
        if (!sub->closed && sub->bs)
            bus->ops->sub_stats(sub->bs, o, 1000);
        pthread_rwlock_unlock(&sub->settle_lock);
    }
    return o;
}

static json_t *mb_stats_build(msgbus_t *bus)
{
    pthread_mutex_lock(&bus->snap_mu);
    int64_t now = mb_mono_ms();
    json_t *o = json_object();
    json_object_set_new(o, "msgbus_version", json_string(MSGBUS_VERSION_STRING));
    json_object_set_new(o, "time_ms", json_integer(mb_now_ms()));
    json_object_set_new(o, "backend", json_string(bus->ops->scheme));
    json_object_set_new(o, "url", json_string(bus->url->redacted));
    json_object_set_new(o, "uptime_ms", json_integer(now - bus->opened_mono_ms));
    json_object_set_new(o, "interval_ms", json_integer(now - bus->prev_snap_ms));
    bus->prev_snap_ms = now;

    pthread_mutex_lock(&bus->state_mu);
    struct mb_state st = bus->state;
    uint64_t reconnects = bus->reconnects;
    pthread_mutex_unlock(&bus->state_mu);
    json_object_set_new(o, "state", json_string(msgbus_state_name(st.state)));
    json_object_set_new(o, "state_reason", json_string(st.reason));
    json_object_set_new(o, "reconnects", json_integer((json_int_t)reconnects));

    uint64_t confirmed = atomic_load(&bus->st.confirmed), failed = 0;
    json_t *by = json_object();
    for (int i = 0; i <= MSGBUS_ERR_INTERNAL; i++) {
        uint64_t n = atomic_load(&bus->st.failed_by[i]);
        if (n) {
            failed += n;
            json_object_set_new(by, msgbus_err_name((msgbus_err_t)i), json_integer((json_int_t)n));
        }
    }
    long outstanding = atomic_load(&bus->outstanding);
    if (outstanding < 0)
        outstanding = 0;
    json_object_set_new(o, "published",
                        json_integer((json_int_t)(confirmed + failed + (uint64_t)outstanding)));
    json_object_set_new(o, "confirmed", json_integer((json_int_t)confirmed));
    json_object_set_new(o, "failed", json_integer((json_int_t)failed));
    json_object_set_new(o, "failed_by_error", by);
    json_object_set_new(o, "outstanding", json_integer(outstanding));
    json_object_set_new(o, "queue_max", json_integer(bus->queue_max));
    json_object_set_new(o, "confirm_latency_us", mb_hist_json(&bus->st.confirm_lat, &bus->confirm_prev));

    /* The subscriptions: references taken under the list lock, figures
     * read without it (lag may ask the broker). */
    msgbus_sub_t **subs = NULL;
    size_t n = 0, cap = 0;
    pthread_mutex_lock(&bus->subs_mu);
    for (msgbus_sub_t *s = bus->subs; s; s = s->next) {
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 8;
            msgbus_sub_t **ns = realloc(subs, nc * sizeof *ns);
            if (!ns)
                break;
            subs = ns;
            cap = nc;
        }
        atomic_fetch_add(&s->refs, 1);
        subs[n++] = s;
    }
    pthread_mutex_unlock(&bus->subs_mu);
    json_t *arr = json_array();
    for (size_t i = n; i-- > 0;) { /* the list is newest first: oldest first here */
        json_array_append_new(arr, mb_sub_json(bus, subs[i]));
        mb_sub_unref(subs[i]);
    }
    free(subs);
    json_object_set_new(o, "subscriptions", arr);

    json_t *detail = json_object();
    if (bus->ops->version >= 2 && bus->ops->stats)
        bus->ops->stats(bus->be, detail);
    json_object_set_new(o, "detail", detail);
    pthread_mutex_unlock(&bus->snap_mu);
    return o;
}

static char *mb_stats_text(msgbus_t *bus)
{
    json_t *o = mb_stats_build(bus);
    char *text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

MSGBUS_API msgbus_err_t msgbus_stats_json(msgbus_t *bus, char **out)
{
    if (!bus || !out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_stats_json: %s is NULL", !bus ? "bus" : "out");
    char *text = mb_stats_text(bus);
    if (!text)
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_stats_json: out of memory");
    *out = text;
    return MSGBUS_OK;
}

MSGBUS_API void msgbus_stats_free(char *text)
{
    free(text); /* jansson's json_dumps allocates with malloc by default */
}

/* ---------------------------------------------------------------- serving */

bool mb_stats_pending_locked(msgbus_t *bus)
{
    return bus->ev_head != NULL || atomic_load(&bus->stats_due);
}

int mb_stats_serve(msgbus_t *bus)
{
    if (!atomic_load_explicit(&bus->ev_count, memory_order_relaxed) &&
        !atomic_load_explicit(&bus->stats_due, memory_order_relaxed))
        return 0; /* a peek: what it misses wakes the next poll */
    pthread_mutex_lock(&bus->mu);
    struct mb_state_ev *ev = bus->ev_head;
    bus->ev_head = bus->ev_tail = NULL;
    bus->ev_count = 0;
    msgbus_state_cb scb = bus->state_cb;
    void *sop = bus->state_opaque;
    msgbus_stats_cb tcb = bus->stats_cb;
    void *top = bus->stats_opaque;
    pthread_mutex_unlock(&bus->mu);
    int n = 0;
    long events = 0;
    while (ev) {
        struct mb_state_ev *next = ev->next;
        if (scb) {
            msgbus_state_event_t e = {.state = ev->state,
                                      .previous = ev->previous,
                                      .reason = ev->reason,
                                      .time_ms = ev->time_ms};
            if (ev->sub) {
                e.topic = ev->sub->topic;
                e.group = ev->sub->group;
                pthread_mutex_lock(&ev->sub->mu);
                e.sub = ev->sub->closed ? NULL : ev->sub; /* a closed handle is invalid */
                pthread_mutex_unlock(&ev->sub->mu);
            }
            scb(sop, &e);
            n++;
        }
        if (ev->sub)
            mb_sub_unref(ev->sub);
        free(ev);
        events++;
        ev = next;
    }
    if (events)
        mb_work_sub(bus, events);
    if (atomic_exchange(&bus->stats_due, false)) {
        mb_work_sub(bus, 1);
        if (tcb && !bus->be_closed) {
            char *text = mb_stats_text(bus);
            if (text) {
                tcb(top, text);
                free(text);
                n++;
            }
        }
    }
    return n;
}

static void *mb_ticker_main(void *arg)
{
    msgbus_t *bus = arg;
    mb_thread_name("msgbus-stats");
    pthread_mutex_lock(&bus->ticker_mu);
    while (!bus->ticker_stop) {
        struct timespec dl;
        mb_deadline(&dl, bus->stats_interval_ms);
        int rc = 0;
        while (!bus->ticker_stop && rc != ETIMEDOUT)
            rc = pthread_cond_timedwait(&bus->ticker_cond, &bus->ticker_mu, &dl);
        if (bus->ticker_stop)
            break;
        pthread_mutex_unlock(&bus->ticker_mu);
        pthread_mutex_lock(&bus->mu);
        bool want = bus->stats_cb != NULL;
        pthread_mutex_unlock(&bus->mu);
        if (want && !atomic_exchange(&bus->stats_due, true)) {
            pthread_mutex_lock(&bus->mu);
            pthread_cond_broadcast(&bus->cond);
            pthread_mutex_unlock(&bus->mu);
            mb_work_add(bus, 1);
        }
        pthread_mutex_lock(&bus->ticker_mu);
    }
    pthread_mutex_unlock(&bus->ticker_mu);
    return NULL;
}

void mb_stats_init(msgbus_t *bus)
{
    pthread_mutex_init(&bus->state_mu, NULL);
    pthread_mutex_init(&bus->snap_mu, NULL);
    pthread_mutex_init(&bus->ticker_mu, NULL);
    mb_cond_init(&bus->ticker_cond);
    bus->opened_mono_ms = bus->prev_snap_ms = mb_mono_ms();
    bus->state.state = MSGBUS_STATE_CONNECTING;
    snprintf(bus->state.reason, sizeof bus->state.reason, "opening");
}

void mb_stats_start(msgbus_t *bus)
{
    if (bus->stats_interval_ms <= 0)
        return;
    if (pthread_create(&bus->ticker, NULL, mb_ticker_main, bus) == 0)
        bus->ticker_on = true;
    else
        mb_log(MSGBUS_LOG_ERROR, "could not start the stats thread: no periodic stats for %s",
               bus->url->redacted);
}

void mb_stats_stop(msgbus_t *bus)
{
    if (bus->ticker_on) {
        pthread_mutex_lock(&bus->ticker_mu);
        bus->ticker_stop = true;
        pthread_cond_broadcast(&bus->ticker_cond);
        pthread_mutex_unlock(&bus->ticker_mu);
        pthread_join(bus->ticker, NULL);
        bus->ticker_on = false;
    }
    pthread_mutex_lock(&bus->mu);
    struct mb_state_ev *ev = bus->ev_head;
    bus->ev_head = bus->ev_tail = NULL;
    bus->ev_count = 0;
    pthread_mutex_unlock(&bus->mu);
    while (ev) {
        struct mb_state_ev *next = ev->next;
        if (ev->sub)
            mb_sub_unref(ev->sub);
        free(ev);
        ev = next;
    }
}

void mb_stats_destroy(msgbus_t *bus)
{
    pthread_mutex_destroy(&bus->state_mu);
    pthread_mutex_destroy(&bus->snap_mu);
    pthread_mutex_destroy(&bus->ticker_mu);
    pthread_cond_destroy(&bus->ticker_cond);
}

void mb_bus_confirm_latency(msgbus_t *bus, const struct mb_confirm *token, int64_t us)
{
    if (!token || !token->internal)
        mb_hist_add(&bus->st.confirm_lat, us);
}
