/*
 * amqp.c — the AMQP 0-9-1 backend's ops table (amqp:// and amqps://), over
 * rabbitmq-c 0.11. These functions run on application threads: they check,
 * encode and queue work for the bus's I/O thread (amqp_io.c), which owns
 * the connection. Only open (first connect), declare, subscribe,
 * unsubscribe, group reset and inspect wait for the network; publish,
 * settle and pause never do.
 *
 * Topology (docs/amqp.md): topic → durable `topic` exchange named after it;
 * group → durable queue "<topic>.<group>" bound with "#"; broadcast →
 * exclusive auto-delete server-named queue. See docs/amqp.md.
 */
#include "backends/amqp.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static void mb_amqp_free(struct mb_backend *be)
{
    while (be->decls) {
        struct mb_amqp_decl *d = be->decls;
        be->decls = d->next;
        free(d->topic);
        free(d->group);
        free(d);
    }
    mb_amqp_ops_free(be->op_pool);
    mb_amqp_ops_free(be->op_spare);
    mb_amqp_conf_free(&be->conf);
    if (be->wake_fd >= 0)
        close(be->wake_fd);
    pthread_mutex_destroy(&be->lock);
    pthread_mutex_destroy(&be->io_lock);
    pthread_cond_destroy(&be->cond);
    free(be);
}

static msgbus_err_t mb_amqp_open(msgbus_t *bus, struct mb_url *url, struct mb_backend **out)
{
    struct mb_backend *be = calloc(1, sizeof *be);
    if (!be)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    be->bus = bus;
    be->wake_fd = -1;
    be->sockfd = -1;
    pthread_mutex_init(&be->lock, NULL);
    pthread_mutex_init(&be->io_lock, NULL);
    mb_cond_init(&be->cond);
    /* Every option is read (and a typo refused) before any network I/O. */
    msgbus_err_t e = mb_amqp_conf_parse(url, &be->conf);
    if (e) {
        mb_amqp_free(be);
        return e;
    }
    be->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (be->wake_fd < 0) {
        mb_amqp_free(be);
        return mb_error(MSGBUS_ERR_INTERNAL, "eventfd failed");
    }
    be->next_channel = MB_AMQP_FIRST_SUB_CHANNEL;
    /* The first connection is made here, on the caller's thread, so that a
     * wrong password or a dead host fails msgbus_open itself. */
    if ((e = mb_amqp_connect(be)) != MSGBUS_OK) {
        mb_amqp_free(be);
        return e;
    }
    mb_amqp_publish_stats(be); /* before the thread: it writes them from now on */
    const struct mb_url_host *h = &be->conf.hosts[be->host_index];
    mb_bus_state(bus, MSGBUS_STATE_UP, "connected to %s:%d", h->host, h->port);
    if (pthread_create(&be->thread, NULL, mb_amqp_io_main, be) != 0) {
        amqp_destroy_connection(be->conn);
        mb_amqp_free(be);
        return mb_error(MSGBUS_ERR_INTERNAL, "cannot start the AMQP I/O thread");
    }
    be->thread_started = true;
    *out = be;
    return MSGBUS_OK;
}

/* How long close and unsubscribe let the I/O thread finish on its own
 * before cutting its socket: a healthy connection answers within
 * milliseconds; one that does not within this is stalled, and waiting for
 * rabbitmq-c's own timeouts (rpc_timeout_ms, 30 s) would overrun
 * close_timeout_ms. */
#define MB_AMQP_CLOSE_GRACE_MS 200
#define MB_AMQP_UNSUB_GRACE_MS 500

/* Waits on be->cond (lock held) until *flag or `ms` pass; true if set. */
static bool mb_amqp_wait_flag(struct mb_backend *be, const bool *flag, long ms)
{
    struct timespec ts;
    mb_deadline(&ts, ms);
    while (!*flag)
        if (pthread_cond_timedwait(&be->cond, &be->lock, &ts) != 0)
            break;
    return *flag;
}

static void mb_amqp_close(struct mb_backend *be)
{
    pthread_mutex_lock(&be->lock);
    be->stopping = true;
    pthread_mutex_unlock(&be->lock);
    mb_amqp_wake(be);
    if (be->thread_started) {
        /* The core has already waited close_timeout_ms for confirms. The
         * I/O thread now reports what is unconfirmed as MSGBUS_ERR_CLOSED
         * and says goodbye to the broker; if it is stuck in a blocking
         * rabbitmq-c call on a stalled link, its socket is cut so the call
         * fails now instead of after rpc_timeout_ms. */
        pthread_mutex_lock(&be->lock);
        bool done = mb_amqp_wait_flag(be, &be->exited, MB_AMQP_CLOSE_GRACE_MS);
        pthread_mutex_unlock(&be->lock);
        if (!done)
            mb_amqp_kick(be, "closing: the broker does not answer");
        pthread_join(be->thread, NULL);
    }
    mb_amqp_free(be);
}

/* Hands `op` to the I/O thread. Control requests wait for its answer. */
static msgbus_err_t mb_amqp_submit(struct mb_backend *be, struct mb_amqp_op *op, bool wait)
{
    pthread_mutex_lock(&be->lock);
    if (be->stopping) {
        pthread_mutex_unlock(&be->lock);
        return mb_error(MSGBUS_ERR_CLOSED, "the bus is closing");
    }
    if (be->op_tail)
        be->op_tail->next = op;
    else
        be->op_head = op;
    be->op_tail = op;
    if (op->kind != MB_AMQP_OP_SETTLE)
        be->ctl_queued = true;
    bool wake = mb_amqp_need_wake(be);
    pthread_mutex_unlock(&be->lock);
    if (wake)
        mb_amqp_wake(be);
    if (!wait)
        return MSGBUS_OK;
    pthread_mutex_lock(&be->lock);
    if (op->kind == MB_AMQP_OP_UNSUBSCRIBE) {
        /* Closing a subscription must not wait for a stalled link: when
         * the I/O thread does not get to it soon, it is blocked in a broker
         * call, and cutting the socket frees it (the broker returns the
         * subscription's unacked messages with the connection). */
        long grace = be->conf.close_timeout_ms < MB_AMQP_UNSUB_GRACE_MS
                         ? be->conf.close_timeout_ms
                         : MB_AMQP_UNSUB_GRACE_MS;
        if (!mb_amqp_wait_flag(be, &op->done, grace < 100 ? 100 : grace)) {
            pthread_mutex_unlock(&be->lock);
            mb_amqp_kick(be, "closing a subscription: the broker does not answer");
            pthread_mutex_lock(&be->lock);
        }
    }
    while (!op->done)
        pthread_cond_wait(&be->cond, &be->lock);
    pthread_mutex_unlock(&be->lock);
    if (op->result)
        return mb_error(op->result, "%s", op->detail);
    return MSGBUS_OK;
}

static msgbus_err_t mb_amqp_publish(struct mb_backend *be, const char *topic,
                                    const msgbus_msg_t *m, struct mb_confirm *token)
{
    if (m->len > (size_t)be->conf.max_message_bytes)
        return mb_error(MSGBUS_ERR_TOO_LARGE,
                        "message of %zu bytes is larger than max_message_bytes=%ld (RabbitMQ's "
                        "max_message_size; default 128 MiB)",
                        m->len, be->conf.max_message_bytes);
    /* The message as a CloudEvent of the AMQP binding, in the bus's mode
     * (backend.h, "CloudEvents on the wire"). */
    struct mb_amqp_ce ce = {.mode = mb_bus_ce_mode(be->bus)};
    struct mb_ce_attrs attrs;
    char *json = NULL;
    msgbus_err_t e;
    if (ce.mode == MB_CE_BINARY) {
        mb_ce_attrs(be->bus, topic, m, &attrs);
        ce.attrs = &attrs;
    } else if (ce.mode == MB_CE_STRUCTURED) {
        if ((e = mb_ce_structured(be->bus, topic, m, &json, &ce.json_len)))
            return e;
        if (ce.json_len > (size_t)be->conf.max_message_bytes) {
            free(json);
            return mb_error(MSGBUS_ERR_TOO_LARGE,
                            "message of %zu bytes is %zu bytes as a structured CloudEvent, larger "
                            "than max_message_bytes=%ld",
                            m->len, ce.json_len, be->conf.max_message_bytes);
        }
        ce.json = json;
    }
    struct mb_amqp_out *o;
    e = mb_amqp_out_build(&o, topic, NULL, 0, m, 1, false, (size_t)be->conf.frame_max, &ce);
    free(json);
    if (e)
        return e;
    o->token = token;
    o->queued_us = mb_mono_us();
    o->queued_ms = o->queued_us / 1000;
    pthread_mutex_lock(&be->lock);
    if (be->stopping) {
        pthread_mutex_unlock(&be->lock);
        mb_amqp_out_free(o);
        return mb_error(MSGBUS_ERR_CLOSED, "the bus is closing");
    }
    if (!be->pub_head && mb_amqp_publish_now(be, o))
        return MSGBUS_OK;
    if (be->pub_tail)
        be->pub_tail->next = o;
    else
        be->pub_head = o;
    be->pub_tail = o;
    bool wake = mb_amqp_need_wake(be);
    pthread_mutex_unlock(&be->lock);
    if (wake)
        mb_amqp_wake(be);
    return MSGBUS_OK;
}

static struct mb_amqp_op *mb_amqp_op_new(enum mb_amqp_op_kind kind, struct mb_backend *be)
{
    struct mb_amqp_op *op = calloc(1, sizeof *op);
    if (op) {
        op->kind = kind;
        op->deadline_ms = mb_mono_ms() + be->conf.subscribe_timeout_ms;
    }
    return op;
}

static msgbus_err_t mb_amqp_declare(struct mb_backend *be, const char *topic, const char *group)
{
    char q[512];
    msgbus_err_t e;
    if (group && (e = mb_amqp_group_queue(topic, group, q, sizeof q)))
        return e;
    struct mb_amqp_op *op = mb_amqp_op_new(MB_AMQP_OP_DECLARE, be);
    if (!op)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    op->topic = (char *)topic;
    op->group = (char *)group;
    e = mb_amqp_submit(be, op, true);
    free(op);
    return e;
}

static void mb_amqp_sub_free(struct mb_backend_sub *bs)
{
    for (size_t i = 0; i < bs->nchildren; i++)
        mb_amqp_sub_free(bs->children[i]);
    free(bs->children);
    free(bs->tags);
    free(bs->topic);
    free(bs->group);
    free(bs);
}

/* A partitioned group's subscription: a parent with a child per partition
 * queue (amqp.h, struct mb_backend_sub). */
static msgbus_err_t mb_amqp_sub_children(struct mb_backend *be, struct mb_backend_sub *bs)
{
    size_t n = (size_t)be->conf.partitions;
    msgbus_err_t e;
    char q[256];
    if ((e = mb_amqp_part_name(bs->topic, bs->group, -1, q, sizeof q)) ||
        (e = mb_amqp_part_name(bs->topic, bs->group, (long)n - 1, q, sizeof q)))
        return e;
    snprintf(bs->queue, sizeof bs->queue, "%s.%s~0..%zu", bs->topic, bs->group, n - 1);
    bs->children = calloc(n, sizeof *bs->children);
    if (!bs->children)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        struct mb_backend_sub *c = calloc(1, sizeof *c);
        if (!c)
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        bs->children[i] = c;
        bs->nchildren = i + 1;
        if (!(c->topic = mb_strdup(bs->topic)) || !(c->group = mb_strdup(bs->group)))
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        c->be = be;
        c->sub = bs->sub;
        c->parent = bs;
        c->part = (uint16_t)i;
        mb_amqp_part_name(bs->topic, bs->group, (long)i, c->queue, sizeof c->queue);
    }
    return MSGBUS_OK;
}

static msgbus_err_t mb_amqp_subscribe(struct mb_backend *be, msgbus_sub_t *sub,
                                      struct mb_backend_sub **out)
{
    const char *topic = mb_sub_topic(sub), *group = mb_sub_group(sub);
    char q[512];
    msgbus_err_t e;
    if (group && (e = mb_amqp_group_queue(topic, group, q, sizeof q)))
        return e;
    struct mb_backend_sub *bs = calloc(1, sizeof *bs);
    struct mb_amqp_op *op = mb_amqp_op_new(MB_AMQP_OP_SUBSCRIBE, be);
    if (!bs || !op || !(bs->topic = mb_strdup(topic)) || (group && !(bs->group = mb_strdup(group)))) {
        free(op);
        if (bs)
            mb_amqp_sub_free(bs);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    }
    bs->be = be;
    bs->sub = sub;
    op->sub = bs;
    if (group && be->conf.partitions > 0 && (e = mb_amqp_sub_children(be, bs))) {
        free(op);
        mb_amqp_sub_free(bs);
        return e;
    }
    e = mb_amqp_submit(be, op, true);
    free(op);
    if (e) {
        mb_error_prefix(e, "subscribing to '%s'%s%s", topic, group ? " as group " : "",
                        group ? group : "");
        mb_amqp_sub_free(bs);
        return e;
    }
    *out = bs;
    return MSGBUS_OK;
}

static void mb_amqp_unsubscribe(struct mb_backend_sub *bs)
{
    struct mb_amqp_op op = {.kind = MB_AMQP_OP_UNSUBSCRIBE, .sub = bs};
    mb_amqp_submit(bs->be, &op, true);
    mb_amqp_sub_free(bs);
}

static msgbus_err_t mb_amqp_settle(struct mb_backend_sub *bs, msgbus_msg_t *m, enum mb_settle how)
{
    struct mb_backend *be = bs->be;
    pthread_mutex_lock(&be->lock);
    struct mb_amqp_op *op = be->op_pool;
    if (op) {
        be->op_pool = op->next;
        be->op_pool_n--;
    }
    pthread_mutex_unlock(&be->lock);
    if (op)
        memset(op, 0, sizeof *op);
    else if (!(op = calloc(1, sizeof *op)))
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    /* A partitioned group's message is settled on its partition's
     * channel (the child it came from). */
    if (bs->children) {
        if (m->partition < 0 || (size_t)m->partition >= bs->nchildren) {
            free(op);
            return mb_error(MSGBUS_ERR_INTERNAL, "amqp: message of no partition %d",
                            (int)m->partition);
        }
        bs = bs->children[m->partition];
    }
    op->kind = MB_AMQP_OP_SETTLE;
    op->sub = bs;
    op->tag = m->tag;
    op->epoch = (unsigned)m->offset;
    op->how = how;
    /* A classic queue keeps no delivery count: the I/O thread republishes
     * this copy with the attempt raised (see amqp_consume.c). */
    if (how == MB_SETTLE_NACK && !(bs->group && be->conf.quorum)) {
        op->copy = mb_msg_clone(m);
        if (!op->copy) {
            free(op);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        }
        op->copy->attempt = m->attempt;
    }
    msgbus_err_t e = mb_amqp_submit(be, op, false);
    if (e) {
        msgbus_msg_free(op->copy);
        free(op);
    }
    return e;
}

/* ---- observability (docs/amqp.md "Stats and state") ---------------------------- */

/* The connection's figures, as the I/O thread last published them: no
 * lock, no network. */
static void mb_amqp_stats(struct mb_backend *be, json_t *detail)
{
    const struct mb_amqp_stats *st = &be->st;
    bool connected = atomic_load_explicit(&st->connected, memory_order_relaxed);
    long hi = atomic_load_explicit(&st->host_index, memory_order_relaxed);
    if (hi < 0 || (size_t)hi >= be->conf.nhosts)
        hi = 0;
    char host[300];
    snprintf(host, sizeof host, "%s:%d", be->conf.hosts[hi].host, be->conf.hosts[hi].port);
    json_object_set_new(detail, "connected", json_boolean(connected));
    json_object_set_new(detail, "host", json_string(host));
    json_object_set_new(detail, "tls", json_boolean(be->conf.tls));
    json_object_set_new(detail, "channels_open",
                        json_integer(atomic_load_explicit(&st->channels, memory_order_relaxed)));
    json_t *w = json_object();
    json_object_set_new(w, "in_flight",
                        json_integer(atomic_load_explicit(&st->in_flight, memory_order_relaxed)));
    json_object_set_new(w, "limit", json_integer(be->conf.confirm_window));
    json_object_set_new(detail, "confirm_window", w);
    json_object_set_new(detail, "blocked",
                        json_boolean(atomic_load_explicit(&st->blocked, memory_order_relaxed)));
    json_object_set_new(detail, "heartbeat_s",
                        json_integer(atomic_load_explicit(&st->heartbeat_s, memory_order_relaxed)));
    json_object_set_new(detail, "frame_max",
                        json_integer(atomic_load_explicit(&st->frame_max, memory_order_relaxed)));
    json_object_set_new(detail, "prefetch", json_integer(be->conf.prefetch));
    json_object_set_new(detail, "connections_lost",
                        json_integer((json_int_t)atomic_load_explicit(&st->lost,
                                                                      memory_order_relaxed)));
    json_object_set_new(detail, "reconnect_attempts",
                        json_integer((json_int_t)atomic_load_explicit(&st->attempts,
                                                                      memory_order_relaxed)));
    int64_t down = atomic_load_explicit(&st->down_since_ms, memory_order_relaxed);
    json_object_set_new(detail, "disconnected_ms",
                        !connected && down ? json_integer(mb_mono_ms() - down) : json_null());
    json_object_set_new(detail, "frames_received",
                        json_integer((json_int_t)atomic_load_explicit(&st->frames_in,
                                                                      memory_order_relaxed)));
    json_object_set_new(detail, "messages_sent",
                        json_integer((json_int_t)atomic_load_explicit(&st->sent,
                                                                      memory_order_relaxed)));
    json_object_set_new(detail, "messages_sent_by_caller",
                        json_integer((json_int_t)atomic_load_explicit(&st->sent_by_caller,
                                                                      memory_order_relaxed)));
}

/* Lag: the subscription's queue's ready count, asked of the broker by the
 * I/O thread (rabbitmq-c is not thread-safe) with a passive queue.declare,
 * waited for at most timeout_ms. A request still unanswered then is left
 * to the I/O thread to free. */
static void mb_amqp_sub_stats(struct mb_backend_sub *bs, json_t *sub, int timeout_ms)
{
    struct mb_backend *be = bs->be;
    json_t *d = json_object();
    json_object_set_new(sub, "lag_detail", d);
    char q[512] = "";
    if (bs->children) /* partitioned: "t.g~0..<N-1>" */
        snprintf(q, sizeof q, "%s", bs->queue);
    else if (bs->group)
        mb_amqp_group_queue(bs->topic, bs->group, q, sizeof q);
    if (!atomic_load_explicit(&be->st.connected, memory_order_relaxed)) {
        /* No need to queue behind a reconnect attempt to learn that. */
        if (q[0])
            json_object_set_new(d, "queue", json_string(q));
        json_object_set_new(d, "error", json_string("not connected to the broker"));
        return;
    }
    struct mb_amqp_op *op = mb_amqp_op_new(MB_AMQP_OP_QUEUE_INFO, be);
    if (!op) {
        json_object_set_new(d, "error", json_string("out of memory"));
        return;
    }
    op->sub = bs;
    if (mb_amqp_submit(be, op, false) != MSGBUS_OK) {
        free(op);
        json_object_set_new(d, "error", json_string(msgbus_last_error()));
        return;
    }
    pthread_mutex_lock(&be->lock);
    bool done = mb_amqp_wait_flag(be, &op->done, timeout_ms < 1 ? 1 : timeout_ms);
    if (!done)
        op->abandoned = true;
    pthread_mutex_unlock(&be->lock);
    if (!done) {
        if (q[0])
            json_object_set_new(d, "queue", json_string(q));
        char why[128];
        snprintf(why, sizeof why, "no answer within %d ms", timeout_ms);
        json_object_set_new(d, "error", json_string(why));
        return;
    }
    json_object_set_new(d, "queue", json_string(op->queue[0] ? op->queue : q));
    if (op->result != MSGBUS_OK) {
        json_object_set_new(d, "error", json_string(op->detail));
    } else if (!op->found) {
        json_object_set_new(d, "error", json_string("queue not found (deleted)"));
    } else {
        json_object_set_new(sub, "lag", json_integer(op->ready));
        json_object_set_new(d, "ready", json_integer(op->ready));
        json_object_set_new(d, "unacked", json_integer((json_int_t)op->unacked));
        json_object_set_new(d, "consumers", json_integer(op->consumers));
    }
    free(op);
}

/* ---- positions, pause, inspection, capabilities (docs/amqp.md) -------------------- */

static void mb_amqp_capabilities(struct mb_backend *be, struct mb_caps *out)
{
    mb_amqp_caps(&be->conf, out);
}

/* Only asks the I/O thread: it cancels or restarts the consumer when it
 * next comes round (never waited for here). */
static msgbus_err_t mb_amqp_pause(struct mb_backend_sub *bs, bool paused)
{
    struct mb_amqp_op *op = calloc(1, sizeof *op);
    if (!op)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    op->kind = MB_AMQP_OP_PAUSE;
    op->sub = bs;
    op->paused = paused;
    msgbus_err_t e = mb_amqp_submit(bs->be, op, false);
    if (e)
        free(op);
    return e;
}

/* A request about `topic` (and `group`'s queue) for the I/O thread, which
 * must not depend on the caller's strings: the caller may stop waiting. */
static msgbus_err_t mb_amqp_topic_op(struct mb_backend *be, enum mb_amqp_op_kind kind,
                                     const char *topic, const char *group, int timeout_ms,
                                     struct mb_amqp_op **out)
{
    if (strlen(topic) > 255)
        return mb_error(MSGBUS_ERR_INVALID,
                        "topic '%.64s…' is longer than AMQP's limit of 255 bytes for an "
                        "exchange name", topic);
    char q[512] = "";
    msgbus_err_t e;
    if (group && (e = mb_amqp_group_queue(topic, group, q, sizeof q)))
        return e;
    struct mb_amqp_op *op = mb_amqp_op_new(kind, be);
    if (!op)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    snprintf(op->exchange, sizeof op->exchange, "%s", topic);
    snprintf(op->queue, sizeof op->queue, "%s", q);
    /* Without a connection it waits for one as long as the asker does. */
    op->deadline_ms = mb_mono_ms() + timeout_ms;
    *out = op;
    return MSGBUS_OK;
}

/* Runs `op` on the I/O thread and waits up to timeout_ms for the answer.
 * On MSGBUS_OK the caller reads and frees op; otherwise op is gone (freed
 * here, or left to the I/O thread when the wait ran out). */
static msgbus_err_t mb_amqp_ask(struct mb_backend *be, struct mb_amqp_op *op, int timeout_ms,
                                const char *what)
{
    msgbus_err_t e = mb_amqp_submit(be, op, false);
    if (e) {
        free(op);
        return e;
    }
    pthread_mutex_lock(&be->lock);
    /* A little longer than the op's own deadline, so that a missing
     * connection is reported as such rather than as a bare timeout. */
    bool done = mb_amqp_wait_flag(be, &op->done, (timeout_ms < 1 ? 1 : timeout_ms) + 100);
    if (!done)
        op->abandoned = true;
    pthread_mutex_unlock(&be->lock);
    if (!done)
        return mb_error(MSGBUS_ERR_TIMEOUT, "%s: no answer from the broker within %d ms", what,
                        timeout_ms);
    if (op->result) {
        e = mb_error(op->result, "%s: %s", what, op->detail);
        free(op);
        return e;
    }
    return MSGBUS_OK;
}

/* "latest" only (the core refuses the rest: no MSGBUS_CAP_REPLAY): purge
 * the group's queue once nobody consumes from it. */
static msgbus_err_t mb_amqp_group_reset(struct mb_backend *be, const char *topic,
                                        const char *group, const struct mb_start *to,
                                        int timeout_ms)
{
    if (to->kind != MB_START_LATEST)
        return mb_error(MSGBUS_ERR_UNSUPPORTED, "resetting group '%s' on '%s': %s", group, topic,
                        MB_AMQP_WHY_NO_REPLAY);
    struct mb_amqp_op *op = NULL;
    msgbus_err_t e = mb_amqp_topic_op(be, MB_AMQP_OP_GROUP_RESET, topic, group, timeout_ms, &op);
    if (e)
        return e;
    char what[600];
    snprintf(what, sizeof what, "resetting group '%s' on '%s'", group, topic);
    if ((e = mb_amqp_ask(be, op, timeout_ms, what)))
        return e;
    free(op);
    return MSGBUS_OK;
}

/* One topic, partitions 1 (an exchange is one stream), and the named
 * group's queue: members (its consumers, plus this bus's paused members),
 * ready = lag. Unacked counts are not visible over AMQP (only the
 * management plugin shows them): left out. */
static msgbus_err_t mb_amqp_inspect(struct mb_backend *be, const char *topic, const char *group,
                                    int timeout_ms, json_t *out)
{
    if (!topic)
        return mb_error(MSGBUS_ERR_UNSUPPORTED, "inspecting every topic: %s",
                        MB_AMQP_WHY_NO_LIST);
    struct mb_amqp_op *op = NULL;
    msgbus_err_t e = mb_amqp_topic_op(be, MB_AMQP_OP_INSPECT, topic, group, timeout_ms, &op);
    if (e)
        return e;
    char what[600];
    snprintf(what, sizeof what, "inspecting '%s'%s%s", topic, group ? " group " : "",
             group ? group : "");
    if ((e = mb_amqp_ask(be, op, timeout_ms, what)))
        return e;
    json_t *topics = json_object_get(out, "topics");
    if (!json_is_array(topics)) {
        topics = json_array();
        json_object_set_new(out, "topics", topics);
    }
    json_t *t = json_object(), *groups = json_array();
    json_object_set_new(t, "name", json_string(topic));
    json_object_set_new(t, "partitions", json_integer(1));
    if (group) {
        json_t *g = json_object();
        json_object_set_new(g, "name", json_string(group));
        json_object_set_new(g, "members",
                            json_integer((json_int_t)op->consumers + op->local_members));
        json_object_set_new(g, "ready", json_integer(op->ready));
        json_object_set_new(g, "lag", json_integer(op->ready));
        json_array_append_new(groups, g);
    }
    json_object_set_new(t, "groups", groups);
    json_array_append_new(topics, t);
    free(op);
    return MSGBUS_OK;
}

static const char *const mb_amqp_schemes[] = {"amqp", "amqps", NULL};

const struct mb_backend_ops mb_amqp_ops = {
    .version = MB_BACKEND_VERSION,
    .scheme = "amqp",
    .schemes = mb_amqp_schemes,
    .caps = MB_CAP_PASSTHROUGH_OPTIONS, /* x-… queue arguments: checked in amqp_conf.c */
    .options = mb_amqp_option_names,
    .env_prefix = "AMQP",
    .env_separator = '_',
    .open = mb_amqp_open,
    .close = mb_amqp_close,
    .publish = mb_amqp_publish,
    .flush = NULL,
    .declare = mb_amqp_declare,
    .subscribe = mb_amqp_subscribe,
    .unsubscribe = mb_amqp_unsubscribe,
    .settle = mb_amqp_settle,
    .release = NULL,
    .stats = mb_amqp_stats,
    .sub_stats = mb_amqp_sub_stats,
    .capabilities = mb_amqp_capabilities,
    .pause = mb_amqp_pause,
    .group_reset = mb_amqp_group_reset,
    .inspect = mb_amqp_inspect,
};
