/*
 * amqp_consume.c — the consumer half of the AMQP I/O thread: topology for
 * groups and broadcast subscribers, assembling deliveries (method, header,
 * body frames) into msgbus messages, and settling them.
 *
 * Acks are batched: the application's acks since the last wake-up are
 * applied together; the longest run of settled tags at the front of the
 * channel's delivered-but-unsettled list becomes one basic.ack with
 * multiple=true, the rest go out one by one (a message the application
 * holds for long must not stall acks of later ones, or prefetch runs dry).
 *
 * Nack: on a quorum queue basic.nack(requeue) — the broker counts the
 * return in x-delivery-count. A classic queue keeps no count, so msgbus
 * publishes a copy with msgbus-attempt = attempt + 1 to the same queue
 * (default exchange, confirmed) and acks the original only once the copy is
 * confirmed; until then the original stays unacked, so a crash or a lost
 * connection in between can duplicate the message but never lose it.
 *
 * A received message remembers its subscription's epoch (m->offset) and
 * delivery tag (m->tag); after a reconnect the epoch changes and settling
 * an old message does nothing — the broker has already put it back.
 */
#include "backends/amqp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mb_amqp_asm_clear(struct mb_amqp_asm *as)
{
    if (as->msg)
        msgbus_msg_free(as->msg);
    free(as->routing_key);
    free(as->exchange);
    free(as->reply_text);
    memset(as, 0, sizeof *as);
}

struct mb_backend_sub *mb_amqp_sub_by_channel(struct mb_backend *be, amqp_channel_t ch)
{
    for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next)
        if (bs->channel == ch)
            return bs;
    return NULL;
}

/* ---- topology --------------------------------------------------------------- */

/* Whether exchange (is_queue false) or queue `name` exists: a passive
 * declare on the control channel (a 404 closes that channel, which
 * mb_amqp_ensure_ctl reopens). Any other failure is returned. */
static msgbus_err_t mb_amqp_exists(struct mb_backend *be, bool is_queue, const char *name,
                                   bool *found, char *detail, size_t n, bool *lost)
{
    *found = false;
    if (!mb_amqp_ensure_ctl(be, detail, n, lost))
        return MSGBUS_ERR_CONNECT;
    if (is_queue)
        amqp_queue_declare(be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(name), 1, 0, 0, 0,
                           amqp_empty_table);
    else
        amqp_exchange_declare(be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(name),
                              amqp_cstring_bytes(MB_AMQP_CHASH_TYPE), 1, 0, 0, 0,
                              amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "asking for %s '%s'", is_queue ? "queue" : "exchange", name);
    msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), MB_AMQP_CTL_CHANNEL,
                                         what, detail, n, lost);
    if (e == MSGBUS_ERR_NOT_FOUND && !*lost) {
        detail[0] = '\0';
        return MSGBUS_OK;
    }
    *found = e == MSGBUS_OK;
    return e;
}

/* A group is partitioned or not for good: the URL's partitions= must agree
 * with what exists (docs/amqp.md "Partitioned groups"). Changing the count
 * of an existing group would move keys between partitions while messages
 * of those keys wait in the old ones, so it is refused, not migrated. */
static msgbus_err_t mb_amqp_check_layout(struct mb_backend *be, const char *topic,
                                         const char *group, char *detail, size_t n, bool *lost)
{
    long want = be->conf.partitions;
    char plain[256], ex[256], q[256];
    bool has_plain, has_ex;
    msgbus_err_t e;
    mb_amqp_group_queue(topic, group, plain, sizeof plain);
    if ((e = mb_amqp_part_name(topic, group, -1, ex, sizeof ex))) {
        snprintf(detail, n, "%s", msgbus_last_error());
        return e;
    }
    if ((e = mb_amqp_exists(be, true, plain, &has_plain, detail, n, lost)) ||
        (e = mb_amqp_exists(be, false, ex, &has_ex, detail, n, lost)))
        return e;
    if (want == 0) {
        if (has_ex) {
            snprintf(detail, n, "group '%s' of topic '%s' is partitioned (exchange '%s'): "
                                "open the bus with the partitions= it was created with",
                     group, topic, ex);
            return MSGBUS_ERR_CONFIG;
        }
        return MSGBUS_OK;
    }
    if (has_plain) {
        snprintf(detail, n, "group '%s' of topic '%s' exists unpartitioned (queue '%s'): it "
                            "cannot become partitioned (partitions=%ld); use a new group name, "
                            "or open the bus without partitions=",
                 group, topic, plain, want);
        return MSGBUS_ERR_CONFIG;
    }
    if (!has_ex)
        return MSGBUS_OK; /* a new group */
    bool last, beyond;
    mb_amqp_part_name(topic, group, want - 1, q, sizeof q);
    if ((e = mb_amqp_exists(be, true, q, &last, detail, n, lost)))
        return e;
    mb_amqp_part_name(topic, group, want, q, sizeof q);
    if ((e = mb_amqp_exists(be, true, q, &beyond, detail, n, lost)))
        return e;
    if (!last || beyond) {
        snprintf(detail, n, "group '%s' of topic '%s' exists with %s than partitions=%ld "
                            "partitions: changing the count of an existing group is refused "
                            "(keys would move while their messages wait); use the count it "
                            "was created with, or a new group name",
                 group, topic, beyond ? "more" : "fewer", want);
        return MSGBUS_ERR_CONFIG;
    }
    return MSGBUS_OK;
}

/* Partitioned group: exchange "<t>.<g>~hash" of type x-consistent-hash,
 * bound to the topic with "#", hashing the routing key (the message key)
 * onto N single-active-consumer queues "<t>.<g>~<i>", each bound with
 * weight "1". */
static msgbus_err_t mb_amqp_declare_parts(struct mb_backend *be, amqp_channel_t ch,
                                          const char *topic, const char *group, long from,
                                          long to, char *detail, size_t n, bool *lost)
{
    char ex[256], q[256], what[600];
    msgbus_err_t e;
    if (be->chash_missing) {
        snprintf(detail, n, "%s", MB_AMQP_WHY_NO_CHASH);
        return MSGBUS_ERR_UNSUPPORTED;
    }
    if ((e = mb_amqp_part_name(topic, group, -1, ex, sizeof ex)) ||
        (e = mb_amqp_part_name(topic, group, be->conf.partitions - 1, q, sizeof q))) {
        snprintf(detail, n, "%s", msgbus_last_error());
        return e;
    }
    amqp_table_entry_t xe[1];
    xe[0].key = amqp_cstring_bytes("x-msgbus-partitions");
    xe[0].value.kind = AMQP_FIELD_KIND_I64;
    xe[0].value.value.i64 = be->conf.partitions;
    amqp_table_t xargs = {1, xe};
    amqp_exchange_declare(be->conn, ch, amqp_cstring_bytes(ex),
                          amqp_cstring_bytes(MB_AMQP_CHASH_TYPE), 0, 1, 0, 0, xargs);
    snprintf(what, sizeof what, "declaring exchange '%s' (%s)", ex, MB_AMQP_CHASH_TYPE);
    e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n, lost);
    if (e) {
        /* RabbitMQ answers an unknown exchange type by closing the whole
         * connection (503 COMMAND_INVALID "invalid exchange type"): say
         * why, and never ask again on this bus. */
        if (strstr(detail, "exchange type")) {
            be->chash_missing = true;
            snprintf(detail, n, "%s", MB_AMQP_WHY_NO_CHASH);
            return MSGBUS_ERR_UNSUPPORTED;
        }
        return e;
    }
    amqp_exchange_bind(be->conn, ch, amqp_cstring_bytes(ex), amqp_cstring_bytes(topic),
                       amqp_cstring_bytes("#"), amqp_empty_table);
    snprintf(what, sizeof what, "binding exchange '%s' to exchange '%s'", ex, topic);
    if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n, lost)))
        return e;
    amqp_table_entry_t entries[65];
    size_t na = mb_amqp_queue_args(&be->conf, entries, 64);
    entries[na].key = amqp_cstring_bytes("x-single-active-consumer");
    entries[na].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    entries[na].value.value.boolean = 1;
    amqp_table_t args = {(int)na + 1, entries};
    for (long i = from; i < to; i++) {
        mb_amqp_part_name(topic, group, i, q, sizeof q);
        amqp_queue_declare(be->conn, ch, amqp_cstring_bytes(q), 0, 1, 0, 0, args);
        snprintf(what, sizeof what, "declaring queue '%s'%s", q,
                 be->conf.quorum ? " (quorum)" : "");
        if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n,
                                     lost)))
            return e;
        amqp_queue_bind(be->conn, ch, amqp_cstring_bytes(q), amqp_cstring_bytes(ex),
                        amqp_cstring_bytes("1"), amqp_empty_table);
        snprintf(what, sizeof what, "binding queue '%s' to exchange '%s'", q, ex);
        if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n,
                                     lost)))
            return e;
    }
    return MSGBUS_OK;
}

msgbus_err_t mb_amqp_declare_group(struct mb_backend *be, amqp_channel_t ch, const char *topic,
                                   const char *group, char *queue, size_t qn, char *detail,
                                   size_t n, bool *lost)
{
    msgbus_err_t e = mb_amqp_group_queue(topic, group, queue, qn);
    if (e) {
        snprintf(detail, n, "%s", msgbus_last_error());
        return e;
    }
    if ((e = mb_amqp_declare_exchange(be, ch, topic, detail, n, lost)))
        return e;
    if ((e = mb_amqp_check_layout(be, topic, group, detail, n, lost)))
        return e;
    /* The checks may have left the control channel closed (404). */
    if (ch == MB_AMQP_CTL_CHANNEL && !mb_amqp_ensure_ctl(be, detail, n, lost))
        return MSGBUS_ERR_CONNECT;
    if (be->conf.partitions > 0) {
        snprintf(queue, qn, "%s.%s~0..%ld", topic, group, be->conf.partitions - 1);
        return mb_amqp_declare_parts(be, ch, topic, group, 0, be->conf.partitions, detail, n,
                                     lost);
    }
    amqp_table_entry_t entries[64];
    amqp_table_t args = {(int)mb_amqp_queue_args(&be->conf, entries, 64), entries};
    amqp_queue_declare(be->conn, ch, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
    char what[600];
    snprintf(what, sizeof what, "declaring queue '%s'%s", queue,
             be->conf.quorum ? " (quorum)" : "");
    if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n, lost)))
        return e;
    amqp_queue_bind(be->conn, ch, amqp_cstring_bytes(queue), amqp_cstring_bytes(topic),
                    amqp_cstring_bytes("#"), amqp_empty_table);
    snprintf(what, sizeof what, "binding queue '%s' to exchange '%s'", queue, topic);
    return mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n, lost);
}

/* basic.consume of `queue` on `ch`, keeping the consumer tag the broker
 * chose (a pause cancels by it) in ctag[256]. */
static msgbus_err_t mb_amqp_consume_one(struct mb_backend *be, amqp_channel_t ch,
                                        const char *queue, char *ctag, char *detail, size_t n,
                                        bool *lost)
{
    amqp_basic_consume_ok_t *ok =
        amqp_basic_consume(be->conn, ch, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                           amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "consuming from queue '%s'", queue);
    msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n,
                                         lost);
    if (e)
        return e;
    ctag[0] = '\0';
    if (ok)
        snprintf(ctag, 256, "%.*s", (int)ok->consumer_tag.len,
                 (const char *)ok->consumer_tag.bytes);
    return MSGBUS_OK;
}

/* basic.consume on `ch`. */
static msgbus_err_t mb_amqp_consume(struct mb_backend *be, struct mb_backend_sub *bs,
                                    amqp_channel_t ch, char *detail, size_t n, bool *lost)
{
    msgbus_err_t e = mb_amqp_consume_one(be, ch, bs->queue, bs->ctag, detail, n, lost);
    if (!e)
        bs->consuming = true;
    return e;
}

static amqp_channel_t mb_amqp_alloc_channel(struct mb_backend *be)
{
    for (int tries = 0; tries < 65536; tries++) {
        if (be->next_channel < MB_AMQP_FIRST_SUB_CHANNEL || be->next_channel > be->channel_max)
            be->next_channel = MB_AMQP_FIRST_SUB_CHANNEL;
        amqp_channel_t ch = be->next_channel++;
        if (!mb_amqp_sub_by_channel(be, ch))
            return ch;
    }
    return 0;
}

/* A partitioned group's members are counted as the consumers of queue
 * "<t>.<g>~members": a classic queue (every consumer counts; a
 * single-active-consumer quorum queue reports only its active one), bound
 * to nothing, deleted by the broker 10 minutes after its last member left.
 * Every member consumes it (no acks: nothing is ever routed to it) on its
 * partition 0's channel, also while paused. */
static msgbus_err_t mb_amqp_join_members(struct mb_backend *be, struct mb_backend_sub *bs,
                                         amqp_channel_t ch, char *detail, size_t n, bool *lost)
{
    char q[256], what[300];
    msgbus_err_t e;
    if ((e = mb_amqp_part_name(bs->topic, bs->group, MB_AMQP_PART_MEMBERS, q, sizeof q))) {
        snprintf(detail, n, "%s", msgbus_last_error());
        return e;
    }
    amqp_table_entry_t xe[1];
    xe[0].key = amqp_cstring_bytes("x-expires");
    xe[0].value.kind = AMQP_FIELD_KIND_I64;
    xe[0].value.value.i64 = 600000;
    amqp_table_t args = {1, xe};
    amqp_queue_declare(be->conn, ch, amqp_cstring_bytes(q), 0, 0, 0, 0, args);
    snprintf(what, sizeof what, "declaring queue '%s'", q);
    if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n, lost)))
        return e;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(be->conn, ch, amqp_cstring_bytes(q),
                                                     amqp_empty_bytes, 0, 1, 0, amqp_empty_table);
    snprintf(what, sizeof what, "consuming from queue '%s'", q);
    if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n, lost)))
        return e;
    if (ok)
        snprintf(bs->mtag, sizeof bs->mtag, "%.*s", (int)ok->consumer_tag.len,
                 (const char *)ok->consumer_tag.bytes);
    return MSGBUS_OK;
}

msgbus_err_t mb_amqp_sub_establish(struct mb_backend *be, struct mb_backend_sub *bs,
                                   char *detail, size_t n, bool *lost)
{
    *lost = false;
    amqp_channel_t ch = mb_amqp_alloc_channel(be);
    if (!ch) {
        snprintf(detail, n, "no free AMQP channel (channel_max %d)", be->channel_max);
        return MSGBUS_ERR_BROKER;
    }
    msgbus_err_t e;
    amqp_channel_open(be->conn, ch);
    if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, "channel.open", detail,
                                 n, lost)))
        return e;
    amqp_basic_qos(be->conn, ch, 0, (uint16_t)be->conf.prefetch, 0);
    if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, "basic.qos", detail, n,
                                 lost)))
        return e;
    if (bs->parent) {
        /* One partition: its queue and the exchanges it hangs on (the
         * group's layout was checked when the parent subscribed). */
        e = mb_amqp_declare_exchange(be, ch, bs->topic, detail, n, lost);
        if (!e)
            e = mb_amqp_declare_parts(be, ch, bs->topic, bs->group, bs->part, bs->part + 1,
                                      detail, n, lost);
    } else if (bs->group) {
        e = mb_amqp_declare_group(be, ch, bs->topic, bs->group, bs->queue, sizeof bs->queue,
                                  detail, n, lost);
    } else if (!(e = mb_amqp_declare_exchange(be, ch, bs->topic, detail, n, lost))) {
        /* Broadcast: a server-named queue that lives as long as this
         * channel's consumer; it sees messages published from now on. */
        amqp_queue_declare_ok_t *ok =
            amqp_queue_declare(be->conn, ch, amqp_empty_bytes, 0, 0, 1, 1, amqp_empty_table);
        e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch,
                                "declaring a broadcast queue", detail, n, lost);
        if (!e && ok) {
            snprintf(bs->queue, sizeof bs->queue, "%.*s", (int)ok->queue.len,
                     (const char *)ok->queue.bytes);
            amqp_queue_bind(be->conn, ch, ok->queue, amqp_cstring_bytes(bs->topic),
                            amqp_cstring_bytes("#"), amqp_empty_table);
            e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch,
                                    "binding the broadcast queue", detail, n, lost);
        }
    }
    if (e)
        return e;
    /* A paused subscription gets its channel and queue (so a resume is one
     * basic.consume) but no consumer: a reconnect or a re-subscribe while
     * paused must not start deliveries. */
    bs->consuming = false;
    bs->ctag[0] = '\0';
    bs->mtag[0] = '\0';
    if (!bs->paused && (e = mb_amqp_consume(be, bs, ch, detail, n, lost)))
        return e;
    if (bs->parent && bs->part == 0 && (e = mb_amqp_join_members(be, bs, ch, detail, n, lost)))
        return e;
    bs->channel = ch;
    bs->epoch++;
    bs->quorum = bs->group && be->conf.quorum;
    bs->tag_head = bs->tag_len = 0;
    bs->resub_at_ms = 0;
    bs->resub_backoff_ms = 0;
    return MSGBUS_OK;
}

void mb_amqp_resub_later(struct mb_backend *be, struct mb_backend_sub *bs, const char *why)
{
    long b = bs->resub_backoff_ms ? bs->resub_backoff_ms * 2 : be->conf.reconnect_min_ms;
    if (b > be->conf.reconnect_max_ms)
        b = be->conf.reconnect_max_ms;
    bs->resub_backoff_ms = b;
    bs->resub_at_ms = mb_mono_ms() + b / 2 + (long)(mb_random64() % (uint64_t)(b / 2 + 1));
    /* Said once per outage, like the bus's own DOWN; retries log at debug. */
    if (b == be->conf.reconnect_min_ms) {
        mb_log(MSGBUS_LOG_ERROR, "amqp: subscription to '%s' (queue '%s') is not consuming: %s; "
                                 "retrying with backoff",
               bs->topic, bs->queue, why);
        mb_sub_state(bs->sub, MSGBUS_STATE_DOWN, "not consuming: %s (retrying)", why);
    } else {
        mb_log(MSGBUS_LOG_DEBUG, "amqp: re-subscribing to '%s' failed again: %s; next try in "
                                 "%ld ms",
               bs->topic, why, (long)(bs->resub_at_ms - mb_mono_ms()));
    }
}

void mb_amqp_resub_due(struct mb_backend *be)
{
    int64_t now = 0;
    for (struct mb_backend_sub *bs = be->subs; bs && be->conn; bs = bs->next) {
        if (!bs->resub_at_ms || bs->removed)
            continue;
        if (!now)
            now = mb_mono_ms();
        if (now < bs->resub_at_ms)
            continue;
        char detail[MB_AMQP_DETAIL];
        bool lost = false;
        if (bs->channel) {
            /* The consumer was cancelled but its channel lives: close it,
             * so that its unacked deliveries go back to the queue (they
             * come again; the inbox absorbs the copies) and its acks are
             * not mixed with the new consumer's. */
            amqp_channel_t ch = bs->channel;
            amqp_rpc_reply_t r = amqp_channel_close(be->conn, ch, AMQP_REPLY_SUCCESS);
            mb_amqp_sub_reset(be, bs);
            if (mb_amqp_reply_error(be, r, ch, "closing a cancelled consumer's channel", detail,
                                    sizeof detail, &lost) != MSGBUS_OK && lost) {
                mb_amqp_conn_lost(be, detail);
                return;
            }
        }
        if (!mb_amqp_resubscribe(be, bs))
            return;
    }
}

bool mb_amqp_resubscribe(struct mb_backend *be, struct mb_backend_sub *bs)
{
    char detail[MB_AMQP_DETAIL];
    bool lost = false;
    if (mb_amqp_sub_establish(be, bs, detail, sizeof detail, &lost) != MSGBUS_OK) {
        if (lost) {
            mb_amqp_conn_lost(be, detail);
            return false;
        }
        mb_amqp_resub_later(be, bs, detail);
    } else {
        mb_sub_state(bs->sub, MSGBUS_STATE_UP, "resubscribed");
    }
    return true;
}

/* The subscription's messages of epoch `offset`; a partition's (a child's)
 * share the msgbus_sub_t with the other partitions: `partition` too. */
struct mb_amqp_epoch_of {
    int64_t epoch;
    int32_t part;
};

static bool mb_amqp_old_epoch(const msgbus_msg_t *m, void *arg)
{
    const struct mb_amqp_epoch_of *a = arg;
    return m->offset == a->epoch && m->partition == a->part;
}

/* Forgets everything the subscription had on its (now gone) channel. */
void mb_amqp_sub_reset(struct mb_backend *be, struct mb_backend_sub *bs)
{
    bs->channel = 0;
    bs->consuming = false;
    bs->ctag[0] = '\0';
    bs->mtag[0] = '\0';
    bs->tag_head = bs->tag_len = 0;
    bs->in_app = 0;
    bs->recent = 0;
    bs->draining = false;
    bs->acks_pending = false;
    mb_amqp_asm_clear(&bs->as);
    while (bs->batch_head) {
        msgbus_msg_t *m = bs->batch_head;
        bs->batch_head = m->next;
        m->next = NULL;
        msgbus_msg_free(m);
    }
    bs->batch_tail = NULL;
    bs->batch_n = 0;
    /* Messages the application has not received yet will come again. */
    if (!bs->removed) {
        struct mb_amqp_epoch_of a = {bs->epoch, bs->part};
        size_t n = mb_sub_drop(bs->sub, mb_amqp_old_epoch, &a);
        if (n)
            mb_log(MSGBUS_LOG_DEBUG, "amqp: dropped %zu queued messages of '%s'; the broker "
                                     "delivers them again",
                   n, bs->topic);
    }
    /* Republished copies of nacked messages no longer have an original to ack. */
    for (struct mb_amqp_out *o = be->send_head; o; o = o->next)
        if (o->orig_sub == bs)
            o->orig_sub = NULL;
    for (struct mb_amqp_out *o = be->infl_head; o; o = o->next)
        if (o->orig_sub == bs)
            o->orig_sub = NULL;
}

/* ---- deliveries -------------------------------------------------------------------- */

void mb_amqp_tag_push(struct mb_backend_sub *bs, uint64_t tag)
{
    if (bs->tag_head + bs->tag_len == bs->tag_cap) {
        if (bs->tag_head > 0) {
            memmove(bs->tags, bs->tags + bs->tag_head, bs->tag_len * sizeof *bs->tags);
            bs->tag_head = 0;
        }
        if (bs->tag_len == bs->tag_cap) {
            size_t cap = bs->tag_cap ? bs->tag_cap * 2 : 256;
            struct mb_amqp_tag *t = realloc(bs->tags, cap * sizeof *t);
            if (!t)
                return; /* unsettled bookkeeping lost: the tag is acked singly */
            bs->tags = t;
            bs->tag_cap = cap;
        }
    }
    bs->tags[bs->tag_head + bs->tag_len].tag = tag;
    bs->tags[bs->tag_head + bs->tag_len].state = MB_AMQP_TAG_OPEN;
    bs->tag_len++;
}

struct mb_amqp_tag *mb_amqp_tag_find(struct mb_backend_sub *bs, uint64_t tag)
{
    size_t lo = bs->tag_head, hi = bs->tag_head + bs->tag_len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (bs->tags[mid].tag < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < bs->tag_head + bs->tag_len && bs->tags[lo].tag == tag)
        return &bs->tags[lo];
    return NULL;
}

static void mb_amqp_tags_pop(struct mb_backend_sub *bs)
{
    while (bs->tag_len && bs->tags[bs->tag_head].state == MB_AMQP_TAG_DONE) {
        bs->tag_head++;
        bs->tag_len--;
    }
    if (!bs->tag_len)
        bs->tag_head = 0;
}

static void mb_amqp_deliver_done(struct mb_backend_sub *bs)
{
    struct mb_amqp_asm *as = &bs->as;
    if (bs->draining) {
        /* A partition being given away keeps what arrives unacked: closing
         * its channel hands it back, in order, to the next member. */
        mb_amqp_tag_push(bs, as->tag);
        mb_amqp_asm_clear(as);
        return;
    }
    msgbus_msg_t *m = as->msg;
    as->msg = NULL;
    m->tag = as->tag;
    m->offset = bs->epoch;
    m->partition = bs->part;
    bs->recent++;
    mb_amqp_tag_push(bs, as->tag);
    m->next = NULL;
    if (bs->batch_tail)
        bs->batch_tail->next = m;
    else
        bs->batch_head = m;
    bs->batch_tail = m;
    bs->batch_n++;
    mb_amqp_asm_clear(as);
}

static void mb_amqp_sub_channel_closed(struct mb_backend *be, struct mb_backend_sub *bs,
                                       const amqp_channel_close_t *c)
{
    amqp_channel_t ch = bs->channel;
    mb_log(MSGBUS_LOG_ERROR, "amqp: the broker closed the channel of the subscription to '%s': "
                             "%u %.*s; re-subscribing",
           bs->topic, c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
    amqp_channel_close_ok_t ok = {0};
    amqp_send_method(be->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    mb_amqp_sub_reset(be, bs);
    mb_sub_state(bs->sub, MSGBUS_STATE_RECONNECTING, "the broker closed its channel: %u %.*s",
                 c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
    mb_amqp_resubscribe(be, bs);
}

void mb_amqp_sub_frame(struct mb_backend *be, struct mb_backend_sub *bs, const amqp_frame_t *f)
{
    struct mb_amqp_asm *as = &bs->as;
    if (f->frame_type == AMQP_FRAME_METHOD) {
        switch (f->payload.method.id) {
        case AMQP_BASIC_DELIVER_METHOD: {
            const amqp_basic_deliver_t *d = f->payload.method.decoded;
            mb_amqp_asm_clear(as);
            if (bs->mtag[0] && d->consumer_tag.len == strlen(bs->mtag) &&
                memcmp(d->consumer_tag.bytes, bs->mtag, d->consumer_tag.len) == 0) {
                /* Something published to the members queue by name: not a
                 * message of the group (taken without ack); its content
                 * frames are skipped. */
                as->kind = 3;
                return;
            }
            as->kind = 1;
            as->tag = d->delivery_tag;
            as->redelivered = d->redelivered;
            as->exchange = mb_strndup(d->exchange.bytes, d->exchange.len);
            as->ex_len = d->exchange.len;
            as->routing_key = mb_strndup(d->routing_key.bytes, d->routing_key.len);
            as->rk_len = d->routing_key.len;
            as->msg = mb_msg_new_received(bs->sub);
            if (!as->routing_key || !as->exchange || !as->msg) {
                mb_log(MSGBUS_LOG_ERROR, "amqp: out of memory receiving a message; it is "
                                         "requeued");
                amqp_basic_nack(be->conn, bs->channel, d->delivery_tag, 0, 1);
                mb_amqp_asm_clear(as);
            }
            return;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
            mb_amqp_sub_channel_closed(be, bs, f->payload.method.decoded);
            return;
        case AMQP_BASIC_CANCEL_METHOD:
            /* RabbitMQ cancels a consumer when its queue is deleted, or
             * when the cluster node holding it goes down (a classic queue,
             * or a quorum queue that lost its majority). Declaring the
             * queue again and consuming, with backoff while that fails,
             * brings it back (or a fresh one, if it was deleted). */
            mb_log(MSGBUS_LOG_ERROR, "amqp: the broker cancelled the subscription to '%s' "
                                     "(queue '%s' deleted, or its node down); re-subscribing",
                   bs->topic, bs->queue);
            mb_sub_state(bs->sub, MSGBUS_STATE_RECONNECTING,
                         "the broker cancelled the consumer of queue '%s' (deleted, or its "
                         "node down)", bs->queue);
            bs->consuming = false;
            bs->resub_backoff_ms = 0;
            bs->resub_at_ms = mb_mono_ms(); /* at once; then with backoff */
            return;
        default:
            return;
        }
    }
    if (as->kind != 1)
        return;
    if (f->frame_type == AMQP_FRAME_HEADER) {
        amqp_bytes_t rk = {as->rk_len, as->routing_key};
        msgbus_msg_t *m = as->msg;
        size_t size = (size_t)f->payload.properties.body_size;
        amqp_bytes_t ex = {as->ex_len, as->exchange};
        if (!mb_amqp_decode(m, f->payload.properties.decoded, ex, rk, as->redelivered)) {
            mb_log(MSGBUS_LOG_ERROR, "amqp: out of memory decoding a message; it is requeued");
            amqp_basic_nack(be->conn, bs->channel, as->tag, 0, 1);
            mb_amqp_asm_clear(as);
            return;
        }
        as->body_size = size;
        as->got = 0;
        if (size) {
            /* One byte more, NUL: a text payload can be read as a string. */
            unsigned char *buf = malloc(size + 1);
            if (!buf) {
                amqp_basic_nack(be->conn, bs->channel, as->tag, 0, 1);
                mb_amqp_asm_clear(as);
                return;
            }
            /* A fresh received message holds the core's static empty
             * payload: replaced, never freed. */
            buf[size] = '\0';
            m->payload = buf;
            m->payload_borrowed = false;
            m->len = size;
        }
    } else if (f->frame_type == AMQP_FRAME_BODY && as->msg && as->body_size) {
        size_t len = f->payload.body_fragment.len;
        if (len > as->body_size - as->got)
            len = as->body_size - as->got;
        memcpy(as->msg->payload + as->got, f->payload.body_fragment.bytes, len);
        as->got += len;
    } else {
        return;
    }
    if (as->got >= as->body_size) {
        /* A structured CloudEvent is unpacked here, once its body is whole
         * (a broken one arrives as it was sent, marked
         * msgbus-invalid-cloudevent). */
        if (!mb_amqp_decode_body(as->msg)) {
            mb_log(MSGBUS_LOG_ERROR, "amqp: out of memory decoding a message; it is requeued");
            amqp_basic_nack(be->conn, bs->channel, as->tag, 0, 1);
            mb_amqp_asm_clear(as);
            return;
        }
        mb_amqp_deliver_done(bs);
    }
}

void mb_amqp_push_batches(struct mb_backend *be)
{
    for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next) {
        if (!bs->batch_n)
            continue;
        msgbus_msg_t *head = bs->batch_head;
        size_t n = bs->batch_n;
        bs->batch_head = bs->batch_tail = NULL;
        bs->batch_n = 0;
        bs->in_app += (long)n;
        mb_sub_push(bs->sub, head, n);
    }
}

/* ---- settling -------------------------------------------------------------------------- */

static void mb_amqp_nack_requeue(struct mb_backend *be, struct mb_backend_sub *bs,
                                 struct mb_amqp_tag *t)
{
    int st = amqp_basic_nack(be->conn, bs->channel, t->tag, 0, 1);
    t->state = MB_AMQP_TAG_DONE;
    if (st != AMQP_STATUS_OK) {
        char why[MB_AMQP_DETAIL];
        snprintf(why, sizeof why, "basic.nack: %s", amqp_error_string2(st));
        mb_amqp_conn_lost(be, why);
    }
}

void mb_amqp_settle_apply(struct mb_backend *be, struct mb_amqp_op *op)
{
    struct mb_backend_sub *bs = op->sub;
    struct mb_amqp_tag *t = NULL;
    if (be->conn && bs->channel && !bs->removed && op->epoch == bs->epoch)
        t = mb_amqp_tag_find(bs, op->tag);
    if (t && t->state == MB_AMQP_TAG_OPEN) {
        if (bs->in_app > 0)
            bs->in_app--;
        if (op->how == MB_SETTLE_ACK) {
            t->state = MB_AMQP_TAG_ACK_NOW;
            bs->acks_pending = true;
        } else if (bs->quorum || !op->copy) {
            mb_amqp_nack_requeue(be, bs, t);
        } else {
            struct mb_amqp_out *o = NULL;
            msgbus_err_t e = mb_amqp_out_new(&o, "", bs->queue, strlen(bs->queue), op->copy,
                                             op->copy->attempt + 1, true,
                                             (size_t)be->conf.frame_max);
            if (e) {
                /* The copy cannot carry the attempt (its headers outgrew a
                 * frame): the broker redelivers the original instead. */
                mb_log(MSGBUS_LOG_ERROR, "amqp: cannot republish message %s for a retry (%s); "
                                         "it is requeued and comes back marked redelivered",
                       op->copy->id ? op->copy->id : "(no id)", msgbus_last_error());
                mb_amqp_nack_requeue(be, bs, t);
            } else {
                /* Jumps the queue of publishes: a retry is not application
                 * data and must not wait behind a long backlog. */
                o->queued_ms = mb_mono_ms();
                o->internal = true;
                o->orig_sub = bs;
                o->orig_epoch = bs->epoch;
                o->orig_tag = op->tag;
                o->next = be->send_head;
                be->send_head = o;
                if (!be->send_tail)
                    be->send_tail = o;
            }
        }
    }
    msgbus_msg_free(op->copy);
    mb_amqp_op_recycle(be, op);
}

void mb_amqp_ops_free(struct mb_amqp_op *list)
{
    while (list) {
        struct mb_amqp_op *n = list->next;
        free(list);
        list = n;
    }
}

void mb_amqp_op_recycle(struct mb_backend *be, struct mb_amqp_op *op)
{
    if (be->op_spare_n >= MB_AMQP_OP_POOL) {
        free(op);
        return;
    }
    op->next = be->op_spare;
    if (!be->op_spare)
        be->op_spare_tail = op;
    be->op_spare = op;
    be->op_spare_n++;
}

void mb_amqp_republish_done(struct mb_backend *be, struct mb_amqp_out *o, bool ok)
{
    struct mb_backend_sub *bs = o->orig_sub;
    if (!bs || !be->conn || bs->removed || !bs->channel || bs->epoch != o->orig_epoch)
        return;
    struct mb_amqp_tag *t = mb_amqp_tag_find(bs, o->orig_tag);
    if (!t || t->state != MB_AMQP_TAG_OPEN)
        return;
    if (ok) {
        t->state = MB_AMQP_TAG_ACK_NOW;
        bs->acks_pending = true;
    } else {
        mb_amqp_nack_requeue(be, bs, t);
    }
}

size_t mb_amqp_ack_plan(struct mb_backend_sub *bs, uint64_t *multi, uint64_t *singles,
                        size_t cap)
{
    size_t i = bs->tag_head, end = bs->tag_head + bs->tag_len, n = 0;
    *multi = 0;
    for (; i < end && bs->tags[i].state != MB_AMQP_TAG_OPEN; i++) {
        if (bs->tags[i].state == MB_AMQP_TAG_ACK_NOW)
            *multi = bs->tags[i].tag;
        bs->tags[i].state = MB_AMQP_TAG_DONE;
    }
    for (; i < end && n < cap; i++) {
        if (bs->tags[i].state != MB_AMQP_TAG_ACK_NOW)
            continue;
        singles[n++] = bs->tags[i].tag;
        bs->tags[i].state = MB_AMQP_TAG_DONE;
    }
    mb_amqp_tags_pop(bs);
    return n;
}

/* Over plain TCP every subscription's acks of the pass are encoded into
 * be->wire and written with one send (rabbitmq-c sends each ack alone);
 * over TLS rabbitmq-c writes them. */
void mb_amqp_flush_acks(struct mb_backend *be)
{
    uint64_t singles[256], multi;
    bool direct = !be->conf.tls;
    for (struct mb_backend_sub *bs = be->subs; bs && be->conn; bs = bs->next) {
        if (!bs->acks_pending || !bs->channel)
            continue;
        bs->acks_pending = false;
        int st = AMQP_STATUS_OK;
        for (;;) {
            size_t n = mb_amqp_ack_plan(bs, &multi, singles, 256);
            if (multi)
                st = direct ? mb_amqp_wire_ack(&be->wire, bs->channel, multi, true)
                            : amqp_basic_ack(be->conn, bs->channel, multi, 1);
            for (size_t k = 0; k < n && st == AMQP_STATUS_OK; k++)
                st = direct ? mb_amqp_wire_ack(&be->wire, bs->channel, singles[k], false)
                            : amqp_basic_ack(be->conn, bs->channel, singles[k], 0);
            if (st != AMQP_STATUS_OK || n < 256)
                break;
        }
        if (st != AMQP_STATUS_OK) {
            char why[MB_AMQP_DETAIL];
            snprintf(why, sizeof why, "basic.ack: %s", amqp_error_string2(st));
            mb_amqp_conn_lost(be, why);
            return;
        }
    }
    if (direct)
        mb_amqp_wire_flush(be, "basic.ack");
}

/* ---- lag ------------------------------------------------------------------------------ */

msgbus_err_t mb_amqp_queue_info(struct mb_backend *be, struct mb_amqp_op *op, char *detail,
                                size_t n, bool *conn_lost)
{
    struct mb_backend_sub *bs = op->sub;
    *conn_lost = false;
    /* A group's queue has a fixed name; a broadcast queue is the one the
     * broker named when the subscription was (re)established. */
    if (bs->group)
        mb_amqp_group_queue(bs->topic, bs->group, op->queue, sizeof op->queue);
    else
        snprintf(op->queue, sizeof op->queue, "%s", bs->channel ? bs->queue : "");
    if (!op->queue[0]) {
        snprintf(detail, n, "the subscription has no queue on this connection yet");
        return MSGBUS_ERR_CONNECT;
    }
    size_t unacked = 0;
    for (size_t c = 0; c < (bs->children ? bs->nchildren : 1); c++) {
        struct mb_backend_sub *x = bs->children ? bs->children[c] : bs;
        if (x->channel)
            for (size_t i = x->tag_head; i < x->tag_head + x->tag_len; i++)
                unacked += x->tags[i].state != MB_AMQP_TAG_DONE;
    }
    op->unacked = unacked;
    /* A partitioned group: the sum over its partition queues, and the
     * consumers of each (every member consumes every partition). */
    size_t nq = bs->children ? bs->nchildren : 1;
    if (bs->children)
        snprintf(op->queue, sizeof op->queue, "%s", bs->queue);
    op->ready = op->consumers = 0;
    for (size_t i = 0; i < nq; i++) {
        char q[256];
        snprintf(q, sizeof q, "%s", bs->children ? bs->children[i]->queue : op->queue);
        if (!mb_amqp_ensure_ctl(be, detail, n, conn_lost))
            return MSGBUS_ERR_CONNECT;
        /* Passive: only asks. A queue that is gone closes the control
         * channel with 404, which mb_amqp_reply_error answers (reopened
         * on next use). */
        amqp_queue_declare_ok_t *ok = amqp_queue_declare(
            be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(q), 1, 0, 0, 0, amqp_empty_table);
        char what[300];
        snprintf(what, sizeof what, "asking for queue '%s'", q);
        msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn),
                                             MB_AMQP_CTL_CHANNEL, what, detail, n, conn_lost);
        if (e == MSGBUS_ERR_NOT_FOUND) {
            op->found = false;
            return MSGBUS_OK;
        }
        if (e || !ok)
            return e ? e : MSGBUS_ERR_BROKER;
        op->ready += ok->message_count;
        if (ok->consumer_count > op->consumers)
            op->consumers = ok->consumer_count;
    }
    op->found = true;
    return MSGBUS_OK;
}

/* ---- pause ---------------------------------------------------------------------------- */

/* Pause cancels the consumer and keeps the channel: its unsettled
 * deliveries stay unsettled (a channel's delivery tags die with it, so
 * closing it would hand them back to the queue and make the application's
 * acks void), and resume is one basic.consume on the same channel.
 * Deliveries already on their way when the cancel goes out still arrive
 * (rabbitmq-c queues them while it waits for cancel-ok) and wait in the
 * core, which holds back a paused subscription's queue. */
static void mb_amqp_pause_one(struct mb_backend *be, struct mb_backend_sub *bs, bool want);

/* A partitioned subscription pauses every partition. */
void mb_amqp_pause_apply(struct mb_backend *be, struct mb_amqp_op *op)
{
    struct mb_backend_sub *bs = op->sub;
    bool want = op->paused;
    free(op);
    if (!bs->children) {
        mb_amqp_pause_one(be, bs, want);
        return;
    }
    bs->paused = want;
    for (size_t i = 0; i < bs->nchildren && !bs->removed; i++) {
        mb_amqp_pause_one(be, bs->children[i], want);
        if (!be->conn)
            break; /* lost: the next establishment honours `paused` */
    }
    if (!be->conn)
        for (size_t i = 0; i < bs->nchildren; i++)
            bs->children[i]->paused = want;
}

static void mb_amqp_pause_one(struct mb_backend *be, struct mb_backend_sub *bs, bool want)
{
    if (bs->removed || bs->paused == want)
        return;
    bs->paused = want;
    /* Not established on this connection, or waiting to re-subscribe: the
     * next establishment honours `paused`. */
    if (!be->conn || !bs->channel || bs->resub_at_ms)
        return;
    char detail[MB_AMQP_DETAIL], what[300];
    bool lost = false;
    msgbus_err_t e = MSGBUS_OK;
    if (want && bs->consuming) {
        amqp_basic_cancel(be->conn, bs->channel, amqp_cstring_bytes(bs->ctag));
        snprintf(what, sizeof what, "pausing: cancelling the consumer of queue '%s'", bs->queue);
        e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), bs->channel, what, detail,
                                sizeof detail, &lost);
        if (!e) {
            bs->consuming = false;
            bs->ctag[0] = '\0';
            mb_log(MSGBUS_LOG_DEBUG, "amqp: subscription to '%s' paused (queue '%s')",
                   bs->topic, bs->queue);
        }
    } else if (!want && !bs->consuming) {
        e = mb_amqp_consume(be, bs, bs->channel, detail, sizeof detail, &lost);
        if (!e)
            mb_log(MSGBUS_LOG_DEBUG, "amqp: subscription to '%s' resumed (queue '%s')",
                   bs->topic, bs->queue);
    }
    if (!e)
        return;
    if (lost) {
        mb_amqp_conn_lost(be, detail);
        return;
    }
    /* The broker closed the channel (its queue was deleted meanwhile, say):
     * establish it again, which honours `paused`. */
    mb_log(MSGBUS_LOG_ERROR, "amqp: %s; re-subscribing", detail);
    mb_amqp_sub_reset(be, bs);
    mb_sub_state(bs->sub, MSGBUS_STATE_RECONNECTING, "%s", detail);
    mb_amqp_resubscribe(be, bs);
}

/* ---- group reset and inspection ----------------------------------------------------- */

/* Passive declares only ask; one that finds nothing makes the broker close
 * the channel (404). They run on the control channel, which
 * mb_amqp_reply_error marks closed and mb_amqp_ensure_ctl reopens on its
 * next use — never on the publish channel or a subscription's. */
static msgbus_err_t mb_amqp_passive_exchange(struct mb_backend *be, struct mb_amqp_op *op,
                                             char *detail, size_t n, bool *lost)
{
    if (!mb_amqp_ensure_ctl(be, detail, n, lost))
        return MSGBUS_ERR_CONNECT;
    amqp_exchange_declare(be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(op->exchange),
                          amqp_cstring_bytes("topic"), 1, 0, 0, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "asking for exchange '%s'", op->exchange);
    msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), MB_AMQP_CTL_CHANNEL,
                                         what, detail, n, lost);
    if (e == MSGBUS_ERR_NOT_FOUND)
        snprintf(detail, n, "topic '%s' does not exist (no exchange of that name)",
                 op->exchange);
    op->exchange_found = e == MSGBUS_OK;
    return e;
}

/* The group's queue, or with partitions=N its N partition queues: ready
 * counts summed, consumers those of the busiest (every member consumes
 * every partition). */
static msgbus_err_t mb_amqp_passive_queue(struct mb_backend *be, struct mb_amqp_op *op,
                                          char *detail, size_t n, bool *lost)
{
    const char *group = op->queue + strlen(op->exchange) + 1;
    size_t nq = be->conf.partitions > 0 ? (size_t)be->conf.partitions : 1;
    op->ready = op->consumers = 0;
    for (size_t i = 0; i < nq; i++) {
        char q[256];
        if (be->conf.partitions > 0)
            mb_amqp_part_name(op->exchange, group, (long)i, q, sizeof q);
        else
            snprintf(q, sizeof q, "%s", op->queue);
        if (!mb_amqp_ensure_ctl(be, detail, n, lost))
            return MSGBUS_ERR_CONNECT;
        amqp_queue_declare_ok_t *ok = amqp_queue_declare(
            be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(q), 1, 0, 0, 0, amqp_empty_table);
        char what[300];
        snprintf(what, sizeof what, "asking for queue '%s'", q);
        msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn),
                                             MB_AMQP_CTL_CHANNEL, what, detail, n, lost);
        if (e == MSGBUS_ERR_NOT_FOUND)
            snprintf(detail, n, "group '%s' does not exist on topic '%s' (no queue '%s')",
                     group, op->exchange, q);
        if (e)
            return e;
        if (!ok) {
            snprintf(detail, n, "%s: no queue.declare-ok from the broker", what);
            return MSGBUS_ERR_BROKER;
        }
        op->ready += ok->message_count;
        if (ok->consumer_count > op->consumers)
            op->consumers = ok->consumer_count;
    }
    if (be->conf.partitions > 0) {
        /* Members: the consumers of the members queue (a quorum
         * partition reports only its active consumer); gone when nobody
         * consumed it for 10 minutes: none. */
        char q[256];
        bool found = false;
        mb_amqp_part_name(op->exchange, group, MB_AMQP_PART_MEMBERS, q, sizeof q);
        if (!mb_amqp_ensure_ctl(be, detail, n, lost))
            return MSGBUS_ERR_CONNECT;
        amqp_queue_declare_ok_t *ok = amqp_queue_declare(
            be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(q), 1, 0, 0, 0, amqp_empty_table);
        char what[300];
        snprintf(what, sizeof what, "asking for queue '%s'", q);
        msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn),
                                             MB_AMQP_CTL_CHANNEL, what, detail, n, lost);
        if (e && e != MSGBUS_ERR_NOT_FOUND)
            return e;
        found = !e && ok;
        detail[0] = '\0';
        op->consumers = found ? ok->consumer_count : 0;
    }
    op->found = true;
    /* The broker counts consumers; this bus's own members of the group
     * without one right now (paused, or re-subscribing) are members too
     * (a partitioned member once, by its partition 0). */
    op->local_members = 0;
    for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next) {
        /* A partitioned member is counted by the broker while it consumes
         * the members queue (also paused). */
        bool counted = bs->parent ? bs->mtag[0] != '\0' : bs->consuming;
        op->local_members += !bs->removed && !counted && bs->group && bs->part == 0 &&
                             strcmp(bs->topic, op->exchange) == 0 &&
                             strcmp(bs->group, group) == 0;
    }
    return MSGBUS_OK;
}

msgbus_err_t mb_amqp_group_reset_run(struct mb_backend *be, struct mb_amqp_op *op,
                                     char *detail, size_t n, bool *lost)
{
    *lost = false;
    msgbus_err_t e;
    if ((e = mb_amqp_passive_exchange(be, op, detail, n, lost)) ||
        (e = mb_amqp_passive_queue(be, op, detail, n, lost)))
        return e;
    const char *group = op->queue + strlen(op->exchange) + 1;
    uint32_t members = op->consumers + op->local_members;
    if (members) {
        char where[600];
        if (be->conf.partitions > 0)
            snprintf(where, sizeof where, "queues '%s~0' to '%s~%ld'", op->queue, op->queue,
                     be->conf.partitions - 1);
        else
            snprintf(where, sizeof where, "queue '%s'", op->queue);
        snprintf(detail, n, "group '%s' has %u active member%s on topic '%s' (%s); stop %s "
                            "before resetting it",
                 group, members, members == 1 ? "" : "s", op->exchange, where,
                 members == 1 ? "it" : "them");
        return MSGBUS_ERR_STATE;
    }
    /* "latest" on a queue: drop everything waiting. Unacked deliveries are
     * not purged, but with no member there are none. A member that starts
     * between the passive declare and the purge loses what the purge drops
     * — AMQP has no way to do both at once. */
    size_t nq = be->conf.partitions > 0 ? (size_t)be->conf.partitions : 1;
    op->purged = 0;
    for (size_t i = 0; i < nq; i++) {
        char q[256];
        if (be->conf.partitions > 0)
            mb_amqp_part_name(op->exchange, group, (long)i, q, sizeof q);
        else
            snprintf(q, sizeof q, "%s", op->queue);
        if (!mb_amqp_ensure_ctl(be, detail, n, lost))
            return MSGBUS_ERR_CONNECT;
        amqp_queue_purge_ok_t *ok =
            amqp_queue_purge(be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(q));
        char what[300];
        snprintf(what, sizeof what, "purging queue '%s'", q);
        if ((e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), MB_AMQP_CTL_CHANNEL,
                                     what, detail, n, lost)))
            return e;
        op->purged += ok ? ok->message_count : 0;
    }
    mb_log(MSGBUS_LOG_INFO, "amqp: group '%s' on '%s' reset to latest: purged %u message(s) "
                            "from queue '%s'%s",
           group, op->exchange, op->purged, op->queue,
           be->conf.partitions > 0 ? " (every partition)" : "");
    return MSGBUS_OK;
}

msgbus_err_t mb_amqp_inspect_run(struct mb_backend *be, struct mb_amqp_op *op, char *detail,
                                 size_t n, bool *lost)
{
    *lost = false;
    msgbus_err_t e = mb_amqp_passive_exchange(be, op, detail, n, lost);
    if (!e && op->queue[0])
        e = mb_amqp_passive_queue(be, op, detail, n, lost);
    return e;
}

/* ---- partitioned groups: children and balancing ------------------------------------ */

/* Every member consumes every partition queue, each on a channel of its
 * own, and the queues are single-active-consumer: the broker delivers a
 * queue to the consumer that registered first and, when that one goes
 * (its channel or connection closed, its process or node dead), hands the
 * unacked messages back to the queue's head and delivers to the next in
 * line — in order, nothing lost, nothing for msgbus to do. Left alone, the
 * first member would hold every partition, so each member also gives
 * partitions away: every rebalance_ms it counts the members (the consumers
 * of the group's members queue) and the partitions it received from since the last
 * round; past its share, ceil(N / members), it gives one away — one of
 * which the application holds no message right now. Giving away is
 * draining first — what the application has not received yet is taken
 * back from the subscription, whatever else arrives is kept unacked — until
 * the application has settled every message of that partition it got (one
 * it received just before the take-back; at most 5 rounds), then closing
 * the partition's channel: the broker puts the
 * unacked messages back at the head of the queue before the next member in
 * line gets any, so order holds across the hand-over. The partition is then
 * consumed again at the end of the line. A member that is then past its
 * share gives away in its turn, so the shares settle within a few rounds. */

size_t mb_amqp_part_share(size_t nparts, size_t members)
{
    if (!members)
        members = 1;
    return (nparts + members - 1) / members;
}

static void mb_amqp_unlink(struct mb_backend *be, struct mb_backend_sub *bs)
{
    for (struct mb_backend_sub **pp = &be->subs; *pp; pp = &(*pp)->next)
        if (*pp == bs) {
            *pp = bs->next;
            break;
        }
    bs->next = NULL;
}

/* Closes bs's channel (its unacked messages go back to the queue) and
 * forgets what it had on it. false when the connection was lost. */
static bool mb_amqp_close_sub_channel(struct mb_backend *be, struct mb_backend_sub *bs,
                                      const char *what)
{
    bool lost = false;
    if (be->conn && bs->channel) {
        char detail[MB_AMQP_DETAIL];
        amqp_channel_t ch = bs->channel;
        bs->channel = 0;
        /* amqp_channel_close returns its reply; amqp_get_rpc_reply would
         * give the previous call's (after a failed passive declare, a
         * channel.close that is not ours to answer). */
        amqp_rpc_reply_t r = amqp_channel_close(be->conn, ch, AMQP_REPLY_SUCCESS);
        mb_amqp_reply_error(be, r, ch, what, detail, sizeof detail, &lost);
        if (lost) {
            mb_amqp_sub_reset(be, bs);
            mb_amqp_conn_lost(be, detail);
            return false;
        }
    }
    mb_amqp_sub_reset(be, bs);
    return true;
}

void mb_amqp_sub_remove(struct mb_backend *be, struct mb_backend_sub *bs)
{
    bs->removed = true;
    if (bs->children) {
        for (size_t i = 0; i < bs->nchildren; i++)
            mb_amqp_sub_remove(be, bs->children[i]);
        return;
    }
    /* Removed first: the core releases what it still queues for this sub,
     * so a connection loss below must not drop into it. Closing the
     * channel hands its unacked messages back to the queue (and an
     * exclusive broadcast queue is deleted with it). */
    mb_amqp_close_sub_channel(be, bs, "closing a subscription");
    mb_amqp_unlink(be, bs);
}

msgbus_err_t mb_amqp_parent_establish(struct mb_backend *be, struct mb_backend_sub *bs,
                                      char *detail, size_t n, bool *lost)
{
    *lost = false;
    msgbus_err_t e = MSGBUS_ERR_CONNECT;
    char q[256];
    if (!mb_amqp_ensure_ctl(be, detail, n, lost))
        return e;
    if ((e = mb_amqp_declare_group(be, MB_AMQP_CTL_CHANNEL, bs->topic, bs->group, q, sizeof q,
                                   detail, n, lost)))
        return e;
    size_t i = 0;
    for (; i < bs->nchildren; i++) {
        struct mb_backend_sub *c = bs->children[i];
        if ((e = mb_amqp_sub_establish(be, c, detail, n, lost)))
            break;
        c->next = be->subs;
        be->subs = c;
    }
    if (!e) {
        bs->balance_at_ms = mb_mono_ms() + be->conf.rebalance_ms;
        return MSGBUS_OK;
    }
    /* None stays: the ones established give their channels back. */
    while (i-- > 0) {
        struct mb_backend_sub *c = bs->children[i];
        if (!*lost && be->conn)
            mb_amqp_close_sub_channel(be, c, "undoing a partitioned subscription");
        else
            mb_amqp_sub_reset(be, c);
        c->channel = 0;
        mb_amqp_unlink(be, c);
    }
    if (!be->conn)
        *lost = true;
    return e;
}

struct mb_amqp_drop_arg {
    int64_t epoch;
    int32_t part;
    size_t n;
    bool drop; /* false: count only */
};

static bool mb_amqp_of_child(const msgbus_msg_t *m, void *arg)
{
    struct mb_amqp_drop_arg *a = arg;
    if (m->offset != a->epoch || m->partition != a->part)
        return false;
    a->n++;
    return a->drop;
}

/* How many of child c's messages the application holds right now
 * (received, not settled): those handed over minus those still waiting in
 * the subscription. */
static long mb_amqp_app_holds(struct mb_backend_sub *c)
{
    struct mb_amqp_drop_arg a = {c->epoch, c->part, 0, false};
    mb_sub_drop(c->sub, mb_amqp_of_child, &a);
    return c->in_app - (long)a.n;
}

/* Starts giving child `c` away: what the application has not received
 * yet is taken back (still unacked: the channel's close returns it). */
static void mb_amqp_drain_start(struct mb_backend_sub *c)
{
    struct mb_amqp_drop_arg a = {c->epoch, c->part, 0, true};
    mb_sub_drop(c->sub, mb_amqp_of_child, &a);
    c->in_app -= (long)a.n;
    if (c->in_app < 0)
        c->in_app = 0;
    c->draining = true;
    c->drain_since_ms = mb_mono_ms();
    mb_log(MSGBUS_LOG_DEBUG, "amqp: group '%s' of '%s': giving partition queue '%s' away (%zu "
                             "waiting message(s) taken back, %ld with the application)",
           c->group, c->topic, c->queue, a.n, c->in_app);
}

/* Ends it: the channel's close returns every unacked message to the
 * queue's head, the next member in line takes over; then this member
 * consumes again, at the end of the line. false when the connection was
 * lost. */
static bool mb_amqp_drain_end(struct mb_backend *be, struct mb_backend_sub *c)
{
    mb_amqp_flush_acks(be); /* acks first: what was done must not come again */
    if (!be->conn)
        return false;
    if (!mb_amqp_close_sub_channel(be, c, "giving a partition away"))
        return false;
    char detail[MB_AMQP_DETAIL];
    bool lost = false;
    if (mb_amqp_sub_establish(be, c, detail, sizeof detail, &lost) != MSGBUS_OK) {
        if (lost) {
            mb_amqp_conn_lost(be, detail);
            return false;
        }
        mb_amqp_resub_later(be, c, detail);
    }
    return true;
}

/* One balancer round for parent `bs`. false when the connection was lost. */
static bool mb_amqp_balance(struct mb_backend *be, struct mb_backend_sub *bs)
{
    char detail[MB_AMQP_DETAIL];
    bool lost = false;
    size_t held = 0, draining = 0;
    for (size_t i = 0; i < bs->nchildren; i++) {
        struct mb_backend_sub *c = bs->children[i];
        held += c->channel && c->consuming && !c->draining && c->recent > 0;
        draining += c->draining;
    }
    if (!held || draining)
        goto done;
    if (!mb_amqp_ensure_ctl(be, detail, sizeof detail, &lost)) {
        if (lost)
            mb_amqp_conn_lost(be, detail);
        return !lost;
    }
    char q0[256];
    mb_amqp_part_name(bs->topic, bs->group, MB_AMQP_PART_MEMBERS, q0, sizeof q0);
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(
        be->conn, MB_AMQP_CTL_CHANNEL, amqp_cstring_bytes(q0), 1, 0, 0, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "asking for queue '%s'", q0);
    msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), MB_AMQP_CTL_CHANNEL,
                                         what, detail, sizeof detail, &lost);
    if (e || !ok) {
        if (lost) {
            mb_amqp_conn_lost(be, detail);
            return false;
        }
        mb_log(MSGBUS_LOG_DEBUG, "amqp: balancing '%s': %s", bs->queue, detail);
        goto done;
    }
    size_t members = ok->consumer_count;
    size_t share = mb_amqp_part_share(bs->nchildren, members);
    mb_log(MSGBUS_LOG_DEBUG, "amqp: balancing '%s': %zu member(s), share %zu, receiving from %zu",
           bs->queue, members, share, held);
    /* One at a time, the highest-numbered first (every member does the
     * same, so the lines on the queues stay predictable), and only one
     * whose messages the application holds none of: a message being
     * worked on is never handed to another member meanwhile. */
    if (held > share)
        for (size_t i = bs->nchildren; i-- > 0;) {
            struct mb_backend_sub *c = bs->children[i];
            if (c->channel && c->consuming && !c->draining && c->recent > 0 &&
                mb_amqp_app_holds(c) <= 0) {
                mb_amqp_drain_start(c);
                break;
            }
        }
done:
    for (size_t i = 0; i < bs->nchildren; i++)
        bs->children[i]->recent = 0;
    return true;
}

void mb_amqp_balance_due(struct mb_backend *be)
{
    int64_t now = mb_mono_ms();
    for (struct mb_backend_sub *c = be->subs; c && be->conn; c = c->next) {
        if (!c->parent || c->removed)
            continue;
        if (c->draining && c->channel &&
            (c->in_app <= 0 || now - c->drain_since_ms >= 5 * be->conf.rebalance_ms)) {
            if (c->in_app > 0)
                mb_log(MSGBUS_LOG_DEBUG, "amqp: partition queue '%s': %ld message(s) still "
                                         "unsettled after %ld ms; handing over anyway (they "
                                         "come again)",
                       c->queue, c->in_app, 5 * be->conf.rebalance_ms);
            if (!mb_amqp_drain_end(be, c))
                return;
            /* be->subs may have changed under the walk: next time. */
            return;
        }
        struct mb_backend_sub *bs = c->parent;
        if (c->part != 0 || bs->paused || now < bs->balance_at_ms)
            continue;
        bs->balance_at_ms = now + be->conf.rebalance_ms;
        if (!mb_amqp_balance(be, bs))
            return;
    }
}
