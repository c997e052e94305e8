/*
 * bus.c — the bus: opening a backend from a URL, publishing with confirm
 * accounting, delivery callbacks, flush, poll, the wake-up descriptor, and
 * the subscription queues the backends push into.
 *
 * Backends push; the core owns every queue the application reads
 * (see src/backends/backend.h). That is what lets receive, poll, the fd and
 * the callbacks be written once instead of once per broker.
 */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/bus.h"

/* Core options every URL may carry. */
static const char *const mb_core_options[] = {
    "queue_max",        "close_timeout_ms", "retry_max_attempts", "retry_initial_ms",
    "retry_multiplier", "retry_max_ms",     "retry_jitter",       "dlq",
    "dlq_group",        "stats_interval_ms", "start",            "require",
    "cloudevents",      "ce_source",        NULL};

/* Buses and subscriptions keep counters on cache lines of their own
 * (_Alignas(64) members), which malloc's 16-byte alignment would not give. */
static void *mb_calloc_aligned(size_t size)
{
    size_t rounded = (size + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (p)
        memset(p, 0, rounded);
    return p;
}

/* ---------------------------------------------------------------- work fd */

void mb_work_add(msgbus_t *bus, long n)
{
    if (atomic_fetch_add(&bus->work, n) != 0)
        return;
    pthread_mutex_lock(&bus->fd_mu);
    if (atomic_load(&bus->work) > 0) {
        uint64_t one = 1;
        ssize_t w = write(bus->efd, &one, sizeof one);
        (void)w; /* EAGAIN only when the counter is huge: still readable */
    }
    pthread_mutex_unlock(&bus->fd_mu);
}

void mb_work_sub(msgbus_t *bus, long n)
{
    if (n == 0 || atomic_fetch_sub(&bus->work, n) != n)
        return;
    /* Re-checked under fd_mu so a concurrent 0→1 signal is never eaten. */
    pthread_mutex_lock(&bus->fd_mu);
    if (atomic_load(&bus->work) == 0) {
        uint64_t v;
        ssize_t r = read(bus->efd, &v, sizeof v);
        (void)r;
    }
    pthread_mutex_unlock(&bus->fd_mu);
}

MSGBUS_API int msgbus_fd(msgbus_t *bus)
{
    if (!bus) {
        mb_error(MSGBUS_ERR_INVALID, "msgbus_fd: bus is NULL");
        return -1;
    }
    return bus->efd;
}

/* --------------------------------------------------------------- confirms */

/* Every publish with a callback needs a token until its report is served.
 * At a million publishes a second some 20-30 thousand are in flight, each
 * made on the publishing thread and freed, ~20 ms later, in a burst of a
 * thousand or more by msgbus_poll. Through malloc, each token cost an
 * arena lock and a free that glibc sorts through its unsorted bin and
 * consolidates; a per-thread cache of freed tokens (the previous way)
 * held only 1,024 of them and, made bigger, spread them over more memory
 * and measured slower still.
 *
 * So tokens are cut from slabs: each publishing thread carves its tokens,
 * one after the other, from a 16 KiB slab of its own, and a slab is freed
 * when its last token is. Tokens are then laid out in publish order, the
 * order reports come back in, so serving walks memory forwards; a slab
 * costs one malloc and one free per ~100 tokens; and serving takes one
 * atomic subtraction per slab it walks through, not per token.
 *
 * A slab's count `live` starts at MB_SLAB_BIAS; every freed token takes
 * one off. When its thread moves on to a new slab (or exits, or the last
 * bus closes) it "seals" the slab: takes off the bias less the tokens it
 * cut, so `live` becomes the number of its tokens still out, and whoever
 * brings it to zero frees it. An unserved token keeps its slab: at most
 * one slab per message in flight, in practice a few per thousand. */
#define MB_SLAB_BYTES 16384
#define MB_SLAB_BIAS (INT64_C(1) << 40)

struct mb_token_slab {
    _Atomic int64_t live;
    size_t used; /* bytes cut, owner thread only */
    int64_t cut; /* tokens cut, owner thread only */
    _Alignas(16) unsigned char data[];
};

struct mb_token_arena {
    struct mb_token_slab *cur;
    bool keyed;
};

static _Thread_local struct mb_token_arena mb_tokens;
static pthread_key_t mb_token_key;
static pthread_once_t mb_token_once = PTHREAD_ONCE_INIT;
static _Atomic long mb_open_buses;

static void mb_slab_release(struct mb_token_slab *s, int64_t n)
{
    if (atomic_fetch_sub_explicit(&s->live, n, memory_order_acq_rel) == n)
        free(s);
}

/* The thread stops cutting from its slab (see above). */
static void mb_token_arena_seal(void *arg)
{
    struct mb_token_arena *a = arg;
    struct mb_token_slab *s = a->cur;
    a->cur = NULL;
    if (s)
        mb_slab_release(s, MB_SLAB_BIAS - s->cut);
}

static _Atomic bool mb_token_key_made;

static void mb_token_key_init(void)
{
    atomic_store(&mb_token_key_made, pthread_key_create(&mb_token_key, mb_token_arena_seal) == 0);
}

/* A library unloaded with dlclose must not leave threads a destructor
 * that points into unmapped code: their slabs are then left behind. */
__attribute__((destructor)) static void mb_token_key_delete(void)
{
    if (atomic_load(&mb_token_key_made))
        pthread_key_delete(mb_token_key);
}

#define MB_SLAB_ROOM (MB_SLAB_BYTES - sizeof(struct mb_token_slab))
/* The largest token (longest topic and id) leaves room for dozens. */
_Static_assert(sizeof(struct mb_confirm) + MB_TOPIC_MAX + 1 + MSGBUS_MAX_ID + 1 + 15 <=
                   MB_SLAB_ROOM / 16,
               "a slab must hold many of the largest tokens");

/* A token with room for `strings` bytes (a topic and an id, each at most
 * its maximum) after it; NULL when out of memory. */
static struct mb_confirm *mb_token_new(size_t strings)
{
    size_t need = (sizeof(struct mb_confirm) + strings + 15) & ~(size_t)15;
    struct mb_token_arena *a = &mb_tokens;
    if (!a->keyed) { /* so the slab is sealed when this thread exits */
        pthread_once(&mb_token_once, mb_token_key_init);
        a->keyed = atomic_load(&mb_token_key_made) && pthread_setspecific(mb_token_key, a) == 0;
    }
    struct mb_token_slab *s = a->cur;
    if (a->keyed && (!s || s->used + need > MB_SLAB_ROOM)) {
        struct mb_token_slab *fresh = malloc(MB_SLAB_BYTES);
        if (fresh) {
            atomic_init(&fresh->live, MB_SLAB_BIAS);
            fresh->used = 0;
            fresh->cut = 0;
            mb_token_arena_seal(a);
            a->cur = s = fresh;
        }
    }
    if (a->keyed && s && s->used + need <= MB_SLAB_ROOM) {
        struct mb_confirm *t = (struct mb_confirm *)(s->data + s->used);
        s->used += need;
        s->cut++;
        t->slab = s;
        return t;
    }
    /* No thread key, or no memory for a slab: a block of its own. */
    struct mb_confirm *t = malloc(sizeof *t + strings);
    if (t)
        t->slab = NULL;
    return t;
}

/* Frees a token that has no run of tokens around it (see mb_serve_reports). */
static void mb_confirm_free(struct mb_confirm *c)
{
    free(c->error); /* topic and id live in the token's own block */
    if (c->slab)
        mb_slab_release(c->slab, 1);
    else
        free(c);
}

const char *mb_confirm_topic(const struct mb_confirm *token)
{
    return token ? token->topic : NULL;
}

void mb_confirm_hold(struct mb_confirm *token, msgbus_msg_t *held)
{
    token->held = held;
}

msgbus_msg_t *mb_confirm_unhold(struct mb_confirm *token)
{
    msgbus_msg_t *m = token ? token->held : NULL;
    if (m)
        token->held = NULL;
    return m;
}

const char *mb_bus_url(const msgbus_t *bus)
{
    return bus->url->redacted;
}

void mb_bus_confirm(msgbus_t *bus, struct mb_confirm *token, msgbus_err_t status, const char *error)
{
    if (token && token->internal) {
        token->status = status;
        if (status != MSGBUS_OK)
            token->error = mb_strdup(error && *error ? error : msgbus_strerror(status));
        mb_retry_confirmed(bus, token);
        return;
    }
    if (status != MSGBUS_OK) {
        atomic_fetch_add(&bus->failed, 1);
        atomic_fetch_add_explicit(&bus->st.failed_by[(unsigned)status <= MSGBUS_ERR_INTERNAL
                                                          ? status
                                                          : MSGBUS_ERR_INTERNAL],
                                  1, memory_order_relaxed);
        if (!token || !token->cb)
            mb_log(MSGBUS_LOG_ERROR, "message not delivered (%s): %s", msgbus_err_name(status),
                   error && *error ? error : msgbus_strerror(status));
    }
    else
        atomic_fetch_add_explicit(&bus->st.confirmed, 1, memory_order_relaxed);
    if (token) {
        token->status = status;
        if (status != MSGBUS_OK)
            token->error = mb_strdup(error && *error ? error : msgbus_strerror(status));
        pthread_mutex_lock(&bus->mu);
        if (bus->rq_tail)
            bus->rq_tail->next = token;
        else
            bus->rq_head = token;
        bus->rq_tail = token;
        atomic_fetch_sub(&bus->outstanding, 1);
        pthread_cond_broadcast(&bus->cond);
        pthread_mutex_unlock(&bus->mu);
        mb_work_add(bus, 1);
        return;
    }
    if (atomic_fetch_sub(&bus->outstanding, 1) == 1) {
        pthread_mutex_lock(&bus->mu);
        pthread_cond_broadcast(&bus->cond);
        pthread_mutex_unlock(&bus->mu);
    }
}

void mb_bus_confirm_batch(msgbus_t *bus, struct mb_confirm *const *tokens, size_t n)
{
    if (n == 0)
        return;
    /* Link the reports first so the lock covers one splice, not n. */
    struct mb_confirm *head = NULL, *tail = NULL;
    long reports = 0, internal = 0;
    for (size_t i = 0; i < n; i++) {
        struct mb_confirm *t = tokens[i];
        if (!t)
            continue;
        t->status = MSGBUS_OK;
        if (t->internal) {
            mb_retry_confirmed(bus, t);
            internal++;
            continue;
        }
        t->next = NULL;
        if (tail)
            tail->next = t;
        else
            head = t;
        tail = t;
        reports++;
    }
    pthread_mutex_lock(&bus->mu);
    if (head) {
        if (bus->rq_tail)
            bus->rq_tail->next = head;
        else
            bus->rq_head = head;
        bus->rq_tail = tail;
    }
    atomic_fetch_add_explicit(&bus->st.confirmed, n - (size_t)internal, memory_order_relaxed);
    atomic_fetch_sub(&bus->outstanding, (long)n - internal);
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
    if (reports)
        mb_work_add(bus, reports);
}

/* Runs queued delivery callbacks on the calling thread; returns how many. */
static int mb_serve_reports(msgbus_t *bus)
{
    pthread_mutex_lock(&bus->mu);
    struct mb_confirm *c = bus->rq_head;
    bus->rq_head = bus->rq_tail = NULL;
    pthread_mutex_unlock(&bus->mu);
    int n = 0;
    /* Consecutive tokens mostly share a slab: release them in runs. */
    struct mb_token_slab *run = NULL;
    int64_t in_run = 0;
    while (c) {
        struct mb_confirm *next = c->next;
        msgbus_report_t r = {.topic = c->topic,
                             .msg_id = c->id,
                             .status = c->status,
                             .error = c->error ? c->error : ""};
        if (bus->hooks.on && bus->hooks.h.on_confirm)
            bus->hooks.h.on_confirm(bus->hooks.h.opaque, &r, c->span);
        if (c->cb)
            c->cb(c->opaque, &r);
        free(c->error);
        if (!c->slab) {
            free(c);
        } else if (c->slab == run) {
            in_run++;
        } else {
            if (run)
                mb_slab_release(run, in_run);
            run = c->slab;
            in_run = 1;
        }
        n++;
        c = next;
    }
    if (run)
        mb_slab_release(run, in_run);
    if (n)
        mb_work_sub(bus, n);
    return n;
}

MSGBUS_API msgbus_err_t msgbus_poll(msgbus_t *bus, int timeout_ms, int *served)
{
    if (served)
        *served = 0;
    if (!bus)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_poll: bus is NULL");
    int n = mb_serve_reports(bus) + mb_stats_serve(bus);
    if (n == 0 && timeout_ms != 0) {
        struct timespec dl;
        mb_deadline(&dl, timeout_ms);
        pthread_mutex_lock(&bus->mu);
        while (!bus->rq_head && !mb_stats_pending_locked(bus)) {
            int rc = timeout_ms < 0 ? pthread_cond_wait(&bus->cond, &bus->mu)
                                    : pthread_cond_timedwait(&bus->cond, &bus->mu, &dl);
            if (rc == ETIMEDOUT)
                break;
        }
        pthread_mutex_unlock(&bus->mu);
        n = mb_serve_reports(bus) + mb_stats_serve(bus);
    }
    if (served)
        *served = n;
    return MSGBUS_OK;
}

MSGBUS_API size_t msgbus_outstanding(const msgbus_t *bus)
{
    return bus ? (size_t)atomic_load(&((msgbus_t *)bus)->outstanding) : 0;
}

static msgbus_err_t mb_flush(msgbus_t *bus, int timeout_ms, size_t *failed)
{
    int64_t start = mb_mono_ms();
    if (bus->ops->flush) {
        msgbus_err_t e = bus->ops->flush(bus->be, timeout_ms);
        if (e && e != MSGBUS_ERR_TIMEOUT)
            return e;
    }
    struct timespec dl;
    if (timeout_ms >= 0)
        mb_deadline(&dl, timeout_ms - (mb_mono_ms() - start));
    bool timed_out = false;
    for (;;) {
        mb_serve_reports(bus);
        mb_stats_serve(bus);
        pthread_mutex_lock(&bus->mu);
        while (atomic_load(&bus->outstanding) > 0 && !bus->rq_head && !timed_out) {
            int rc = timeout_ms < 0 ? pthread_cond_wait(&bus->cond, &bus->mu)
                                    : pthread_cond_timedwait(&bus->cond, &bus->mu, &dl);
            if (rc == ETIMEDOUT)
                timed_out = true;
        }
        bool more = bus->rq_head != NULL;
        long left = atomic_load(&bus->outstanding);
        pthread_mutex_unlock(&bus->mu);
        if (more)
            continue;
        if (left == 0)
            break;
        if (timed_out) {
            if (failed)
                *failed = (size_t)atomic_load(&bus->failed);
            return mb_error(MSGBUS_ERR_TIMEOUT,
                            "flush: %ld message(s) still unconfirmed after %d ms", left, timeout_ms);
        }
    }
    long f = atomic_exchange(&bus->failed, 0);
    if (failed)
        *failed = (size_t)f;
    if (f > 0)
        return mb_error(MSGBUS_ERR_DELIVERY, "flush: %ld message(s) were not delivered", f);
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_flush(msgbus_t *bus, int timeout_ms, size_t *failed)
{
    if (failed)
        *failed = 0;
    if (!bus)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_flush: bus is NULL");
    return mb_flush(bus, timeout_ms, failed);
}

/* ---------------------------------------------------------------- publish */

static msgbus_err_t mb_publish_token(msgbus_t *bus, const char *topic, size_t topic_len,
                                     const msgbus_msg_t *m, msgbus_delivery_cb cb, void *opaque,
                                     void *span);

/* The topic name this thread last published to, known to be valid:
 * publishers mostly repeat their topic, and comparing it with this copy
 * costs less than checking each character again. Whether a name is valid
 * depends on its characters only, so a copy per thread needs no lock and
 * outlives any bus. */
struct mb_valid_topic {
    size_t len; /* 0: none yet */
    char name[MB_TOPIC_MAX + 1];
};
static _Thread_local struct mb_valid_topic mb_valid_topic;

/* Checks `topic` like mb_valid_name(topic, MB_TOPIC_MAX); on success sets
 * *len to strlen(topic). */
static bool mb_check_topic(const char *topic, size_t *len)
{
    size_t n = strlen(topic);
    *len = n;
    if (n > MB_TOPIC_MAX)
        return false;
    struct mb_valid_topic *v = &mb_valid_topic;
    if (n != 0 && n == v->len && memcmp(v->name, topic, n) == 0)
        return true;
    if (!mb_valid_name(topic, MB_TOPIC_MAX))
        return false;
    memcpy(v->name, topic, n + 1);
    v->len = n;
    return true;
}

MSGBUS_API msgbus_err_t msgbus_publish(msgbus_t *bus, const char *topic, const msgbus_msg_t *m,
                                       msgbus_delivery_cb cb, void *opaque)
{
    if (!bus || !topic || !m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_publish: %s is NULL",
                        !bus ? "bus" : !topic ? "topic" : "message");
    size_t topic_len;
    if (!mb_check_topic(topic, &topic_len))
        return mb_check_name("topic", topic);
    if (atomic_load(&bus->closing))
        return mb_error(MSGBUS_ERR_CLOSED, "msgbus_publish: the bus is closing");

    /* A received message from a foreign producer may have no id: the copy
     * we publish gets one (the caller's message is not changed). */
    msgbus_msg_t with_id;
    char idbuf[37];
    if (!m->id) {
        with_id = *m;
        mb_uuid7(idbuf);
        with_id.id = idbuf;
        m = &with_id;
    }

    /* The tracer's hook sees (and may add headers to) msgbus's own copy. */
    msgbus_msg_t *hooked = NULL;
    void *span = NULL;
    if (bus->hooks.on && bus->hooks.h.on_publish) {
        if (!(hooked = mb_msg_clone(m)))
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
        span = bus->hooks.h.on_publish(bus->hooks.h.opaque, topic, hooked);
        m = hooked;
    }
    msgbus_err_t e = mb_publish_token(bus, topic, topic_len, m, cb, opaque, span);
    if (e != MSGBUS_OK && hooked && bus->hooks.h.on_confirm) {
        /* Refused at once: that is the message's outcome, and the tracer's
         * span must end with it. The detail is kept for the caller. */
        char detail[512];
        snprintf(detail, sizeof detail, "%s", msgbus_last_error());
        msgbus_report_t r = {.topic = topic, .msg_id = m->id, .status = e, .error = detail};
        bus->hooks.h.on_confirm(bus->hooks.h.opaque, &r, span);
        e = mb_error(e, "%s", detail);
    }
    msgbus_msg_free(hooked);
    return e;
}

/* msgbus_publish once the message is final. */
static msgbus_err_t mb_publish_token(msgbus_t *bus, const char *topic, size_t topic_len,
                                     const msgbus_msg_t *m, msgbus_delivery_cb cb, void *opaque,
                                     void *span)
{
    if (atomic_fetch_add(&bus->outstanding, 1) >= bus->queue_max) {
        atomic_fetch_sub(&bus->outstanding, 1);
        return mb_error(MSGBUS_ERR_QUEUE_FULL,
                        "%ld messages are awaiting confirms (queue_max=%ld): call msgbus_poll or "
                        "msgbus_flush, then retry",
                        bus->queue_max, bus->queue_max);
    }
    struct mb_confirm *token = NULL;
    if (cb || (bus->hooks.on && bus->hooks.h.on_confirm)) {
        /* One allocation for the token and its strings: this is per message. */
        size_t tl = topic_len + 1, il = strlen(m->id) + 1;
        token = mb_token_new(tl + il);
        if (!token) {
            atomic_fetch_sub(&bus->outstanding, 1);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
        }
        token->topic = (char *)(token + 1);
        token->id = token->topic + tl;
        memcpy(token->topic, topic, tl);
        memcpy(token->id, m->id, il);
        token->error = NULL;
        token->next = NULL;
        token->status = MSGBUS_OK;
        token->cb = cb;
        token->opaque = opaque;
        token->internal = false;
        token->span = span;
        token->held = NULL;
    }
    msgbus_err_t e = bus->ops->publish(bus->be, topic, m, token);
    if (e != MSGBUS_OK) {
        if (token)
            mb_confirm_free(token);
        if (atomic_fetch_sub(&bus->outstanding, 1) == 1) {
            pthread_mutex_lock(&bus->mu);
            pthread_cond_broadcast(&bus->cond);
            pthread_mutex_unlock(&bus->mu);
        }
    }
    return e;
}

MSGBUS_API msgbus_err_t msgbus_declare(msgbus_t *bus, const char *topic, const char *group)
{
    if (!bus || !topic)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_declare: %s is NULL", !bus ? "bus" : "topic");
    if (!mb_valid_name(topic, MB_TOPIC_MAX))
        return mb_check_name("topic", topic);
    if (group && !mb_valid_name(group, MB_TOPIC_MAX))
        return mb_check_name("group", group);
    return bus->ops->declare(bus->be, topic, group);
}

/* ----------------------------------------------------------- subscriptions */

const char *mb_sub_topic(const msgbus_sub_t *sub)
{
    return sub->topic;
}

const char *mb_sub_group(const msgbus_sub_t *sub)
{
    return sub->group;
}

void mb_sub_unref(msgbus_sub_t *sub)
{
    if (atomic_fetch_sub(&sub->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&sub->mu);
    pthread_cond_destroy(&sub->cond);
    pthread_rwlock_destroy(&sub->settle_lock);
    mb_retry_policy_free(&sub->policy);
    mb_stats_sub_free(sub);
    free(sub->topic);
    free(sub->group);
    free(sub);
}

void mb_sub_ref_batch(msgbus_sub_t *sub, long n)
{
    atomic_fetch_add(&sub->refs, n);
}

void mb_sub_unref_batch(msgbus_sub_t *sub, long n)
{
    if (n > 1)
        atomic_fetch_sub(&sub->refs, n - 1); /* the sub itself holds one more */
    if (n > 0)
        mb_sub_unref(sub);
}

msgbus_msg_t *mb_msg_new_received(msgbus_sub_t *sub)
{
    atomic_fetch_add(&sub->refs, 1);
    msgbus_msg_t *m = mb_msg_new_received_in(sub, NULL);
    if (!m)
        mb_sub_unref(sub);
    return m;
}

msgbus_msg_t *mb_msg_new_received_in(msgbus_sub_t *sub, msgbus_msg_t *storage)
{
    msgbus_msg_t *m = storage;
    if (m)
        mb_msg_init_embedded(m);
    else if (!(m = mb_msg_alloc()))
        return NULL;
    m->sub = sub;
    m->topic = sub->topic;
    m->group = sub->group;
    m->attempt = 1;
    atomic_store(&m->state, MB_MSG_RECEIVED);
    return m;
}

/* Called by msgbus_msg_free for a received message. */
void mb_sub_msg_released(msgbus_msg_t *m);
void mb_sub_msg_released(msgbus_msg_t *m)
{
    msgbus_sub_t *sub = m->sub;
    m->sub = NULL;
    /* m is not touched after the hook: an embedded message's block may go
     * with it. */
    if (sub->ops->release)
        sub->ops->release(m);
    mb_sub_unref(sub);
}

void mb_sub_push(msgbus_sub_t *sub, msgbus_msg_t *first, size_t count)
{
    if (!first || count == 0)
        return;
    msgbus_msg_t *last = first;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&sub->mu);
    if (sub->closed) {
        pthread_mutex_unlock(&sub->mu);
        while (first) { /* too late: release, the broker redelivers */
            msgbus_msg_t *n = first->next;
            msgbus_msg_free(first);
            first = n;
        }
        return;
    }
    if (sub->holds) {
        count = mb_hold_filter(sub, &first, &last);
        if (count == 0) {
            pthread_mutex_unlock(&sub->mu);
            return;
        }
    }
    if (sub->tail)
        sub->tail->next = first;
    else
        sub->head = first;
    sub->tail = last;
    sub->qlen += count;
    long work = mb_sub_work(sub, count);
    if (work)
        pthread_cond_broadcast(&sub->cond);
    pthread_mutex_unlock(&sub->mu);
    if (work)
        mb_work_add(sub->bus, work);
}

size_t mb_sub_drop(msgbus_sub_t *sub, bool (*pred)(const msgbus_msg_t *, void *), void *arg)
{
    msgbus_msg_t *dropped = NULL;
    size_t n = 0;
    pthread_mutex_lock(&sub->mu);
    msgbus_msg_t **pp = &sub->head, *prev = NULL;
    while (*pp) {
        msgbus_msg_t *m = *pp;
        if (pred(m, arg)) {
            *pp = m->next;
            m->next = dropped;
            dropped = m;
            n++;
        } else {
            prev = m;
            pp = &m->next;
        }
    }
    sub->tail = prev;
    sub->qlen -= n;
    long unwork = mb_sub_work(sub, n);
    /* Parked behind a retry (not counted as work): dropped too, else a
     * revoked partition's messages would wait there for the hold's end. */
    n += mb_holds_drop(sub, pred, arg, &dropped);
    pthread_mutex_unlock(&sub->mu);
    if (unwork)
        mb_work_sub(sub->bus, unwork);
    while (dropped) {
        msgbus_msg_t *next = dropped->next;
        msgbus_msg_free(dropped);
        dropped = next;
    }
    return n;
}

/* Subscribes with `pol`, which the subscription takes over (also on
 * failure: it is freed then). */
msgbus_err_t mb_subscribe_policy(msgbus_t *bus, const char *topic, const char *group,
                                 struct mb_retry_policy *pol, msgbus_sub_t **out)
{
    if (atomic_load(&bus->closing)) {
        mb_retry_policy_free(pol);
        return mb_error(MSGBUS_ERR_CLOSED, "msgbus_subscribe: the bus is closing");
    }
    msgbus_sub_t *sub = mb_calloc_aligned(sizeof *sub);
    if (!sub) {
        mb_retry_policy_free(pol);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory subscribing to '%s'", topic);
    }
    sub->bus = bus;
    sub->ops = bus->ops;
    sub->topic = mb_strdup(topic);
    sub->group = group ? mb_strdup(group) : NULL;
    sub->policy = *pol;
    atomic_init(&sub->refs, 1);
    pthread_mutex_init(&sub->mu, NULL);
    mb_cond_init(&sub->cond);
    pthread_rwlock_init(&sub->settle_lock, NULL);
    if (!sub->topic || (group && !sub->group)) {
        mb_sub_unref(sub);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory subscribing to '%s'", topic);
    }
    msgbus_err_t e = mb_sub_start_resolve(bus, sub->policy.start, &sub->start);
    if (e) {
        mb_sub_unref(sub);
        return e;
    }
    mb_stats_sub_open(sub);
    e = bus->ops->subscribe(bus->be, sub, &sub->bs);
    if (e) {
        mb_sub_unref(sub);
        return e;
    }
    pthread_mutex_lock(&sub->mu);
    bool still_connecting = sub->state.state == MSGBUS_STATE_CONNECTING;
    pthread_mutex_unlock(&sub->mu);
    if (still_connecting) /* the backend said nothing more: consuming */
        mb_sub_state(sub, MSGBUS_STATE_UP, "subscribed");
    pthread_mutex_lock(&bus->subs_mu);
    sub->next = bus->subs;
    bus->subs = sub;
    pthread_mutex_unlock(&bus->subs_mu);
    *out = sub;
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_subscribe(msgbus_t *bus, const char *topic, const char *group,
                                         msgbus_sub_t **out)
{
    return msgbus_subscribe_ex(bus, topic, group, NULL, out);
}

/* Waits up to timeout_ms for a message, then takes up to `max` under one
 * lock (a paused subscription hands out nothing). */
static msgbus_err_t mb_receive(msgbus_sub_t *sub, int timeout_ms, size_t max, msgbus_msg_t **out,
                               size_t *n)
{
    struct timespec dl;
    if (timeout_ms > 0)
        mb_deadline(&dl, timeout_ms);
    pthread_mutex_lock(&sub->mu);
    while ((!sub->head || sub->paused) && !sub->closed && timeout_ms != 0) {
        int rc = timeout_ms < 0 ? pthread_cond_wait(&sub->cond, &sub->mu)
                                : pthread_cond_timedwait(&sub->cond, &sub->mu, &dl);
        if (rc == ETIMEDOUT)
            break;
    }
    size_t got = 0;
    uint64_t first_seq = sub->received + 1;
    while (got < max && sub->head && !sub->paused) {
        msgbus_msg_t *m = sub->head;
        sub->head = m->next;
        m->next = NULL;
        out[got++] = m;
    }
    if (!sub->head)
        sub->tail = NULL;
    sub->qlen -= got;
    sub->received += got;
    bool closed = sub->closed;
    pthread_mutex_unlock(&sub->mu);
    *n = got;
    if (got) {
        mb_work_sub(sub->bus, (long)got);
        for (size_t i = 0; i < got; i++) {
            /* Every 8th message is timed from here to its settle
             * (docs/stats.md): percentiles need samples, not a clock
             * reading per message. */
            out[i]->recv_us = ((first_seq + i) & 7) == 1 ? mb_mono_us() : 0;
            if (sub->hooks.on)
                mb_stats_received(sub, out[i]);
        }
        return MSGBUS_OK;
    }
    if (closed)
        return mb_error(MSGBUS_ERR_CLOSED, "subscription to '%s' is closed", sub->topic);
    return mb_error(MSGBUS_ERR_TIMEOUT, "no message on '%s' within %d ms", sub->topic, timeout_ms);
}

MSGBUS_API msgbus_err_t msgbus_receive(msgbus_sub_t *sub, int timeout_ms, msgbus_msg_t **out)
{
    if (!sub || !out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_receive: %s is NULL", !sub ? "sub" : "out");
    size_t n;
    return mb_receive(sub, timeout_ms, 1, out, &n);
}

MSGBUS_API msgbus_err_t msgbus_receive_batch(msgbus_sub_t *sub, size_t max, int timeout_ms,
                                             msgbus_msg_t **out, size_t *n)
{
    if (n)
        *n = 0;
    if (!sub || !out || !n)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_receive_batch: %s is NULL",
                        !sub ? "sub" : !out ? "out" : "n");
    if (max == 0)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_receive_batch: max is 0");
    return mb_receive(sub, timeout_ms, max, out, n);
}

static msgbus_err_t mb_sub_set_paused(msgbus_sub_t *sub, bool paused)
{
    const char *what = paused ? "msgbus_sub_pause" : "msgbus_sub_resume";
    if (!sub)
        return mb_error(MSGBUS_ERR_INVALID, "%s: sub is NULL", what);
    /* The settle lock keeps the backend's subscription alive (close takes
     * it exclusively) and orders pause/resume calls of one sub. */
    pthread_rwlock_wrlock(&sub->settle_lock);
    pthread_mutex_lock(&sub->mu);
    bool closed = sub->closed, was = sub->paused;
    pthread_mutex_unlock(&sub->mu);
    if (closed) {
        pthread_rwlock_unlock(&sub->settle_lock);
        return mb_error(MSGBUS_ERR_CLOSED, "%s: subscription to '%s' is closed", what,
                        sub->topic);
    }
    if (was == paused) {
        pthread_rwlock_unlock(&sub->settle_lock);
        return MSGBUS_OK;
    }
    msgbus_err_t e = MSGBUS_OK;
    if (paused) {
        /* Hold the queue back first, then stop the backend: nothing it
         * still pushes is handed out. */
        pthread_mutex_lock(&sub->mu);
        long unwork = (long)sub->qlen;
        sub->paused = true;
        pthread_mutex_unlock(&sub->mu);
        mb_work_sub(sub->bus, unwork);
        if (sub->ops->version >= 3 && sub->ops->pause)
            e = sub->ops->pause(sub->bs, true);
    } else {
        if (sub->ops->version >= 3 && sub->ops->pause)
            e = sub->ops->pause(sub->bs, false);
    }
    if (e && paused) { /* the backend could not: undo */
        pthread_mutex_lock(&sub->mu);
        long work = (long)sub->qlen;
        sub->paused = false;
        pthread_mutex_unlock(&sub->mu);
        mb_work_add(sub->bus, work);
    } else if (!e && !paused) {
        pthread_mutex_lock(&sub->mu);
        long work = (long)sub->qlen;
        sub->paused = false;
        pthread_cond_broadcast(&sub->cond);
        pthread_mutex_unlock(&sub->mu);
        if (work)
            mb_work_add(sub->bus, work);
    }
    pthread_rwlock_unlock(&sub->settle_lock);
    if (!e)
        mb_log(MSGBUS_LOG_DEBUG, "subscription to '%s' %s", sub->topic,
               paused ? "paused" : "resumed");
    return e;
}

MSGBUS_API msgbus_err_t msgbus_sub_pause(msgbus_sub_t *sub)
{
    return mb_sub_set_paused(sub, true);
}

MSGBUS_API msgbus_err_t msgbus_sub_resume(msgbus_sub_t *sub)
{
    return mb_sub_set_paused(sub, false);
}

msgbus_err_t mb_sub_settle(msgbus_sub_t *sub, msgbus_msg_t *m, enum mb_settle how)
{
    pthread_rwlock_rdlock(&sub->settle_lock);
    msgbus_err_t e;
    if (sub->closed)
        e = mb_error(MSGBUS_ERR_CLOSED,
                     "msgbus_%s: the subscription to '%s' is closed; the broker delivers the "
                     "message again",
                     how == MB_SETTLE_ACK ? "ack" : "nack", sub->topic);
    else
        e = sub->ops->settle(sub->bs, m, how);
    pthread_rwlock_unlock(&sub->settle_lock);
    return e;
}

MSGBUS_API msgbus_err_t msgbus_ack(msgbus_msg_t *m)
{
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_ack: message is NULL");
    if (!m->sub)
        return mb_error(MSGBUS_ERR_STATE, "msgbus_ack: not a received message");
    int expect = MB_MSG_RECEIVED;
    if (!atomic_compare_exchange_strong(&m->state, &expect, MB_MSG_ACKED))
        return mb_error(MSGBUS_ERR_STATE, "msgbus_ack: message %s was already %s",
                        m->id ? m->id : "(no id)", expect == MB_MSG_ACKED ? "acked" : "nacked");
    msgbus_err_t e = mb_sub_settle(m->sub, m, MB_SETTLE_ACK);
    if (e)
        atomic_store(&m->state, MB_MSG_RECEIVED);
    else
        mb_stats_settled(m, MSGBUS_SETTLED_ACK);
    return e;
}

MSGBUS_API msgbus_err_t msgbus_nack(msgbus_msg_t *m)
{
    return msgbus_nack_reason(m, NULL);
}

MSGBUS_API void msgbus_sub_close(msgbus_sub_t *sub)
{
    if (!sub)
        return;
    msgbus_t *bus = sub->bus;
    /* Dead letters on their way are let finish (up to close_timeout_ms, or
     * what is left of msgbus_close's), so closing right after a dead letter
     * does not send it twice. */
    int64_t until = atomic_load(&bus->close_until);
    if (!until)
        until = mb_mono_ms() + bus->close_timeout_ms;
    while (atomic_load(&sub->dead_letters) > 0 && mb_mono_ms() < until)
        usleep(2000);
    pthread_mutex_lock(&bus->subs_mu);
    for (msgbus_sub_t **pp = &bus->subs; *pp; pp = &(*pp)->next) {
        if (*pp == sub) {
            *pp = sub->next;
            break;
        }
    }
    pthread_mutex_unlock(&bus->subs_mu);

    pthread_rwlock_wrlock(&sub->settle_lock);
    pthread_mutex_lock(&sub->mu);
    sub->closed = true;
    pthread_cond_broadcast(&sub->cond);
    pthread_mutex_unlock(&sub->mu);
    bus->ops->unsubscribe(sub->bs);
    sub->bs = NULL;
    pthread_rwlock_unlock(&sub->settle_lock);
    mb_holds_free(sub);

    /* Messages still queued were never received: release them (the backend
     * already gave them back to the broker). */
    pthread_mutex_lock(&sub->mu);
    msgbus_msg_t *m = sub->head;
    long unwork = mb_sub_work(sub, sub->qlen);
    sub->head = sub->tail = NULL;
    sub->qlen = 0;
    pthread_mutex_unlock(&sub->mu);
    mb_work_sub(bus, unwork);
    while (m) {
        msgbus_msg_t *next = m->next;
        msgbus_msg_free(m);
        m = next;
    }
    mb_sub_unref(sub);
}

/* ------------------------------------------------------------ open/close */

static bool mb_in_list(const char *key, const char *const *list)
{
    for (; list && *list; list++)
        if (strcmp(key, *list) == 0)
            return true;
    return false;
}

/* Unknown options fail before the backend touches the network. Backends
 * that pass options through to their client library check on their own. */
static msgbus_err_t mb_check_known(const struct mb_url *url, const struct mb_backend_ops *ops)
{
    if (ops->caps & MB_CAP_PASSTHROUGH_OPTIONS)
        return MSGBUS_OK;
    for (size_t i = 0; i < url->nopts; i++) {
        const char *key = url->opts[i].key;
        if (mb_in_list(key, mb_core_options) || mb_in_list(key, ops->options))
            continue;
        const char *const *lists[2] = {mb_core_options, ops->options};
        const char *best = mb_url_suggest(key, lists, 2);
        char where[200];
        if (url->opts[i].from_env)
            snprintf(where, sizeof where, "unknown %s option '%s' (from %s)", ops->scheme, key,
                     url->opts[i].env_name);
        else
            snprintf(where, sizeof where, "unknown option '%s' in URL '%s'", key, url->redacted);
        if (best)
            return mb_error(MSGBUS_ERR_CONFIG, "%s; did you mean '%s'?", where, best);
        return mb_error(MSGBUS_ERR_CONFIG, "%s", where);
    }
    return MSGBUS_OK;
}

static void mb_bus_free(msgbus_t *bus)
{
    mb_retry_release(bus);
    /* The stats thread stops before the locks it takes are destroyed
     * (mb_stats_stop takes bus->mu too). */
    mb_stats_stop(bus);
    if (bus->efd >= 0)
        close(bus->efd);
    pthread_mutex_destroy(&bus->mu);
    pthread_cond_destroy(&bus->cond);
    pthread_mutex_destroy(&bus->fd_mu);
    pthread_mutex_destroy(&bus->subs_mu);
    pthread_mutex_destroy(&bus->worker_mu);
    mb_stats_destroy(bus);
    mb_retry_policy_free(&bus->policy);
    free(bus->ce_source);
    mb_url_free(bus->url);
    free(bus);
}

MSGBUS_API msgbus_err_t msgbus_open(msgbus_t **out, const char *url_text, const void *reserved)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_open: out is NULL");
    if (reserved)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_open: the third argument must be NULL");
    if (!url_text) {
        url_text = getenv("MSGBUS_URL");
        if (!url_text || !*url_text)
            return mb_error(MSGBUS_ERR_CONFIG,
                            "MSGBUS_URL is not set and no URL was given: set it to kafka://host:9092, "
                            "amqp://user:pass@host/vhost or mem:// (available backends: %s)",
                            mb_backend_schemes());
    }
    struct mb_url *url;
    msgbus_err_t e = mb_url_parse(url_text, &url);
    if (e)
        return e;
    const struct mb_backend_ops *ops = mb_backend_find(url->scheme);
    if (!ops) {
        e = mb_error(MSGBUS_ERR_CONFIG, "unknown scheme '%s' in URL '%s': this build has %s",
                     url->scheme, url->redacted, mb_backend_schemes());
        mb_url_free(url);
        return e;
    }
    msgbus_t *bus = mb_calloc_aligned(sizeof *bus);
    if (!bus) {
        mb_url_free(url);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening a bus");
    }
    bus->ops = ops;
    bus->url = url;
    bus->efd = -1;
    pthread_mutex_init(&bus->mu, NULL);
    mb_cond_init(&bus->cond);
    pthread_mutex_init(&bus->fd_mu, NULL);
    pthread_mutex_init(&bus->subs_mu, NULL);
    pthread_mutex_init(&bus->worker_mu, NULL);
    mb_stats_init(bus);
    if (ops->env_prefix && (e = mb_url_add_env(url, ops->env_prefix, ops->env_separator, mb_core_options)))
        goto fail;
    if ((e = mb_url_opt_int(url, "queue_max", 100000, 1, 100000000, &bus->queue_max)) ||
        (e = mb_url_opt_int(url, "close_timeout_ms", 5000, 0, 3600000, &bus->close_timeout_ms)) ||
        (e = mb_url_opt_int(url, "stats_interval_ms", 0, 0, 86400000, &bus->stats_interval_ms)) ||
        (e = mb_retry_policy_from_url(url, &bus->policy)) ||
        (e = mb_ce_conf_read(bus, url)) ||
        (e = mb_check_known(url, ops)))
        goto fail;
    bus->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (bus->efd < 0) {
        e = mb_error(MSGBUS_ERR_INTERNAL, "eventfd: %s", strerror(errno));
        goto fail;
    }
    const char *require = mb_url_opt(url, "require");
    if ((e = ops->open(bus, url, &bus->be)))
        goto fail;
    /* Capabilities, and what the URL asks of them, before anything uses
     * the bus: a bus that cannot give what require= or start= asks is
     * never handed out. */
    mb_caps_load(bus);
    struct mb_start start;
    if ((require && (e = mb_caps_require(bus, require))) ||
        (e = mb_sub_start_resolve(bus, bus->policy.start, &start))) {
        ops->close(bus->be);
        bus->be = NULL;
        goto fail;
    }
    pthread_mutex_lock(&bus->state_mu);
    bool still_connecting = bus->state.state == MSGBUS_STATE_CONNECTING;
    pthread_mutex_unlock(&bus->state_mu);
    if (still_connecting) /* the backend said nothing more: connected */
        mb_bus_state(bus, MSGBUS_STATE_UP, "connected");
    mb_stats_start(bus);
    mb_log(MSGBUS_LOG_INFO, "opened %s bus on %s", ops->scheme, url->redacted);
    atomic_fetch_add(&mb_open_buses, 1);
    *out = bus;
    return MSGBUS_OK;
fail:
    mb_bus_free(bus);
    return e;
}

MSGBUS_API void msgbus_close(msgbus_t *bus)
{
    if (!bus)
        return;
    atomic_store(&bus->closing, true);
    int64_t until = mb_mono_ms() + bus->close_timeout_ms;
    atomic_store(&bus->close_until, until);
    for (;;) {
        pthread_mutex_lock(&bus->subs_mu);
        msgbus_sub_t *sub = bus->subs;
        pthread_mutex_unlock(&bus->subs_mu);
        if (!sub)
            break;
        msgbus_sub_close(sub);
    }
    size_t failed = 0;
    int64_t left_ms = until - mb_mono_ms();
    msgbus_err_t e = mb_flush(bus, left_ms > 0 ? (int)left_ms : 0, &failed);
    long left = atomic_load(&bus->outstanding);
    if (e == MSGBUS_ERR_TIMEOUT)
        mb_log(MSGBUS_LOG_ERROR,
               "closing %s with %ld message(s) unconfirmed after %ld ms: each gets its report "
               "now, MSGBUS_ERR_CLOSED unless the backend knows its outcome",
               bus->url->redacted, left, bus->close_timeout_ms);
    mb_retry_stop(bus);
    bus->ops->close(bus->be);
    bus->be_closed = true;
    mb_serve_reports(bus);
    mb_stats_serve(bus); /* the last state events; no snapshot now */
    left = atomic_load(&bus->outstanding);
    if (left != 0)
        mb_log(MSGBUS_LOG_ERROR, "backend %s left %ld message(s) without an outcome at close",
               bus->ops->scheme, left);
    mb_bus_free(bus);
    if (atomic_fetch_sub(&mb_open_buses, 1) == 1)
        mb_token_arena_seal(&mb_tokens);
}

int64_t mb_bus_close_deadline(const msgbus_t *bus, long timeout_ms)
{
    int64_t until = atomic_load(&((msgbus_t *)bus)->close_until);
    return until ? until : mb_mono_ms() + timeout_ms;
}

MSGBUS_API const char *msgbus_url(const msgbus_t *bus)
{
    return bus ? bus->url->redacted : NULL;
}

MSGBUS_API const char *msgbus_backend(const msgbus_t *bus)
{
    return bus ? bus->ops->scheme : NULL;
}
