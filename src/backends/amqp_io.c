/*
 * amqp_io.c — the AMQP backend's I/O thread: the only code that touches the
 * rabbitmq-c connection once the bus is open.
 *
 * One loop: take the application's work (one lock, once per wake-up),
 * connect or reconnect when needed, run control requests, send acks,
 * write publishes while fewer than `confirm_window` are unconfirmed, read
 * every frame that has arrived, hand received messages to the core in one
 * push per subscription, then sleep in poll() on the socket and the eventfd
 * (never longer than a third of the heartbeat, so heartbeats go out).
 *
 * Publisher confirms: messages on the wire sit in `infl` in sequence order;
 * basic.ack/nack (multiple or not) settle a prefix or one of them, and each
 * gets exactly one mb_bus_confirm. When the connection drops, everything
 * unconfirmed goes back to the front of the send list in its original order
 * and is sent again after the reconnect (at-least-once: the broker may
 * have had some of them). basic.return (mandatory: no queue was bound) comes
 * before the ack of the same message; it marks the oldest in-flight message
 * with that id, whose ack then reports "unroutable".
 */
#include "backends/amqp.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- waking ------------------------------------------------------------- */

bool mb_amqp_need_wake(struct mb_backend *be)
{
    if (be->wake_pending)
        return false;
    be->wake_pending = true;
    return true;
}

void mb_amqp_wake(struct mb_backend *be)
{
    uint64_t one = 1;
    while (write(be->wake_fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

void mb_amqp_set_sockfd(struct mb_backend *be, int fd)
{
    pthread_mutex_lock(&be->lock);
    be->sockfd = fd;
    if (fd >= 0 && (be->kick_pending || be->stopping))
        shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&be->lock);
}

void mb_amqp_publish_stats(struct mb_backend *be)
{
    struct mb_amqp_stats *st = &be->st;
    long channels = 0;
    if (be->conn) {
        channels = be->pub_channel_ok + be->ctl_channel_ok;
        for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next)
            channels += bs->channel != 0;
    }
    atomic_store_explicit(&st->connected, be->conn != NULL, memory_order_relaxed);
    atomic_store_explicit(&st->blocked, be->conn && be->blocked, memory_order_relaxed);
    atomic_store_explicit(&st->host_index, (long)be->host_index, memory_order_relaxed);
    atomic_store_explicit(&st->channels, channels, memory_order_relaxed);
    atomic_store_explicit(&st->in_flight, (long)be->ninflight, memory_order_relaxed);
    if (be->conn) {
        atomic_store_explicit(&st->heartbeat_s, amqp_get_heartbeat(be->conn),
                              memory_order_relaxed);
        atomic_store_explicit(&st->frame_max, amqp_get_frame_max(be->conn),
                              memory_order_relaxed);
    }
    atomic_store_explicit(&st->lost, be->reconnects, memory_order_relaxed);
    atomic_store_explicit(&st->down_since_ms, be->conn ? 0 : be->lost_ms, memory_order_relaxed);
    atomic_store_explicit(&st->frames_in, be->frames_in, memory_order_relaxed);
    atomic_store_explicit(&st->sent, be->sent, memory_order_relaxed);
}

void mb_amqp_kick(struct mb_backend *be, const char *why)
{
    pthread_mutex_lock(&be->lock);
    be->kick_pending = true;
    int fd = be->sockfd;
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&be->lock);
    if (fd >= 0)
        mb_log(MSGBUS_LOG_WARN, "amqp: %s; the connection is cut", why);
}

static void mb_amqp_op_finish(struct mb_backend *be, struct mb_amqp_op *op, msgbus_err_t e,
                              const char *detail)
{
    pthread_mutex_lock(&be->lock);
    if (op->abandoned) {
        /* Nobody waits any more (a stats snapshot past its timeout). */
        pthread_mutex_unlock(&be->lock);
        free(op);
        return;
    }
    op->result = e;
    snprintf(op->detail, sizeof op->detail, "%s", detail ? detail : "");
    op->done = true;
    pthread_cond_broadcast(&be->cond);
    pthread_mutex_unlock(&be->lock);
}

/* ---- publishing and confirms ------------------------------------------------------------ */

/* `now_us`: mb_mono_us() when the confirm arrived, for the latency. */
static void mb_amqp_complete(struct mb_backend *be, struct mb_amqp_out *o, bool acked,
                             int64_t now_us)
{
    if (o->internal) {
        mb_amqp_republish_done(be, o, acked);
        mb_amqp_out_free(o);
        return;
    }
    if (!acked) {
        mb_bus_confirm(be->bus, o->token, MSGBUS_ERR_BROKER,
                       "the broker refused the message (basic.nack): a quorum queue with no "
                       "leader for the moment (a cluster node just went down: publish it "
                       "again), a queue limit with x-overflow=reject-publish, or an internal "
                       "error");
    } else if (o->unroutable && !be->conf.unroutable_ok) {
        char d[MB_AMQP_DETAIL];
        snprintf(d, sizeof d, "unroutable: no queue bound to topic '%s' (%s); declare a group "
                              "before publishing, or use unroutable=ok",
                 o->topic, o->return_text ? o->return_text : "NO_ROUTE");
        mb_bus_confirm(be->bus, o->token, MSGBUS_ERR_BROKER, d);
    } else {
        if (o->unroutable)
            mb_log(MSGBUS_LOG_DEBUG, "amqp: message %s to topic '%s' reached no queue",
                   o->msg_id, o->topic);
        /* From msgbus_publish to the broker's confirm, the wait for a
         * reconnect included: what the application sees. */
        mb_bus_confirm_latency(be->bus, o->token, now_us - o->queued_us);
        mb_bus_confirm(be->bus, o->token, MSGBUS_OK, NULL);
    }
    mb_amqp_out_free(o);
}

static void mb_amqp_fail(struct mb_backend *be, struct mb_amqp_out *o, msgbus_err_t e,
                         const char *detail)
{
    if (!o->internal)
        mb_bus_confirm(be->bus, o->token, e, detail);
    else
        mb_amqp_republish_done(be, o, false);
    mb_amqp_out_free(o);
}

static void mb_amqp_on_confirm(struct mb_backend *be, uint64_t tag, bool multiple, bool acked)
{
    int64_t now_us = mb_mono_us(); /* one clock read for the whole (multiple) ack */
    if (multiple) {
        while (be->infl_head && be->infl_head->seq <= tag) {
            struct mb_amqp_out *o = be->infl_head;
            be->infl_head = o->next;
            be->ninflight--;
            mb_amqp_complete(be, o, acked, now_us);
        }
    } else {
        struct mb_amqp_out **pp = &be->infl_head, *prev = NULL;
        while (*pp && (*pp)->seq != tag) {
            prev = *pp;
            pp = &(*pp)->next;
        }
        if (*pp) {
            struct mb_amqp_out *o = *pp;
            *pp = o->next;
            if (be->infl_tail == o)
                be->infl_tail = prev;
            be->ninflight--;
            mb_amqp_complete(be, o, acked, now_us);
        }
    }
    if (!be->infl_head)
        be->infl_tail = NULL;
}

static void mb_amqp_on_return_header(struct mb_backend *be, const amqp_basic_properties_t *p)
{
    if (!(p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG))
        return;
    for (struct mb_amqp_out *o = be->infl_head; o; o = o->next) {
        if (o->unroutable || strlen(o->msg_id) != p->message_id.len ||
            memcmp(o->msg_id, p->message_id.bytes, p->message_id.len) != 0)
            continue;
        o->unroutable = true;
        o->return_text = be->ret_as.reply_text;
        be->ret_as.reply_text = NULL;
        return;
    }
}

static void mb_amqp_cork(struct mb_backend *be, bool on)
{
    if (be->corked == on)
        return;
    int fd = amqp_get_sockfd(be->conn), v = on;
    if (fd >= 0)
        setsockopt(fd, IPPROTO_TCP, TCP_CORK, &v, sizeof v);
    be->corked = on;
}

/* Writes what the wire buffer holds (plain TCP): one send for the batch.
 * false when the connection was lost (mb_amqp_conn_lost has run: what was
 * in flight goes back to the send list, in order). */
bool mb_amqp_wire_flush(struct mb_backend *be, const char *what)
{
    if (!be->conn || !be->wire.count)
        return be->conn != NULL;
    int e = mb_amqp_wire_write(&be->wire, amqp_get_sockfd(be->conn));
    if (e == 0)
        return true;
    char why[MB_AMQP_DETAIL];
    snprintf(why, sizeof why, "%s: %s", what, strerror(-e));
    mb_amqp_conn_lost(be, why);
    return false;
}

/* o, just encoded, takes the next sequence number and joins the in-flight
 * list (whose order is the broker's confirm order). */
static void mb_amqp_put_in_flight(struct mb_backend *be, struct mb_amqp_out *o)
{
    o->next = NULL;
    o->seq = ++be->next_seq;
    be->sent++;
    if (be->infl_tail)
        be->infl_tail->next = o;
    else
        be->infl_head = o;
    be->infl_tail = o;
    be->ninflight++;
}

/* A pass's publishes go out together once this much is encoded. */
#define MB_AMQP_WIRE_FLUSH_BYTES (256 * 1024)

/* Writes queued publishes while the window allows. Over plain TCP they are
 * encoded by msgbus (amqp_wire.c) and written with one send per pass —
 * rabbitmq-c writes three frames per message with separate send() calls.
 * Over TLS rabbitmq-c writes them, corked into full TCP segments. Either
 * way a message is in flight (sequence number given) once encoded: if the
 * write fails the connection is lost and every unconfirmed message goes
 * back to the send list in its order. */
static void mb_amqp_send_pending(struct mb_backend *be)
{
    char detail[MB_AMQP_DETAIL];
    bool direct = !be->conf.tls;
    while (be->conn && be->pub_channel_ok && be->send_head &&
           be->ninflight < (size_t)be->conf.confirm_window) {
        struct mb_amqp_out *o = be->send_head;
        if (o->topic[0] && !mb_amqp_topic_ready(be, o->topic, detail, sizeof detail)) {
            if (!be->conn)
                break; /* the connection went down: o stays queued */
            be->send_head = o->next;
            mb_amqp_fail(be, o, MSGBUS_ERR_BROKER, detail);
            continue;
        }
        /* The broker may have negotiated a smaller frame than frame_max:
         * such a message fails alone, before anything of it is written. */
        if (!mb_amqp_out_fits(o, (size_t)amqp_get_frame_max(be->conn))) {
            be->send_head = o->next;
            snprintf(detail, sizeof detail,
                     "the message's properties and headers do not fit in one AMQP frame of "
                     "%d bytes (the size the broker negotiated)",
                     amqp_get_frame_max(be->conn));
            mb_amqp_fail(be, o, MSGBUS_ERR_TOO_LARGE, detail);
            continue;
        }
        int st;
        if (direct) {
            st = mb_amqp_wire_publish(&be->wire, MB_AMQP_PUB_CHANNEL,
                                      amqp_cstring_bytes(o->topic), o->routing_key, !o->internal,
                                      0, &o->props, o->body,
                                      (size_t)amqp_get_frame_max(be->conn));
            if (st == AMQP_STATUS_NO_MEMORY && be->wire.count) {
                /* Send what is encoded; o waits for the next pass. */
                break;
            }
        } else {
            if (o->next)
                mb_amqp_cork(be, true);
            st = amqp_basic_publish(be->conn, MB_AMQP_PUB_CHANNEL, amqp_cstring_bytes(o->topic),
                                    o->routing_key, !o->internal, 0, &o->props, o->body);
        }
        if (st == AMQP_STATUS_TABLE_TOO_BIG || st == AMQP_STATUS_BAD_AMQP_DATA ||
            st == AMQP_STATUS_INVALID_PARAMETER) {
            /* The message cannot be encoded (mb_amqp_out_new should have
             * caught it): it fails alone, it is not a lost connection, and
             * it is not sent again. */
            be->send_head = o->next;
            snprintf(detail, sizeof detail, "%s cannot encode the message: %s",
                     direct ? "msgbus" : "rabbitmq-c", amqp_error_string2(st));
            mb_log(MSGBUS_LOG_ERROR, "amqp: message %s to '%s' failed: %s",
                   o->msg_id[0] ? o->msg_id : "(no id)", o->topic, detail);
            mb_amqp_fail(be, o, MSGBUS_ERR_INVALID, detail);
            continue;
        }
        if (st != AMQP_STATUS_OK) {
            snprintf(detail, sizeof detail, "publishing: %s", amqp_error_string2(st));
            mb_amqp_conn_lost(be, detail);
            break;
        }
        be->send_head = o->next;
        mb_amqp_put_in_flight(be, o);
        if (direct && be->wire.len >= MB_AMQP_WIRE_FLUSH_BYTES &&
            !mb_amqp_wire_flush(be, "publishing"))
            break;
    }
    if (!be->send_head)
        be->send_tail = NULL;
    if (direct)
        mb_amqp_wire_flush(be, "publishing");
    else if (be->conn)
        mb_amqp_cork(be, false);
}

/* A publish written on the caller's thread skips two wake-ups (the
 * eventfd and the I/O thread's turn), ~100 µs each on a busy machine. Only
 * while little is in flight: under load the I/O thread writes many
 * publishes with one send, which this would break up. */
#define MB_AMQP_NOW_INFLIGHT 16
#define MB_AMQP_NOW_BODY (64 * 1024)

bool mb_amqp_publish_now(struct mb_backend *be, struct mb_amqp_out *o)
{
    /* A control request queued before this publish (a pause: its
     * basic.cancel) goes to the socket first: the I/O thread's turn. */
    if (be->conf.tls || be->ctl_queued || o->body.len > MB_AMQP_NOW_BODY ||
        pthread_mutex_trylock(&be->io_lock) != 0)
        return false;
    /* The I/O thread is in poll() (or not yet in its loop): its fields are
     * ours until the unlock. */
    if (!be->conn || !be->pub_channel_ok || be->blocked || be->send_head || be->wire.count ||
        be->wire_err || be->ninflight >= MB_AMQP_NOW_INFLIGHT ||
        be->ninflight >= (size_t)be->conf.confirm_window ||
        !mb_amqp_topic_known(be, o->topic) ||
        !mb_amqp_out_fits(o, (size_t)amqp_get_frame_max(be->conn))) {
        pthread_mutex_unlock(&be->io_lock);
        return false;
    }
    pthread_mutex_unlock(&be->lock);
    bool wake = false;
    int st = mb_amqp_wire_publish(&be->wire, MB_AMQP_PUB_CHANNEL, amqp_cstring_bytes(o->topic),
                                  o->routing_key, true, 0, &o->props, o->body,
                                  (size_t)amqp_get_frame_max(be->conn));
    if (st != AMQP_STATUS_OK) {
        /* Not encoded (the wire is unchanged): the I/O thread's own pass
         * fails or retries it with the usual reasons. */
        be->send_head = be->send_tail = o;
        wake = true;
    } else {
        mb_amqp_put_in_flight(be, o);
        int e = mb_amqp_wire_write_now(&be->wire, amqp_get_sockfd(be->conn));
        if (e) {
            /* -EAGAIN: the rest goes out with the I/O thread's next write;
             * anything else: it loses the connection (and resends). */
            if (e != -EAGAIN)
                be->wire_err = -e;
            wake = true;
        }
        be->sent_by_caller++;
        atomic_store_explicit(&be->st.in_flight, (long)be->ninflight, memory_order_relaxed);
        atomic_store_explicit(&be->st.sent, be->sent, memory_order_relaxed);
        atomic_store_explicit(&be->st.sent_by_caller, be->sent_by_caller, memory_order_relaxed);
    }
    if (wake) {
        pthread_mutex_lock(&be->lock);
        wake = mb_amqp_need_wake(be);
        pthread_mutex_unlock(&be->lock);
    }
    pthread_mutex_unlock(&be->io_lock);
    if (wake)
        mb_amqp_wake(be);
    return true;
}

/* Everything unconfirmed goes back to the front of the send list, oldest
 * first. A message that lived through too many publish-channel failures is
 * failed with `why` instead of being retried forever. */
static void mb_amqp_requeue_inflight(struct mb_backend *be, bool channel_error, const char *why)
{
    struct mb_amqp_out *keep_head = NULL, *keep_tail = NULL;
    while (be->infl_head) {
        struct mb_amqp_out *o = be->infl_head;
        be->infl_head = o->next;
        o->next = NULL;
        if (o->internal) {
            /* A republish of a nacked message: its original was never acked,
             * so the broker delivers the original again — drop the copy. */
            mb_amqp_out_free(o);
            continue;
        }
        o->unroutable = false;
        free(o->return_text);
        o->return_text = NULL;
        if (channel_error && ++o->channel_errors >= 3) {
            char d[MB_AMQP_DETAIL];
            snprintf(d, sizeof d, "failed after 3 attempts: %s", why);
            mb_amqp_fail(be, o, MSGBUS_ERR_BROKER, d);
            continue;
        }
        if (keep_tail)
            keep_tail->next = o;
        else
            keep_head = o;
        keep_tail = o;
    }
    be->infl_tail = NULL;
    be->ninflight = 0;
    if (keep_head) {
        keep_tail->next = be->send_head;
        be->send_head = keep_head;
        if (!be->send_tail)
            be->send_tail = keep_tail;
    }
}

void mb_amqp_conn_lost(struct mb_backend *be, const char *why)
{
    if (!be->conn)
        return;
    const struct mb_url_host *h = &be->conf.hosts[be->host_index];
    size_t unconfirmed = 0, unsent = 0;
    for (struct mb_amqp_out *o = be->infl_head; o; o = o->next)
        unconfirmed += !o->internal;
    for (struct mb_amqp_out *o = be->send_head; o; o = o->next)
        unsent += !o->internal;
    mb_amqp_set_sockfd(be, -1);
    amqp_destroy_connection(be->conn);
    be->conn = NULL;
    be->reconnects++;
    snprintf(be->last_error, sizeof be->last_error, "%s", why);
    be->corked = false;
    mb_amqp_wire_reset(&be->wire); /* what it held is in flight: requeued below */
    be->pub_channel_ok = be->ctl_channel_ok = false;
    mb_amqp_asm_clear(&be->ret_as);
    mb_amqp_requeue_inflight(be, false, why);
    /* Unsent republished copies of nacked messages: their originals were
     * never acked, so the broker delivers those again. */
    struct mb_amqp_out **pp = &be->send_head, *last = NULL;
    while (*pp) {
        struct mb_amqp_out *o = *pp;
        if (o->internal) {
            *pp = o->next;
            mb_amqp_out_free(o);
        } else {
            last = o;
            pp = &o->next;
        }
    }
    be->send_tail = last;
    /* Counts of application messages only (copies of nacked messages are
     * dropped: their originals come back from the broker). */
    pthread_mutex_lock(&be->lock);
    bool stopping = be->stopping;
    pthread_mutex_unlock(&be->lock);
    if (stopping)
        mb_log(MSGBUS_LOG_INFO, "amqp: connection to %s:%d closed while closing the bus (%s)",
               h->host, h->port, why);
    else
        mb_log(MSGBUS_LOG_WARN,
               "amqp: connection to %s:%d lost (%s); after reconnecting msgbus sends again %zu "
               "unconfirmed and %zu not yet sent message(s)",
               h->host, h->port, why, unconfirmed, unsent);
    be->lost_ms = mb_mono_ms();
    be->outage_attempts = 0;
    be->said_down = false;
    be->blocked = false;
    if (!stopping)
        mb_bus_state(be->bus, MSGBUS_STATE_RECONNECTING, "connection to %s:%d lost: %s",
                     h->host, h->port, why);
    mb_amqp_topics_clear(be);
    for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next) {
        mb_amqp_sub_reset(be, bs);
        if (!stopping && !bs->removed)
            mb_sub_state(bs->sub, MSGBUS_STATE_RECONNECTING, "connection lost");
    }
    mb_amqp_publish_stats(be);
    be->backoff_ms = be->conf.reconnect_min_ms;
    be->next_connect_ms = mb_mono_ms() + be->backoff_ms / 2 +
                          (long)(mb_random64() % (uint64_t)(be->backoff_ms / 2 + 1));
}

/* ---- frames -------------------------------------------------------------------------- */

static void mb_amqp_pub_channel_closed(struct mb_backend *be, const amqp_channel_close_t *c)
{
    char why[MB_AMQP_DETAIL], detail[MB_AMQP_DETAIL];
    snprintf(why, sizeof why, "the broker closed the publish channel: %u %.*s", c->reply_code,
             (int)c->reply_text.len, (const char *)c->reply_text.bytes);
    mb_log(MSGBUS_LOG_ERROR, "amqp: %s", why);
    mb_amqp_send_close_ok(be, MB_AMQP_PUB_CHANNEL);
    be->pub_channel_ok = false;
    mb_amqp_asm_clear(&be->ret_as);
    mb_amqp_requeue_inflight(be, true, why);
    bool lost = false;
    if (mb_amqp_open_channel(be, MB_AMQP_PUB_CHANNEL, true, detail, sizeof detail, &lost)) {
        mb_amqp_conn_lost(be, lost ? detail : why);
        return;
    }
    be->pub_channel_ok = true;
    be->next_seq = 0;
}

static void mb_amqp_pub_frame(struct mb_backend *be, const amqp_frame_t *f)
{
    struct mb_amqp_asm *as = &be->ret_as;
    if (f->frame_type == AMQP_FRAME_METHOD) {
        switch (f->payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = f->payload.method.decoded;
            mb_amqp_on_confirm(be, a->delivery_tag, a->multiple, true);
            return;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = f->payload.method.decoded;
            mb_amqp_on_confirm(be, a->delivery_tag, a->multiple, false);
            return;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            const amqp_basic_return_t *r = f->payload.method.decoded;
            mb_amqp_asm_clear(as);
            as->kind = 2;
            as->reply_code = r->reply_code;
            as->reply_text = mb_strndup(r->reply_text.bytes, r->reply_text.len);
            return;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
            mb_amqp_pub_channel_closed(be, f->payload.method.decoded);
            return;
        default:
            return;
        }
    }
    if (as->kind != 2)
        return;
    if (f->frame_type == AMQP_FRAME_HEADER) {
        mb_amqp_on_return_header(be, f->payload.properties.decoded);
        as->body_size = f->payload.properties.body_size;
        as->got = 0;
    } else if (f->frame_type == AMQP_FRAME_BODY) {
        as->got += f->payload.body_fragment.len;
    }
    if (as->got >= as->body_size)
        mb_amqp_asm_clear(as);
}

static void mb_amqp_frame(struct mb_backend *be, const amqp_frame_t *f)
{
    if (f->channel == 0) {
        if (f->frame_type != AMQP_FRAME_METHOD)
            return;
        if (f->payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *c = f->payload.method.decoded;
            char why[MB_AMQP_DETAIL];
            snprintf(why, sizeof why, "the broker closed the connection: %u %.*s",
                     c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
            mb_amqp_send_close_ok(be, 0);
            mb_amqp_conn_lost(be, why);
        } else if (f->payload.method.id == AMQP_CONNECTION_BLOCKED_METHOD) {
            const amqp_connection_blocked_t *b = f->payload.method.decoded;
            mb_log(MSGBUS_LOG_WARN, "amqp: the broker blocks publishing (resource alarm)");
            /* Still connected (UP), but an operator must see why nothing
             * is confirmed: the reason says it. */
            be->blocked = true;
            mb_bus_state(be->bus, MSGBUS_STATE_UP,
                         "publishing blocked by the broker (resource alarm: %.*s)",
                         (int)b->reason.len, (const char *)b->reason.bytes);
        } else if (f->payload.method.id == AMQP_CONNECTION_UNBLOCKED_METHOD) {
            mb_log(MSGBUS_LOG_INFO, "amqp: the broker accepts publishing again");
            be->blocked = false;
            mb_bus_state(be->bus, MSGBUS_STATE_UP, "publishing unblocked");
        }
        return;
    }
    if (f->channel == MB_AMQP_PUB_CHANNEL) {
        mb_amqp_pub_frame(be, f);
        return;
    }
    if (f->channel == MB_AMQP_CTL_CHANNEL) {
        if (f->frame_type == AMQP_FRAME_METHOD &&
            f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
            mb_amqp_send_close_ok(be, MB_AMQP_CTL_CHANNEL);
            be->ctl_channel_ok = false;
        }
        return;
    }
    struct mb_backend_sub *bs = mb_amqp_sub_by_channel(be, f->channel);
    if (bs) {
        mb_amqp_sub_frame(be, bs, f);
    } else if (f->frame_type == AMQP_FRAME_METHOD &&
               f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
        mb_amqp_send_close_ok(be, f->channel);
    }
}

/* Reads every frame already here, without waiting. The tiny (1 µs) timeout
 * rather than zero makes rabbitmq-c compare against its heartbeat deadlines,
 * so a silent broker is noticed and our own heartbeats go out. */
static void mb_amqp_read_frames(struct mb_backend *be)
{
    for (int i = 0; i < 4096 && be->conn; i++) {
        struct timeval tiny = {0, 1};
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(be->conn, &f, &tiny);
        if (st == AMQP_STATUS_TIMEOUT)
            break;
        if (st != AMQP_STATUS_OK) {
            char why[MB_AMQP_DETAIL];
            snprintf(why, sizeof why, "reading: %s", amqp_error_string2(st));
            mb_amqp_conn_lost(be, why);
            return;
        }
        be->frames_in++;
        mb_amqp_frame(be, &f);
    }
    if (be->conn)
        amqp_maybe_release_buffers(be->conn);
}

/* ---- control requests ---------------------------------------------------------------------- */

static struct mb_amqp_decl *mb_amqp_decl_find(struct mb_backend *be, const char *topic,
                                              const char *group)
{
    for (struct mb_amqp_decl *d = be->decls; d; d = d->next)
        if (strcmp(d->topic, topic) == 0 &&
            ((!d->group && !group) || (d->group && group && strcmp(d->group, group) == 0)))
            return d;
    return NULL;
}

static msgbus_err_t mb_amqp_do_declare(struct mb_backend *be, const char *topic,
                                       const char *group, char *detail, size_t n, bool *lost)
{
    msgbus_err_t e = MSGBUS_ERR_CONNECT;
    if (!mb_amqp_ensure_ctl(be, detail, n, lost))
        return e;
    if (group) {
        char q[256];
        return mb_amqp_declare_group(be, MB_AMQP_CTL_CHANNEL, topic, group, q, sizeof q, detail,
                                     n, lost);
    }
    return mb_amqp_declare_exchange(be, MB_AMQP_CTL_CHANNEL, topic, detail, n, lost);
}

/* Runs one control request on a live connection. */
static void mb_amqp_control(struct mb_backend *be, struct mb_amqp_op *op)
{
    char detail[MB_AMQP_DETAIL] = "";
    bool lost = false;
    msgbus_err_t e = MSGBUS_OK;
    switch (op->kind) {
    case MB_AMQP_OP_DECLARE:
        e = mb_amqp_do_declare(be, op->topic, op->group, detail, sizeof detail, &lost);
        if (e == MSGBUS_OK && !mb_amqp_decl_find(be, op->topic, op->group)) {
            struct mb_amqp_decl *d = calloc(1, sizeof *d);
            if (d && (d->topic = mb_strdup(op->topic)) &&
                (!op->group || (d->group = mb_strdup(op->group)))) {
                d->next = be->decls;
                be->decls = d;
            } else if (d) {
                free(d->topic);
                free(d);
            }
        }
        break;
    case MB_AMQP_OP_SUBSCRIBE:
        if (op->sub->children) {
            /* Partitioned: the children join be->subs, the parent never. */
            e = mb_amqp_parent_establish(be, op->sub, detail, sizeof detail, &lost);
            break;
        }
        e = mb_amqp_sub_establish(be, op->sub, detail, sizeof detail, &lost);
        if (e == MSGBUS_OK) {
            op->sub->next = be->subs;
            be->subs = op->sub;
        }
        break;
    case MB_AMQP_OP_GROUP_RESET:
        e = mb_amqp_group_reset_run(be, op, detail, sizeof detail, &lost);
        break;
    case MB_AMQP_OP_INSPECT:
        e = mb_amqp_inspect_run(be, op, detail, sizeof detail, &lost);
        break;
    case MB_AMQP_OP_QUEUE_INFO:
        e = mb_amqp_queue_info(be, op, detail, sizeof detail, &lost);
        if (lost) {
            mb_amqp_conn_lost(be, detail);
            mb_amqp_op_finish(be, op, e, detail);
            return;
        }
        break;
    default:
        break;
    }
    if (lost) {
        /* The request is retried once the connection is back. */
        mb_amqp_conn_lost(be, detail);
        op->next = be->waiting;
        be->waiting = op;
        return;
    }
    mb_amqp_op_finish(be, op, e, detail);
}

static void mb_amqp_unsubscribe_now(struct mb_backend *be, struct mb_amqp_op *op)
{
    mb_amqp_sub_remove(be, op->sub);
    mb_amqp_op_finish(be, op, MSGBUS_OK, NULL);
}

static void mb_amqp_run_ops(struct mb_backend *be, struct mb_amqp_op *ops)
{
    while (ops) {
        struct mb_amqp_op *op = ops;
        ops = op->next;
        op->next = NULL;
        switch (op->kind) {
        case MB_AMQP_OP_SETTLE:
            mb_amqp_settle_apply(be, op);
            break;
        case MB_AMQP_OP_UNSUBSCRIBE:
            mb_amqp_flush_acks(be);
            mb_amqp_unsubscribe_now(be, op);
            break;
        case MB_AMQP_OP_PAUSE:
            /* Never parked: without a connection it only records the
             * state, which the next establishment honours. */
            mb_amqp_pause_apply(be, op);
            break;
        case MB_AMQP_OP_QUEUE_INFO:
            /* Never parked for a reconnect: the asker waits a bounded time
             * and the request must not outlive its subscription. */
            if (be->conn) {
                mb_amqp_flush_acks(be);
                mb_amqp_control(be, op);
            } else {
                char d[MB_AMQP_DETAIL];
                snprintf(d, sizeof d, "not connected to the broker");
                mb_amqp_op_finish(be, op, MSGBUS_ERR_CONNECT, d);
            }
            break;
        default:
            if (be->conn) {
                mb_amqp_flush_acks(be);
                mb_amqp_control(be, op);
            } else {
                op->next = be->waiting;
                be->waiting = op;
            }
        }
    }
}

/* After a (re)connect: topology first, then subscriptions, then the
 * publishes wait in the send list and go out in the main loop. */
static void mb_amqp_after_connect(struct mb_backend *be)
{
    char detail[MB_AMQP_DETAIL];
    bool lost = false;
    for (struct mb_amqp_decl *d = be->decls; d && be->conn; d = d->next) {
        if (mb_amqp_do_declare(be, d->topic, d->group, detail, sizeof detail, &lost) != MSGBUS_OK) {
            if (lost) {
                mb_amqp_conn_lost(be, detail);
                return;
            }
            mb_log(MSGBUS_LOG_ERROR, "amqp: re-declaring after reconnect: %s", detail);
        }
    }
    for (struct mb_backend_sub *bs = be->subs; bs && be->conn; bs = bs->next)
        if (!mb_amqp_resubscribe(be, bs))
            return;
}

static void mb_amqp_try_connect(struct mb_backend *be)
{
    int64_t now = mb_mono_ms();
    if (now < be->next_connect_ms)
        return;
    be->outage_attempts++;
    atomic_fetch_add_explicit(&be->st.attempts, 1, memory_order_relaxed); /* I/O thread only */
    if (mb_amqp_connect(be) != MSGBUS_OK) {
        snprintf(be->last_error, sizeof be->last_error, "%s", msgbus_last_error());
        if (!be->said_down) {
            /* Said once per outage: the count and the time are those at
             * the first failure; the stats detail keeps counting. */
            be->said_down = true;
            const char *url = mb_bus_url(be->bus), *why = be->last_error;
            size_t ul = strlen(url);
            if (strncmp(why, url, ul) == 0 && strncmp(why + ul, ": ", 2) == 0)
                why += ul + 2; /* the URL is the bus's own: not repeated */
            mb_bus_state(be->bus, MSGBUS_STATE_DOWN,
                         "broker unreachable: %lu reconnect attempt(s) failed in %.1f s since "
                         "the connection was lost: %s",
                         be->outage_attempts, (double)(mb_mono_ms() - be->lost_ms) / 1000.0,
                         why);
        }
        long b = be->backoff_ms ? be->backoff_ms * 2 : be->conf.reconnect_min_ms;
        if (b > be->conf.reconnect_max_ms)
            b = be->conf.reconnect_max_ms;
        be->backoff_ms = b;
        /* Full jitter on the upper half: clients restarted together do not
         * reconnect in lockstep. */
        be->next_connect_ms =
            mb_mono_ms() + b / 2 + (long)(mb_random64() % (uint64_t)(b / 2 + 1));
        mb_log(MSGBUS_LOG_WARN, "amqp: reconnect failed (%s); next attempt in %ld ms",
               msgbus_last_error(), (long)(be->next_connect_ms - mb_mono_ms()));
        return;
    }
    const struct mb_url_host *h = &be->conf.hosts[be->host_index];
    mb_log(MSGBUS_LOG_WARN, "amqp: reconnected to %s:%d (after %lu connection loss(es) since "
                            "open); sending what waited",
           h->host, h->port, be->reconnects);
    be->backoff_ms = 0;
    /* The stats say "connected" before anyone hears UP (a snapshot taken on
     * the UP event saw the outage's disconnected_ms still running). */
    mb_amqp_publish_stats(be);
    mb_bus_state(be->bus, MSGBUS_STATE_UP, "reconnected to %s:%d after %.1f s (%lu attempt(s))",
                 h->host, h->port, (double)(mb_mono_ms() - be->lost_ms) / 1000.0,
                 be->outage_attempts);
    mb_amqp_after_connect(be);
}

/* " (last error: …)" when a connection failed before, "" otherwise: the
 * thread-local last error is not about the connection (and often empty). */
static void mb_amqp_last_error(const struct mb_backend *be, char *out, size_t n)
{
    if (be->last_error[0])
        snprintf(out, n, " (last error: %s)", be->last_error);
    else if (n)
        out[0] = '\0';
}

static void mb_amqp_expire(struct mb_backend *be)
{
    int64_t now = mb_mono_ms();
    /* Control requests waiting for a connection. */
    for (struct mb_amqp_op **pp = &be->waiting; *pp;) {
        struct mb_amqp_op *op = *pp;
        if (be->conn || now < op->deadline_ms) {
            pp = &op->next;
            continue;
        }
        *pp = op->next;
        char d[MB_AMQP_DETAIL], last[MB_AMQP_DETAIL + 16] = "";
        mb_amqp_last_error(be, last, sizeof last);
        if (op->kind == MB_AMQP_OP_GROUP_RESET || op->kind == MB_AMQP_OP_INSPECT)
            snprintf(d, sizeof d, "%s: no connection to the broker within the timeout%s",
                     mb_bus_url(be->bus), last);
        else
            snprintf(d, sizeof d,
                     "%s: no connection to the broker within subscribe_timeout_ms=%ld%s",
                     mb_bus_url(be->bus), be->conf.subscribe_timeout_ms, last);
        mb_amqp_op_finish(be, op, MSGBUS_ERR_CONNECT, d);
    }
    /* Messages that could not even be sent within message_timeout_ms. */
    if (be->conf.message_timeout_ms > 0 && !be->conn) {
        while (be->send_head && now - be->send_head->queued_ms >= be->conf.message_timeout_ms) {
            struct mb_amqp_out *o = be->send_head;
            be->send_head = o->next;
            char d[MB_AMQP_DETAIL], last[MB_AMQP_DETAIL + 16] = "";
            mb_amqp_last_error(be, last, sizeof last);
            snprintf(d, sizeof d, "failed after retries: no connection to the broker for "
                                  "message_timeout_ms=%ld%s",
                     be->conf.message_timeout_ms, last);
            mb_amqp_fail(be, o, MSGBUS_ERR_TIMEOUT, d);
        }
        if (!be->send_head)
            be->send_tail = NULL;
    }
}

/* ---- the loop ---------------------------------------------------------------------------- */

static void mb_amqp_shutdown(struct mb_backend *be)
{
    pthread_mutex_lock(&be->lock);
    struct mb_amqp_out *pubs = be->pub_head;
    struct mb_amqp_op *ops = be->op_head;
    be->pub_head = be->pub_tail = NULL;
    be->op_head = be->op_tail = NULL;
    pthread_mutex_unlock(&be->lock);
    if (pubs) {
        if (be->send_tail)
            be->send_tail->next = pubs;
        else
            be->send_head = pubs;
    }
    const char *why = "the bus was closed before the broker confirmed the message";
    size_t failed = 0;
    mb_amqp_requeue_inflight(be, false, why);
    while (be->send_head) {
        struct mb_amqp_out *o = be->send_head;
        be->send_head = o->next;
        if (!o->internal)
            failed++;
        mb_amqp_fail(be, o, MSGBUS_ERR_CLOSED, why);
    }
    be->send_tail = NULL;
    for (struct mb_amqp_op *list[2] = {ops, be->waiting}, **l = list; l < list + 2; l++) {
        while (*l) {
            struct mb_amqp_op *op = *l;
            *l = op->next;
            if (op->kind == MB_AMQP_OP_SETTLE) {
                msgbus_msg_free(op->copy);
                free(op);
            } else if (op->kind == MB_AMQP_OP_PAUSE) {
                free(op); /* nobody waits for it */
            } else if (op->kind == MB_AMQP_OP_UNSUBSCRIBE) {
                mb_amqp_unsubscribe_now(be, op);
            } else {
                mb_amqp_op_finish(be, op, MSGBUS_ERR_CLOSED, "the bus is closing");
            }
        }
    }
    be->waiting = NULL;
    if (failed)
        mb_log(MSGBUS_LOG_DEBUG, "amqp: %zu messages unconfirmed at close", failed);
    if (be->conn) {
        struct timeval tv = {1, 0};
        amqp_set_rpc_timeout(be->conn, &tv);
        amqp_connection_close(be->conn, AMQP_REPLY_SUCCESS);
        mb_amqp_set_sockfd(be, -1);
        amqp_destroy_connection(be->conn);
        be->conn = NULL;
    }
    mb_amqp_topics_clear(be);
}

void *mb_amqp_io_main(void *arg)
{
    mb_thread_name("msgbus-amqp");
    struct mb_backend *be = arg;
    /* What the last poll() said; the first round looks at everything. Only
     * a readable eventfd is drained and only a readable socket (or data
     * rabbitmq-c already buffered, or a poll timeout: heartbeats) is read,
     * so a busy loop costs one poll() per round, not several empty reads. */
    bool wake_ready = true, sock_ready = true, timed_out = true;
    int64_t last_read_ms = 0;
    pthread_mutex_lock(&be->io_lock);
    for (;;) {
        uint64_t junk;
        /* Drain the eventfd before taking the queues: a wake-up written
         * after this read is seen by the next poll(). */
        if (wake_ready)
            while (read(be->wake_fd, &junk, sizeof junk) < 0 && errno == EINTR) {
            }
        pthread_mutex_lock(&be->lock);
        struct mb_amqp_out *pubs = be->pub_head, *pubs_tail = be->pub_tail;
        struct mb_amqp_op *ops = be->op_head;
        be->pub_head = be->pub_tail = NULL;
        be->op_head = be->op_tail = NULL;
        be->ctl_queued = false; /* run below, before this thread sleeps */
        be->wake_pending = false;
        struct mb_amqp_op *spare = NULL;
        if (be->op_spare) {
            /* Applied settle requests go back to the pool for reuse; what
             * the pool has no room for is freed below, after the lock. */
            if (be->op_pool_n + be->op_spare_n <= MB_AMQP_OP_POOL) {
                be->op_spare_tail->next = be->op_pool;
                be->op_pool = be->op_spare;
                be->op_pool_n += be->op_spare_n;
            } else {
                spare = be->op_spare;
            }
            be->op_spare = be->op_spare_tail = NULL;
            be->op_spare_n = 0;
        }
        be->kick_pending = false; /* whatever was blocked has returned */
        bool stopping = be->stopping;
        pthread_mutex_unlock(&be->lock);
        mb_amqp_ops_free(spare);
        if (pubs) {
            if (be->send_tail)
                be->send_tail->next = pubs;
            else
                be->send_head = pubs;
            be->send_tail = pubs_tail;
        }
        if (stopping) {
            /* Settles still queued are applied first, so acks are not lost. */
            mb_amqp_run_ops(be, ops);
            mb_amqp_flush_acks(be);
            break;
        }

        if (be->wire_err) {
            char why[MB_AMQP_DETAIL];
            snprintf(why, sizeof why, "publishing: %s", strerror(be->wire_err));
            be->wire_err = 0;
            if (be->conn)
                mb_amqp_conn_lost(be, why);
        }
        if (!be->conn) {
            mb_amqp_try_connect(be);
            sock_ready = true;
        }
        mb_amqp_run_ops(be, ops);
        if (be->conn && be->waiting) {
            struct mb_amqp_op *w = be->waiting;
            be->waiting = NULL;
            /* Oldest first: the list was built by pushing on the front. */
            struct mb_amqp_op *rev = NULL;
            while (w) {
                struct mb_amqp_op *nx = w->next;
                w->next = rev;
                rev = w;
                w = nx;
            }
            mb_amqp_run_ops(be, rev);
        }
        mb_amqp_expire(be);
        if (be->conn)
            mb_amqp_resub_due(be);
        if (be->conn) {
            mb_amqp_flush_acks(be);
            mb_amqp_send_pending(be);
            int64_t now = mb_mono_ms();
            if (be->conn && (sock_ready || timed_out || now - last_read_ms >= 500 ||
                             amqp_frames_enqueued(be->conn) || amqp_data_in_buffer(be->conn))) {
                last_read_ms = now;
                mb_amqp_read_frames(be);
            }
            mb_amqp_flush_acks(be);
        }
        mb_amqp_push_batches(be);
        /* After the push: no partition's messages wait in a batch. */
        if (be->conn)
            mb_amqp_balance_due(be);
        mb_amqp_publish_stats(be);

        bool busy = false;
        if (be->conn) {
            busy = amqp_frames_enqueued(be->conn) || amqp_data_in_buffer(be->conn) ||
                   (be->send_head && be->pub_channel_ok &&
                    be->ninflight < (size_t)be->conf.confirm_window);
        }
        int timeout = 1000;
        if (be->conn && be->conf.heartbeat_s > 0 && be->conf.heartbeat_s * 1000 / 3 < timeout)
            timeout = (int)(be->conf.heartbeat_s * 1000 / 3);
        if (!be->conn) {
            int64_t until = be->next_connect_ms - mb_mono_ms();
            timeout = until < 0 ? 0 : until < timeout ? (int)until : timeout;
        } else {
            for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next) {
                int64_t at = bs->resub_at_ms;
                if (!at && bs->parent && bs->part == 0 && !bs->parent->paused)
                    at = bs->parent->balance_at_ms;
                if (bs->draining)
                    at = mb_mono_ms() + 50; /* look again soon */
                if (at) {
                    int64_t until = at - mb_mono_ms();
                    timeout = until < 0 ? 0 : until < timeout ? (int)until : timeout;
                }
            }
        }
        struct pollfd p[2] = {{be->wake_fd, POLLIN, 0}, {-1, POLLIN, 0}};
        if (be->conn)
            p[1].fd = amqp_get_sockfd(be->conn);
        /* Asleep, the thread lets a publishing thread write (and so put
         * messages in flight whose confirms this poll() then sees). */
        pthread_mutex_unlock(&be->io_lock);
        int rc = poll(p, p[1].fd >= 0 ? 2 : 1, busy ? 0 : timeout);
        pthread_mutex_lock(&be->io_lock);
        wake_ready = rc != 0 && p[0].revents != 0;
        sock_ready = rc != 0 && p[1].fd >= 0 && p[1].revents != 0;
        timed_out = rc == 0 && !busy;
        if (rc < 0) /* EINTR: look at everything */
            wake_ready = sock_ready = true;
    }
    mb_amqp_shutdown(be);
    mb_amqp_wire_free(&be->wire);
    pthread_mutex_unlock(&be->io_lock);
    pthread_mutex_lock(&be->lock);
    be->exited = true;
    pthread_cond_broadcast(&be->cond);
    pthread_mutex_unlock(&be->lock);
    return NULL;
}
