/*
 * kafka_consumer.c — the Kafka backend's subscriptions: one librdkafka
 * high-level consumer and one thread per subscription, acked-prefix
 * commits, nack redelivery, flow control and rebalances (group plumbing
 * shared with declare is in kafka_group.c).
 *
 * Invariants:
 *  - Only the subscription's thread calls into its rd_kafka_t (poll,
 *    commit, assign, close), except the read-only queries of
 *    mb_kafka_sub_stats (committed offsets, end offsets), which librdkafka
 *    serves on temporary queues of their own. Application threads (settle) touch only the
 *    per-partition tables, under bs->mu; freeing a message destroys the
 *    record it borrows from, and the last reference destroys the handle
 *    (see struct mb_kafka_rkref).
 *  - Per assigned partition we keep the offsets delivered and not yet
 *    acked, in delivery order. The commit point is the first unacked
 *    delivered offset, or the offset after the last delivered one when all
 *    are acked: a crash redelivers only messages at or after it.
 *  - Positions are resolved explicitly at assignment (committed offset, else
 *    where start= points: by default the partition's end), never left to
 *    librdkafka's auto.offset.reset, so subscribe() returning means a
 *    message published afterwards is received.
 *  - Pausing (msgbus_sub_pause, and flow control) is done by the
 *    subscription's thread too: the application only sets a flag and cuts
 *    the thread's poll short.
 *  - Each assignment of a partition gets a new generation, stamped on the
 *    messages (m->tag). A settle for an older generation is ignored: the
 *    partition was revoked and its new owner receives the message again.
 */
#include "backends/kafka.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MB_KAFKA_BATCH 1000
/* Payloads at least this long are borrowed from the record, shorter ones
 * copied: destroying a record on the application's thread (atomics on
 * librdkafka's shared buffer and partition refcounts) costs more than
 * copying a small payload. bench_kafka 13:45 UTC 2026-11-24: borrowing
 * helped consume_1024 but consume_64 dropped from ~0.56 to ~0.48.
 * Short payloads are copied into one block per delivered batch (the
 * batch's slab), not into a malloc of their own: messages are allocated
 * on the subscription's thread and freed on the application's, where
 * every free may wait for the allocator's lock of the other thread. */
#define MB_KAFKA_BORROW_MIN 512

struct mb_kafka_part {
    bool assigned;
    uint64_t gen;
    int64_t committed; /* last commit point handed to librdkafka */
    int64_t next;      /* offset after the last delivered message */
    size_t unacked;    /* entries in [head, tail) not acked */
    int64_t *offs;     /* in-flight offsets [head, tail), increasing */
    bool *acked;
    size_t head, tail, cap;
};

/* Received messages borrow their payload from the librdkafka record
 * (no copy on the consumer thread); the record is destroyed when the
 * application frees the message (mb_kafka_release). librdkafka requires
 * every record destroyed before rd_kafka_destroy, and messages outlive
 * unsubscribe (the core frees its queued ones afterwards, the
 * application frees its own whenever), so the handle is reference
 * counted: one reference for the subscription, one per batch of records
 * still held. The last one destroys it (possibly on an application
 * thread, inside msgbus_msg_free; the consumer is already closed then). */
struct mb_kafka_rkref {
    rd_kafka_t *rk;
    /* The queue of a consumer close that mb_kafka_reap_main finishes. */
    rd_kafka_queue_t *closeq;
    _Atomic long refs;
};
/* The subscription thread closed the consumer itself (leaving the group
 * within the close bound, or giving up): the final destroy must not try
 * again, since rd_kafka_destroy's own consumer close waits without bound
 * while the brokers are down. */
static void mb_kafka_consumer_destroy(rd_kafka_t *rk)
{
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

struct mb_kafka_batch;
struct mb_kafka_held { /* m->backend_data of a received message */
    struct mb_kafka_batch *batch;
    rd_kafka_message_t *rkm; /* NULL: the payload is a copy in the slab */
};

/* One allocation per delivered batch, not per message: the held[]
 * entries, then the slab of short payloads' copies. It lives until its
 * last message is freed. */
struct mb_kafka_batch {
    _Atomic long refs; /* messages holding it, + 1 while being delivered */
    struct mb_kafka_rkref *owner;
    msgbus_msg_t *msgs; /* n message structs, after held[n]; then the slab */
    struct mb_kafka_held held[];
};

static void mb_kafka_rkref_drop(struct mb_kafka_rkref *r)
{
    if (atomic_fetch_sub(&r->refs, 1) == 1) {
        mb_kafka_consumer_destroy(r->rk);
        free(r);
    }
}

static void mb_kafka_batch_drop(struct mb_kafka_batch *b)
{
    if (atomic_fetch_sub(&b->refs, 1) == 1) {
        mb_kafka_rkref_drop(b->owner);
        free(b);
    }
}

void mb_kafka_release(msgbus_msg_t *m)
{
    struct mb_kafka_held *h = m->backend_data;
    if (!h)
        return;
    m->backend_data = NULL;
    if (h->rkm)
        rd_kafka_message_destroy(h->rkm);
    mb_kafka_batch_drop(h->batch);
}

struct mb_backend_sub {
    struct mb_backend *be;
    msgbus_sub_t *sub;
    const char *topic;
    const char *group; /* NULL: broadcast */
    char group_id[96];
    rd_kafka_t *rk;
    struct mb_kafka_rkref *rkref; /* NULL until the thread starts */
    pthread_t thread;
    bool thread_started;
    _Atomic bool stop;
    /* Set by unsubscribe before stop: when the subscription's close (last
     * commit, leaving the group) stops waiting for the brokers. */
    int64_t close_deadline;
    /* librdkafka said all brokers are down (error_cb) and nothing
     * succeeded since: a closing subscription does not wait for them. */
    _Atomic bool brokers_down;
    /* The subscription's connection as last reported (MB_KAFKA_CONN_*:
     * UP, RECONNECTING after a lost broker connection, DOWN with all
     * brokers down, FATAL): the next sign of life reports UP again.
     * Subscription thread only. */
    int conn;
    int64_t next_probe_ms;
    /* Set by the thread when it stopped waiting for its consumer close
     * midway: unsubscribe hands the handle to mb_kafka_reap_main. */
    rd_kafka_queue_t *reap_q;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool ready; /* the first assignment is in place */
    struct mb_kafka_part *parts;
    size_t nparts; /* indexed by partition number */
    uint64_t gen_counter;
    bool dirty; /* the commit point moved since the last commit */
    int64_t last_commit_ms;
    bool commit_failing; /* the last asynchronous commit failed (warned once) */
    /* Delivered and not yet acked, over all partitions: the backend stops
     * fetching (pauses its partitions) at max_unacked, so a backlog is
     * not pulled into memory faster than the application settles it. */
    size_t unacked;
    pthread_cond_t room; /* signalled when unacked falls to max_unacked/2 */
    bool waiting_room;
    /* Fetching stops (the whole assignment paused in librdkafka) while
     * flow control (max_unacked) or the application (msgbus_sub_pause)
     * wants it. Subscription thread only, except want_pause. */
    bool flow_paused;
    bool user_paused;        /* want_pause as the thread last applied it */
    bool fetch_paused;       /* what librdkafka was last told */
    _Atomic bool want_pause; /* set by ops->pause, on the application's thread */
    /* The consumer queue the thread polls, so ops->pause can cut a poll
     * short (rd_kafka_queue_yield); NULL once the thread is closing. mu
     * held. */
    rd_kafka_queue_t *wake_q;
};

/* ---- per-partition tables (bs->mu held) --------------------------------- */

static struct mb_kafka_part *mb_kafka_part_get(struct mb_backend_sub *bs, int32_t partition,
                                               bool create)
{
    if (partition < 0)
        return NULL;
    if ((size_t)partition >= bs->nparts) {
        if (!create)
            return NULL;
        size_t n = (size_t)partition + 1;
        struct mb_kafka_part *p = realloc(bs->parts, n * sizeof *p);
        if (!p)
            return NULL;
        memset(p + bs->nparts, 0, (n - bs->nparts) * sizeof *p);
        bs->parts = p;
        bs->nparts = n;
    }
    return &bs->parts[partition];
}

static int64_t mb_kafka_part_point(const struct mb_kafka_part *p)
{
    return p->head < p->tail ? p->offs[p->head] : p->next;
}

static bool mb_kafka_part_push(struct mb_kafka_part *p, int64_t offset)
{
    if (p->head > 0 && p->tail == p->cap) { /* slide down before growing */
        memmove(p->offs, p->offs + p->head, (p->tail - p->head) * sizeof *p->offs);
        memmove(p->acked, p->acked + p->head, (p->tail - p->head) * sizeof *p->acked);
        p->tail -= p->head;
        p->head = 0;
    }
    if (p->tail == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 1024;
        int64_t *o = realloc(p->offs, cap * sizeof *o);
        if (!o)
            return false;
        p->offs = o;
        bool *a = realloc(p->acked, cap * sizeof *a);
        if (!a)
            return false;
        p->acked = a;
        p->cap = cap;
    }
    p->offs[p->tail] = offset;
    p->acked[p->tail] = false;
    p->tail++;
    p->unacked++;
    p->next = offset + 1;
    return true;
}

static bool mb_kafka_part_ack(struct mb_kafka_part *p, int64_t offset)
{
    size_t lo = p->head, hi = p->tail;
    if (lo < hi && p->offs[lo] == offset) /* the usual case: acks in order */
        hi = lo;
    while (lo < hi) { /* binary search: offsets are increasing */
        size_t mid = lo + (hi - lo) / 2;
        if (p->offs[mid] < offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    bool found = lo < p->tail && p->offs[lo] == offset && !p->acked[lo];
    if (found) {
        p->acked[lo] = true;
        p->unacked--;
    }
    while (p->head < p->tail && p->acked[p->head])
        p->head++;
    if (p->head == p->tail)
        p->head = p->tail = 0;
    return found;
}

static void mb_kafka_part_reset(struct mb_backend_sub *bs, struct mb_kafka_part *p, int64_t start)
{
    bs->unacked -= p->unacked;
    p->unacked = 0;
    p->head = p->tail = 0;
    p->next = start;
    p->committed = start;
}

/* Builds the list of commit points that moved (for `only` partitions when
 * given). Marks them committed. NULL when nothing to commit. bs->mu held. */
static rd_kafka_topic_partition_list_t *
mb_kafka_commit_list(struct mb_backend_sub *bs, const rd_kafka_topic_partition_list_t *only)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    for (size_t i = 0; i < bs->nparts; i++) {
        struct mb_kafka_part *p = &bs->parts[i];
        if (!p->assigned)
            continue;
        if (only) {
            bool in = false;
            for (int k = 0; k < only->cnt; k++)
                if (only->elems[k].partition == (int32_t)i)
                    in = true;
            if (!in)
                continue;
        }
        int64_t point = mb_kafka_part_point(p);
        if (point <= p->committed)
            continue;
        if (!l)
            l = rd_kafka_topic_partition_list_new(8);
        rd_kafka_topic_partition_list_add(l, bs->topic, (int32_t)i)->offset = point;
        p->committed = point;
    }
    bs->dirty = false;
    return l;
}

/* Whether a closing subscription stops waiting for the brokers: its close
 * deadline passed, or librdkafka reported them all down. Never while the
 * subscription runs. */
static bool mb_kafka_closing_give_up(void *arg)
{
    struct mb_backend_sub *bs = arg;
    return atomic_load(&bs->stop) &&
           (mb_mono_ms() >= bs->close_deadline || atomic_load(&bs->brokers_down));
}

/* How long a blocking step may wait: connect_timeout_ms while running,
 * what is left of the close bound once closing. */
static int mb_kafka_wait_ms(struct mb_backend_sub *bs)
{
    if (!atomic_load(&bs->stop))
        return (int)bs->be->connect_timeout_ms;
    int64_t left = bs->close_deadline - mb_mono_ms();
    return left > 0 ? (int)left : 0;
}

/* Commits the acked prefix: asynchronously while running; on revocation
 * and close it waits for the outcome, up to connect_timeout_ms (up to the
 * close bound when closing: see mb_kafka_close_consumer). Broadcast
 * subscribers have throw-away groups and do not commit. Subscription
 * thread only. */
static void mb_kafka_commit(struct mb_backend_sub *bs, const rd_kafka_topic_partition_list_t *only,
                            bool sync)
{
    if (!bs->group)
        return;
    pthread_mutex_lock(&bs->mu);
    rd_kafka_topic_partition_list_t *l = mb_kafka_commit_list(bs, only);
    bs->last_commit_ms = mb_mono_ms();
    pthread_mutex_unlock(&bs->mu);
    if (!l)
        return;
    rd_kafka_resp_err_t err =
        sync ? mb_kafka_commit_wait(bs->rk, l, mb_kafka_wait_ms(bs), mb_kafka_closing_give_up, bs)
             : rd_kafka_commit(bs->rk, l, 1);
    if (err && sync)
        mb_log(MSGBUS_LOG_WARN, "kafka: committing offsets of group '%s' on '%s' failed: %s; "
               "messages after the last commit will be delivered again",
               bs->group_id, bs->topic, rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

/* ---- state (docs/kafka.md, "Stats and state") ------------------------- */

/* Partitions currently assigned. bs->mu held. */
static int mb_kafka_assigned(const struct mb_backend_sub *bs)
{
    int n = 0;
    for (size_t i = 0; i < bs->nparts; i++)
        n += bs->parts[i].assigned;
    return n;
}

/* The brokers answered again (records fetched, a commit or an assignment
 * went through, a probe's metadata came back): UP after RECONNECTING or
 * DOWN. Subscription thread only. */
static void mb_kafka_sub_alive(struct mb_backend_sub *bs)
{
    if (atomic_load_explicit(&bs->brokers_down, memory_order_relaxed))
        atomic_store(&bs->brokers_down, false);
    if (bs->conn == MB_KAFKA_CONN_UP || bs->conn == MB_KAFKA_CONN_FATAL ||
        atomic_load(&bs->stop))
        return;
    bs->conn = MB_KAFKA_CONN_UP;
    pthread_mutex_lock(&bs->mu);
    int n = mb_kafka_assigned(bs);
    pthread_mutex_unlock(&bs->mu);
    mb_sub_state(bs->sub, MSGBUS_STATE_UP, "brokers reachable again: %d partition%s assigned",
                 n, n == 1 ? "" : "s");
}

/* While the subscription's connection is lost (RECONNECTING or DOWN), its
 * thread asks for metadata every 500 ms (250 ms at most): an answer means
 * reachable again even when nothing is published. Subscription thread
 * only. */
static void mb_kafka_sub_probe(struct mb_backend_sub *bs)
{
    if (bs->conn == MB_KAFKA_CONN_UP || bs->conn == MB_KAFKA_CONN_FATAL ||
        mb_mono_ms() < bs->next_probe_ms)
        return;
    bs->next_probe_ms = mb_mono_ms() + 500;
    const struct rd_kafka_metadata *md = NULL;
    if (rd_kafka_metadata(bs->rk, 0, NULL, &md, 250) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    int brokers = md->broker_cnt;
    rd_kafka_metadata_destroy(md);
    if (brokers > 0)
        mb_kafka_sub_alive(bs);
}

/* An asynchronous commit's outcome (subscription thread, from its poll).
 * A failed one (the coordinator moving or still loading its offsets after
 * a restart, a timeout) puts its points back so the next round commits
 * them again: else the group keeps the old position until the next ack,
 * its lag stays up and a restart redelivers what was acked. One warning
 * per run of failures, one line when commits go through again. */
static void mb_kafka_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    struct mb_backend_sub *bs = opaque;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return;
    rd_kafka_resp_err_t first = err;
    int again = 0;
    pthread_mutex_lock(&bs->mu);
    for (int k = 0; offsets && k < offsets->cnt; k++) {
        const rd_kafka_topic_partition_t *e = &offsets->elems[k];
        if (!err && !e->err)
            continue;
        if (!first)
            first = e->err;
        if (e->partition < 0 || (size_t)e->partition >= bs->nparts || e->offset < 0 ||
            strcmp(e->topic, bs->topic) != 0)
            continue;
        struct mb_kafka_part *p = &bs->parts[e->partition];
        /* Only if nothing later was handed over since; an unassigned
         * partition is skipped by the next round anyway. */
        if (p->assigned && p->committed == e->offset) {
            p->committed = e->offset - 1;
            again++;
        }
    }
    if (again)
        bs->dirty = true;
    pthread_mutex_unlock(&bs->mu);
    if (!first) {
        if (bs->commit_failing) {
            bs->commit_failing = false;
            mb_log(MSGBUS_LOG_INFO, "kafka: commits for group '%s' on '%s' go through again",
                   bs->group_id, bs->topic);
        }
        mb_kafka_sub_alive(bs);
        return;
    }
    if (!bs->commit_failing && !atomic_load(&bs->stop))
        mb_log(MSGBUS_LOG_WARN, "kafka: async commit for group '%s' on '%s' failed: %s; "
               "retrying every commit_interval_ms while the partitions stay assigned",
               bs->group_id, bs->topic, rd_kafka_err2str(first));
    bs->commit_failing = true;
}

static void mb_kafka_consumer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct mb_backend_sub *bs = opaque;
    mb_kafka_error_cb(rk, err, reason, opaque);
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        atomic_store(&bs->brokers_down, true);
    if (bs->conn == MB_KAFKA_CONN_FATAL || atomic_load(&bs->stop))
        return;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char detail[512];
        rd_kafka_fatal_error(rk, detail, sizeof detail);
        bs->conn = MB_KAFKA_CONN_FATAL;
        mb_sub_state(bs->sub, MSGBUS_STATE_DOWN, "fatal consumer error, nothing more is "
                     "received (subscribe again): %s", detail);
    } else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        bs->conn = MB_KAFKA_CONN_DOWN;
        bs->next_probe_ms = mb_mono_ms() + 500;
        mb_sub_state(bs->sub, MSGBUS_STATE_DOWN, "all brokers down");
    } else if ((err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE ||
                err == RD_KAFKA_RESP_ERR__SSL || err == RD_KAFKA_RESP_ERR__AUTHENTICATION) &&
               bs->conn == MB_KAFKA_CONN_UP) {
        /* Scrubbed as mb_kafka_error_cb does: the reason may quote a property. */
        char detail[512];
        snprintf(detail, sizeof detail, "%s", reason ? reason : rd_kafka_err2str(err));
        mb_kafka_scrub_props(bs->be, detail, sizeof detail);
        bs->conn = MB_KAFKA_CONN_RECONNECTING;
        bs->next_probe_ms = mb_mono_ms() + 500;
        mb_sub_state(bs->sub, MSGBUS_STATE_RECONNECTING, "connection lost: %s", detail);
    }
}

/* ---- rebalances ------------------------------------------------------------ */

static void mb_kafka_pause(struct mb_backend_sub *bs, bool pause);

/* Fills each partition's start offset: the group's committed offset, else
 * where the subscription's start= points (its default: the URL's
 * auto.offset.reset, else latest — the partition's end as of assignment).
 * A group has committed offsets once declared or consumed, so start=
 * decides only for a new group; a broadcast subscriber has no committed
 * offsets and always starts where start= says. */
static void mb_kafka_resolve_positions(struct mb_backend_sub *bs,
                                       rd_kafka_topic_partition_list_t *parts)
{
    int timeout = (int)bs->be->connect_timeout_ms;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (bs->group) {
        err = mb_kafka_committed(bs->rk, parts, timeout, &bs->stop);
        if (err) {
            /* Never guess "the end" here: that would skip what the group
             * has not consumed. librdkafka then reads the committed offsets
             * itself when it starts fetching (auto.offset.reset=earliest if
             * there are none: duplicates at worst, never loss). */
            mb_log(MSGBUS_LOG_WARN, "kafka: reading committed offsets of group '%s' failed: %s; "
                   "starting from the group's stored positions",
                   bs->group_id, rd_kafka_err2str(err));
            for (int i = 0; i < parts->cnt; i++)
                parts->elems[i].offset = RD_KAFKA_OFFSET_STORED;
            return;
        }
    } else {
        for (int i = 0; i < parts->cnt; i++)
            parts->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    }
    rd_kafka_topic_partition_list_t *todo = NULL;
    for (int i = 0; i < parts->cnt; i++) {
        if (parts->elems[i].offset >= 0)
            continue;
        if (!todo)
            todo = rd_kafka_topic_partition_list_new(parts->cnt);
        rd_kafka_topic_partition_list_add(todo, parts->elems[i].topic,
                                          parts->elems[i].partition);
    }
    if (!todo)
        return;
    struct mb_start start = *mb_sub_start(bs->sub);
    if (start.kind == MB_START_DEFAULT)
        start.kind = bs->be->default_start == MB_START_EARLIEST ? MB_START_EARLIEST
                                                                : MB_START_LATEST;
    mb_kafka_start_offsets(bs->rk, todo, &start, timeout, &bs->stop);
    rd_kafka_topic_partition_list_t *fixed = NULL;
    for (int i = 0; i < todo->cnt; i++) {
        rd_kafka_topic_partition_t *s = &todo->elems[i];
        rd_kafka_topic_partition_t *tp =
            rd_kafka_topic_partition_list_find(parts, s->topic, s->partition);
        if (!tp)
            continue;
        if (s->err || s->offset < 0) {
            /* Last resort: let librdkafka resolve (stored offset, else
             * auto.offset.reset=earliest: duplicates, never loss). */
            mb_log(MSGBUS_LOG_ERROR, "kafka: start offset of %s[%d] unknown: %s; starting at the "
                   "group's stored position", s->topic, (int)s->partition,
                   rd_kafka_err2str(s->err ? s->err : RD_KAFKA_RESP_ERR__NO_OFFSET));
            tp->offset = RD_KAFKA_OFFSET_STORED;
            continue;
        }
        tp->offset = s->offset;
        if (bs->group) {
            if (!fixed)
                fixed = rd_kafka_topic_partition_list_new(todo->cnt);
            rd_kafka_topic_partition_list_add(fixed, s->topic, s->partition)->offset = s->offset;
        }
    }
    rd_kafka_topic_partition_list_destroy(todo);
    if (!fixed)
        return;
    /* Persist the start at once: otherwise a member that closes (or dies)
     * before acking anything in the partition leaves no commit, and the
     * next member would start at the then-current end, skipping what this
     * one was given but never acked. */
    err = mb_kafka_commit_wait(bs->rk, fixed, mb_kafka_wait_ms(bs), mb_kafka_closing_give_up, bs);
    if (err)
        mb_log(MSGBUS_LOG_WARN, "kafka: committing the start positions of group '%s' failed: "
               "%s", bs->group_id, rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(fixed);
}

static bool mb_kafka_drop_pred(const msgbus_msg_t *m, void *arg)
{
    const rd_kafka_topic_partition_list_t *revoked = arg;
    for (int i = 0; i < revoked->cnt; i++)
        if (revoked->elems[i].partition == m->partition)
            return true;
    return false;
}

static void mb_kafka_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                  rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    struct mb_backend_sub *bs = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        atomic_store(&bs->brokers_down, false);
        mb_kafka_resolve_positions(bs, parts);
        int assigned = 0;
        pthread_mutex_lock(&bs->mu);
        for (int i = 0; i < parts->cnt; i++) {
            struct mb_kafka_part *p = mb_kafka_part_get(bs, parts->elems[i].partition, true);
            if (!p)
                continue;
            p->assigned = true;
            p->gen = ++bs->gen_counter;
            mb_kafka_part_reset(bs, p, parts->elems[i].offset >= 0 ? parts->elems[i].offset : -1);
        }
        assigned = mb_kafka_assigned(bs);
        pthread_mutex_unlock(&bs->mu);
        rd_kafka_error_t *e = NULL;
        rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
        if (cooperative)
            e = rd_kafka_incremental_assign(rk, parts);
        else
            aerr = rd_kafka_assign(rk, parts);
        if (e) {
            mb_log(MSGBUS_LOG_ERROR, "kafka: assign failed: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
        } else if (aerr) {
            mb_log(MSGBUS_LOG_ERROR, "kafka: assign failed: %s", rd_kafka_err2str(aerr));
        }
        if (mb_log_enabled(MSGBUS_LOG_DEBUG))
            for (int i = 0; i < parts->cnt; i++)
                mb_log(MSGBUS_LOG_DEBUG, "kafka: group '%s' assigned %s[%d] at offset %lld",
                       bs->group_id, parts->elems[i].topic, (int)parts->elems[i].partition,
                       (long long)parts->elems[i].offset);
        /* Before ready: subscribe returns with the sub already UP. */
        if (bs->conn != MB_KAFKA_CONN_FATAL && !atomic_load(&bs->stop)) {
            bs->conn = MB_KAFKA_CONN_UP;
            mb_sub_state(bs->sub, MSGBUS_STATE_UP, "assigned %d partition%s", assigned,
                         assigned == 1 ? "" : "s");
        }
        /* Flow control starts over with the new assignment (the loop
         * pauses it again if needed); partitions assigned while the
         * application has the subscription paused start paused. The whole
         * assignment is told, not only `parts`: a cooperative rebalance
         * keeps partitions whose pause state is then made the same. */
        bs->flow_paused = false;
        bs->user_paused = atomic_load(&bs->want_pause);
        bs->fetch_paused = !bs->user_paused; /* so mb_kafka_pause tells librdkafka */
        mb_kafka_pause(bs, bs->user_paused);
        pthread_mutex_lock(&bs->mu);
        bs->ready = true;
        pthread_cond_broadcast(&bs->cv);
        pthread_mutex_unlock(&bs->mu);
        return;
    }

    /* Revocation (or a rebalance error): commit what was acked, then forget
     * the partitions. Messages still queued for the application are
     * dropped; ones it holds can no longer be settled (their settle is
     * ignored) — the new owner receives them again from the commit point. */
    /* Lost (the group moved on without us: session timed out, fenced):
     * nothing may be committed for these partitions any more. */
    bool lost = rd_kafka_assignment_lost(rk);
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS && !lost)
        mb_kafka_commit(bs, parts, true);
    else if (err != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        mb_log(MSGBUS_LOG_WARN, "kafka: rebalance error in group '%s': %s", bs->group_id,
               rd_kafka_err2str(err));
    pthread_mutex_lock(&bs->mu);
    for (int i = 0; i < parts->cnt; i++) {
        struct mb_kafka_part *p = mb_kafka_part_get(bs, parts->elems[i].partition, false);
        if (p) {
            p->assigned = false;
            p->gen = ++bs->gen_counter;
            mb_kafka_part_reset(bs, p, -1);
        }
    }
    int left = mb_kafka_assigned(bs);
    pthread_mutex_unlock(&bs->mu);
    /* A subscription keeping partitions (cooperative rebalance) consumes
     * on; one left with none waits for the group's next assignment. */
    if (bs->conn != MB_KAFKA_CONN_FATAL && !atomic_load(&bs->stop)) {
        if (left > 0) {
            mb_sub_state(bs->sub, MSGBUS_STATE_UP, "assigned %d partition%s", left,
                         left == 1 ? "" : "s");
        } else {
            mb_sub_state(bs->sub, MSGBUS_STATE_RECONNECTING, "%s%d partition%s: waiting for "
                         "the group's new assignment",
                         lost ? "assignment lost (session timed out or fenced): "
                              : "rebalancing: revoked ", parts->cnt, parts->cnt == 1 ? "" : "s");
        }
    }
    size_t dropped = mb_sub_drop(bs->sub, mb_kafka_drop_pred, parts);
    if (dropped)
        mb_log(MSGBUS_LOG_INFO, "kafka: rebalance of group '%s' dropped %zu queued messages",
               bs->group_id, dropped);
    if (cooperative) {
        rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
        if (e)
            rd_kafka_error_destroy(e);
    } else {
        rd_kafka_assign(rk, NULL);
    }
}

/* ---- receiving ----------------------------------------------------------- */

/* Bytes a record's CloudEvents type and source take as C strings (see
 * mb_kafka_deliver). Parsing the headers here is not extra work:
 * librdkafka keeps them parsed for mb_kafka_convert. */
static size_t mb_kafka_ce_room(rd_kafka_message_t *rkm)
{
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(rkm, &h) != RD_KAFKA_RESP_ERR_NO_ERROR || !h)
        return 0;
    size_t room = 0;
    const void *v;
    size_t vn;
    if (rd_kafka_header_get_last(h, "ce_type", &v, &vn) == RD_KAFKA_RESP_ERR_NO_ERROR)
        room += vn + 1;
    if (rd_kafka_header_get_last(h, "ce_source", &v, &vn) == RD_KAFKA_RESP_ERR_NO_ERROR)
        room += vn + 1;
    return room;
}

/* Turns a record into a new received message, or NULL. With `held` the
 * message holds a reference on held->batch (dropped by mb_kafka_release,
 * also on failure here) and either copies the payload to `slab` (then the
 * caller keeps the record) or, `slab` NULL, borrows the payload and takes
 * the record over (destroyed by mb_kafka_release, also on failure here).
 * Without `held` the payload is copied to a malloc of its own and the
 * caller keeps the record. */
static msgbus_msg_t *mb_kafka_convert(struct mb_backend_sub *bs, rd_kafka_message_t *rkm,
                                      struct mb_kafka_held *held, unsigned char *slab,
                                      char **ce_area, size_t *ce_left)
{
    /* mb_kafka_deliver took the ref. With `held`, the message itself lives
     * in the batch too, next to held[] (see mb_kafka_deliver). */
    msgbus_msg_t *storage = held ? &held->batch->msgs[held - held->batch->held] : NULL;
    msgbus_msg_t *m = mb_msg_new_received_in(bs->sub, storage);
    if (!m) {
        mb_sub_unref_batch(bs->sub, 1);
        if (held) {
            if (!slab)
                rd_kafka_message_destroy(rkm);
            mb_kafka_batch_drop(held->batch);
        }
        return NULL;
    }
    if (held) {
        held->rkm = slab ? NULL : rkm;
        m->backend_data = held;
        if (rkm->payload && rkm->len) {
            if (slab)
                memcpy(slab, rkm->payload, rkm->len);
            m->payload = slab ? slab : rkm->payload;
            m->len = rkm->len;
            m->payload_borrowed = true;
        }
    } else if (msgbus_msg_set_payload(m, rkm->payload, rkm->len) != MSGBUS_OK) {
        goto fail;
    }
    if (rkm->key && msgbus_msg_set_key(m, rkm->key, rkm->key_len) != MSGBUS_OK)
        goto fail;
    /* The record's timestamp first: a ce_time header (the event's own
     * time) replaces it while the headers are decoded, then a structured
     * CloudEvent's attributes and data replace the envelope's. */
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(rkm, &tstype);
    m->timestamp = ts >= 0 ? ts : mb_now_ms();
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
        hdrs = NULL; /* none (__NOENT) */
    /* The CloudEvents strings go to the batch's block while it has room
     * (mb_kafka_deliver counted them). */
    if (ce_area) {
        m->ce_spare = *ce_area;
        m->ce_spare_len = *ce_left;
    }
    msgbus_err_t e = mb_kafka_decode_headers(m, hdrs);
    if (ce_area) {
        *ce_area = m->ce_spare;
        *ce_left = m->ce_spare_len;
        m->ce_spare = NULL;
        m->ce_spare_len = 0;
    }
    if (e != MSGBUS_OK || mb_msg_ce_unpack(m) != MSGBUS_OK)
        goto fail;
    /* Everything of the headers is copied: a record kept for its payload
     * lets go of them here, on the thread whose allocator made them
     * (freeing them on the application's thread with the record costs
     * each free a trip to this thread's arena). */
    if (held && !slab && hdrs) {
        rd_kafka_headers_t *own = NULL;
        if (rd_kafka_message_detach_headers(rkm, &own) == RD_KAFKA_RESP_ERR_NO_ERROR && own)
            rd_kafka_headers_destroy(own);
    }
    m->partition = rkm->partition;
    m->offset = rkm->offset;
    m->has_position = true;
    return m;
fail:
    msgbus_msg_free(m);
    return NULL;
}

/* Converts and registers one batch, then hands it to the core in one push. */
static void mb_kafka_deliver(struct mb_backend_sub *bs, rd_kafka_message_t **rkms, size_t n)
{
    msgbus_msg_t *first = NULL, **link = &first;
    size_t count = 0;
    msgbus_msg_t *conv[MB_KAFKA_BATCH];
    /* The batch: held[] and the slab for the short payloads. Out of
     * memory for it: copy each payload to a malloc of its own instead. */
    size_t slab_len = 0, records = 0, ce_len = 0;
    for (size_t i = 0; i < n; i++) {
        if (rkms[i]->err)
            continue;
        records++;
        if (rkms[i]->len < MB_KAFKA_BORROW_MIN)
            slab_len += rkms[i]->len;
        /* Room for every record's CloudEvents strings as long as the
         * first's (a stream's are usually all alike; a longer one is
         * malloc'd). Only the first record's headers are parsed here:
         * parsing them all before converting any would make every
         * allocation of the batch's headers miss the allocator's
         * per-thread cache, which serves each record's parse from the
         * previous record's just-freed headers. */
        if (!ce_len)
            ce_len = mb_kafka_ce_room(rkms[i]) + 8;
    }
    ce_len *= records;
    /* One block for the batch: held[n], the n message structs (made on
     * this thread, freed on the application's: one malloc and one
     * cross-thread free per batch instead of per message), the slab. */
    struct mb_kafka_batch *b =
        malloc(sizeof *b + n * (sizeof b->held[0] + sizeof(msgbus_msg_t)) + slab_len + ce_len);
    unsigned char *slab = NULL;
    char *ce_area = NULL;
    size_t ce_left = 0;
    if (b) {
        b->msgs = (msgbus_msg_t *)(void *)&b->held[n];
        slab = (unsigned char *)&b->msgs[n];
        ce_area = (char *)slab + slab_len;
        ce_left = ce_len;
        /* One reference per record, + ours until the loop is done: taken
         * at once, as the sub's below (the application's thread drops
         * them one by one as it frees messages). */
        atomic_init(&b->refs, (long)records + 1);
        b->owner = bs->rkref;
        atomic_fetch_add(&b->owner->refs, 1);
    }
    if (records) {
        mb_sub_ref_batch(bs->sub, (long)records);
        mb_kafka_sub_alive(bs);
    }
    for (size_t i = 0; i < n; i++) {
        rd_kafka_message_t *rkm = rkms[i];
        conv[i] = NULL;
        bool taken = false;
        if (rkm->err) {
            if (rkm->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                mb_log(MSGBUS_LOG_WARN, "kafka: consumer of '%s' (group '%s'): %s", bs->topic,
                       bs->group_id, rd_kafka_message_errstr(rkm));
        } else {
            int32_t part = rkm->partition;
            int64_t off = rkm->offset;
            struct mb_kafka_held *held = NULL;
            unsigned char *copy_to = NULL;
            if (b) {
                held = &b->held[i];
                held->batch = b;
                if (rkm->len >= MB_KAFKA_BORROW_MIN) {
                    taken = true;
                } else {
                    copy_to = slab;
                    slab += rkm->len;
                }
            }
            conv[i] = mb_kafka_convert(bs, rkm, held, copy_to, b ? &ce_area : NULL, &ce_left);
            if (!conv[i])
                mb_log(MSGBUS_LOG_ERROR, "kafka: out of memory converting %s[%d]@%lld; it will "
                       "be delivered again after a restart", bs->topic, (int)part,
                       (long long)off);
        }
        if (!taken)
            rd_kafka_message_destroy(rkm);
    }
    if (b)
        mb_kafka_batch_drop(b);
    pthread_mutex_lock(&bs->mu);
    for (size_t i = 0; i < n; i++) {
        msgbus_msg_t *m = conv[i];
        if (!m)
            continue;
        struct mb_kafka_part *p = mb_kafka_part_get(bs, m->partition, false);
        /* A record of a partition no longer ours, or older than the
         * assignment's start, is not delivered. */
        if (!p || !p->assigned || (p->next >= 0 && m->offset < p->next) ||
            !mb_kafka_part_push(p, m->offset)) {
            conv[i] = NULL;
            pthread_mutex_unlock(&bs->mu);
            msgbus_msg_free(m);
            pthread_mutex_lock(&bs->mu);
            continue;
        }
        m->tag = p->gen;
        bs->unacked++;
        *link = m;
        link = &m->next;
        count++;
    }
    pthread_mutex_unlock(&bs->mu);
    *link = NULL;
    if (count)
        mb_sub_push(bs->sub, first, count);
}

/* Stops or restarts fetching on the whole current assignment. librdkafka
 * resumes a paused partition from the position the application consumed,
 * so nothing is skipped. Subscription thread only. */
static void mb_kafka_pause(struct mb_backend_sub *bs, bool pause)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rd_kafka_assignment(bs->rk, &l) != RD_KAFKA_RESP_ERR_NO_ERROR || !l)
        return;
    rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(bs->rk, l)
                                    : rd_kafka_resume_partitions(bs->rk, l);
    if (err)
        mb_log(MSGBUS_LOG_WARN, "kafka: %s fetching for group '%s' failed: %s",
               pause ? "pausing" : "resuming", bs->group_id, rd_kafka_err2str(err));
    else
        bs->fetch_paused = pause;
    rd_kafka_topic_partition_list_destroy(l);
}

/* max_unacked messages are unacked: stop taking more. A working
 * application drains half of them in milliseconds, so first just wait for
 * that (librdkafka keeps prefetching meanwhile, within its own queue
 * limits). When the application makes no room for a while, pause the
 * partitions instead, so the thread goes back to serving rebalances.
 * (Pausing every time would throw away librdkafka's prefetched data and
 * refetch it: several times slower.) Subscription thread only. */
static void mb_kafka_wait_for_room(struct mb_backend_sub *bs)
{
    size_t half = (size_t)bs->be->max_unacked / 2;
    int64_t give_up = mb_mono_ms() + 1000;
    bool room;
    pthread_mutex_lock(&bs->mu);
    bs->waiting_room = true;
    while (!(room = bs->unacked <= half) && !atomic_load(&bs->stop) && mb_mono_ms() < give_up) {
        struct timespec dl;
        mb_deadline(&dl, 20);
        pthread_cond_timedwait(&bs->room, &bs->mu, &dl);
    }
    bs->waiting_room = false;
    pthread_mutex_unlock(&bs->mu);
    if (!room && !atomic_load(&bs->stop)) {
        bs->flow_paused = true;
        if (!bs->fetch_paused)
            mb_kafka_pause(bs, true);
    }
}

/* Applies what the application asked last (ops->pause) and flow control
 * want together: fetching stops while either says so. Subscription thread
 * only. */
static void mb_kafka_fetch_sync(struct mb_backend_sub *bs)
{
    bool user = atomic_load(&bs->want_pause);
    if (user != bs->user_paused) {
        bs->user_paused = user;
        mb_log(MSGBUS_LOG_DEBUG, "kafka: group '%s' on '%s': %s by the application",
               bs->group_id, bs->topic, user ? "paused" : "resumed");
    }
    bool want = bs->flow_paused || bs->user_paused;
    if (want != bs->fetch_paused)
        mb_kafka_pause(bs, want);
}

/* ops->pause: the subscription's thread does it (only it calls into its
 * consumer), within one poll: the request is a flag, and the poll it may
 * be waiting in is cut short. Never blocks on the network. What was
 * fetched before the pause took effect stays queued in the core, which
 * holds it back until resume; nothing is settled or dropped. */
msgbus_err_t mb_kafka_sub_pause(struct mb_backend_sub *bs, bool paused)
{
    atomic_store(&bs->want_pause, paused);
    pthread_mutex_lock(&bs->mu);
    if (bs->wake_q)
        rd_kafka_queue_yield(bs->wake_q);
    pthread_mutex_unlock(&bs->mu);
    return MSGBUS_OK;
}

/* Finishes a consumer close that the subscription stopped waiting for:
 * serves the close queue (r->closeq) until librdkafka has left the group,
 * then drops the subscription's reference `r` on the handle. Runs on a
 * detached thread of its own, touching nothing but the handle and its
 * queue: the subscription, the core's sub and the bus may be gone. Served
 * as events, librdkafka calls none of the subscription's callbacks; a
 * revocation is answered here. (A close once started cannot be abandoned: destroying the
 * handle in the middle of it deadlocked inside rd_kafka_destroy, 2.0.2.) */
static void *mb_kafka_reap_main(void *arg)
{
    mb_thread_name("msgbus-kreap");
    struct mb_kafka_rkref *r = arg; /* the subscription's reference */
    while (!rd_kafka_consumer_closed(r->rk)) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(r->closeq, 200);
        if (ev && rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
            if (strcmp(rd_kafka_rebalance_protocol(r->rk), "COOPERATIVE") == 0) {
                rd_kafka_error_t *e =
                    rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS
                        ? rd_kafka_incremental_unassign(r->rk,
                                                        rd_kafka_event_topic_partition_list(ev))
                        : NULL;
                if (e)
                    rd_kafka_error_destroy(e);
            } else {
                rd_kafka_assign(r->rk, NULL);
            }
        }
        if (ev)
            rd_kafka_event_destroy(ev);
    }
    /* Before the handle goes: events still queued there hold references
     * that rd_kafka_destroy waits for. */
    rd_kafka_queue_destroy(r->closeq);
    r->closeq = NULL;
    mb_kafka_rkref_drop(r);
    return NULL;
}

/* The subscription's last steps, bounded by close_deadline: commit the
 * acked prefix, then leave the group (rd_kafka_consumer_close_queue,
 * served here; the revocation it brings commits and drops as any other).
 * rd_kafka_consumer_close and a synchronous commit both wait without bound
 * while the brokers are down (~45 s seen against Kafka). When librdkafka
 * already reports every broker down, the subscription does not start
 * leaving the group (the group notices the member is gone after
 * session.timeout.ms); when the deadline passes while it is leaving, a
 * thread of its own finishes that (mb_kafka_reap_main). Either way the
 * messages after the last commit that got through are delivered again,
 * never lost. Returns the close queue when the close must be finished
 * that way, else NULL. */
static rd_kafka_queue_t *mb_kafka_close_consumer(struct mb_backend_sub *bs)
{
    if (atomic_load(&bs->brokers_down) && mb_kafka_wait_ms(bs) > 0) {
        /* The flag may be stale (brokers back, nothing fetched since): one
         * short metadata request tells. */
        const struct rd_kafka_metadata *md = NULL;
        int ms = mb_kafka_wait_ms(bs);
        if (rd_kafka_metadata(bs->rk, 0, NULL, &md, ms < 300 ? ms : 300) ==
            RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (md->broker_cnt > 0)
                atomic_store(&bs->brokers_down, false);
            rd_kafka_metadata_destroy(md);
        }
    }
    int64_t t0 = mb_mono_ms();
    mb_kafka_commit(bs, NULL, true);
    rd_kafka_queue_t *q = NULL;
    if (!mb_kafka_closing_give_up(bs) && (q = rd_kafka_queue_new(bs->rk)) != NULL) {
        rd_kafka_error_t *err = rd_kafka_consumer_close_queue(bs->rk, q);
        if (err) {
            mb_log(MSGBUS_LOG_WARN, "kafka: group '%s' on '%s': leaving the group: %s",
                   bs->group_id, bs->topic, rd_kafka_error_string(err));
            rd_kafka_error_destroy(err);
        }
        while (!err && !rd_kafka_consumer_closed(bs->rk) && !mb_kafka_closing_give_up(bs)) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 50);
            if (!ev)
                continue;
            /* Served as an event on this queue, the revocation is handed
             * to the same callback as during the subscription's life. */
            if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
                mb_kafka_rebalance_cb(bs->rk, rd_kafka_event_error(ev),
                                      rd_kafka_event_topic_partition_list(ev), bs);
            rd_kafka_event_destroy(ev);
        }
        if (err || rd_kafka_consumer_closed(bs->rk)) {
            /* Now, not after the handle: events still queued here hold
             * references that rd_kafka_destroy would wait for. */
            rd_kafka_queue_destroy(q);
            return NULL;
        }
    }
    mb_log(atomic_load(&bs->brokers_down) ? MSGBUS_LOG_WARN : MSGBUS_LOG_INFO,
           "kafka: group '%s' on '%s': closed after %lld ms without %s (%s); messages after its "
           "last commit will be delivered again", bs->group_id, bs->topic,
           (long long)(mb_mono_ms() - t0), q ? "having left the group yet" : "leaving the group",
           atomic_load(&bs->brokers_down) ? "all brokers down" : "close_timeout_ms");
    return q;
}

static void *mb_kafka_consumer_main(void *arg)
{
    mb_thread_name("msgbus-ksub");
    struct mb_backend_sub *bs = arg;
    rd_kafka_queue_t *q = rd_kafka_queue_get_consumer(bs->rk);
    pthread_mutex_lock(&bs->mu);
    bs->wake_q = q;
    pthread_mutex_unlock(&bs->mu);
    rd_kafka_message_t *rkms[MB_KAFKA_BATCH];
    while (!atomic_load(&bs->stop)) {
        /* Block for the first message (this also serves rebalances), then
         * take whatever else is already there without waiting. */
        /* While flow control pauses, come back soon to resume once acks
         * catch up. */
        rd_kafka_message_t *rkm = rd_kafka_consumer_poll(bs->rk, bs->flow_paused ? 5 : 100);
        size_t n = 0;
        if (rkm) {
            rkms[n++] = rkm;
            ssize_t more = rd_kafka_consume_batch_queue(q, 0, rkms + 1, MB_KAFKA_BATCH - 1);
            if (more > 0)
                n += (size_t)more;
        }
        if (n)
            mb_kafka_deliver(bs, rkms, n);
        mb_kafka_sub_probe(bs);
        pthread_mutex_lock(&bs->mu);
        bool due = bs->dirty && mb_mono_ms() - bs->last_commit_ms >= bs->be->commit_interval_ms;
        size_t unacked = bs->unacked;
        pthread_mutex_unlock(&bs->mu);
        if (due)
            mb_kafka_commit(bs, NULL, false);
        size_t max = (size_t)bs->be->max_unacked;
        if (!bs->flow_paused && unacked >= max)
            mb_kafka_wait_for_room(bs);
        else if (bs->flow_paused && unacked <= max / 2)
            bs->flow_paused = false;
        mb_kafka_fetch_sync(bs);
    }
    pthread_mutex_lock(&bs->mu);
    bs->wake_q = NULL;
    pthread_mutex_unlock(&bs->mu);
    rd_kafka_queue_destroy(q);
    bs->reap_q = mb_kafka_close_consumer(bs);
    return NULL;
}

/* ---- settle ------------------------------------------------------------- */

msgbus_err_t mb_kafka_settle(struct mb_backend_sub *bs, msgbus_msg_t *m, enum mb_settle how)
{
    pthread_mutex_lock(&bs->mu);
    struct mb_kafka_part *p = mb_kafka_part_get(bs, m->partition, false);
    if (!p || !p->assigned || p->gen != m->tag) {
        pthread_mutex_unlock(&bs->mu);
        /* Documented: the partition moved in a rebalance; its new owner
         * gets the message again from the last commit point. */
        mb_log(MSGBUS_LOG_DEBUG, "kafka: %s of %s[%d]@%lld ignored: the partition was revoked",
               how == MB_SETTLE_ACK ? "ack" : "nack", bs->topic, (int)m->partition,
               (long long)m->offset);
        return MSGBUS_OK;
    }
    if (how == MB_SETTLE_ACK) {
        int64_t before = mb_kafka_part_point(p);
        if (mb_kafka_part_ack(p, m->offset) && --bs->unacked <= (size_t)bs->be->max_unacked / 2 &&
            bs->waiting_room)
            pthread_cond_signal(&bs->room);
        if (mb_kafka_part_point(p) != before)
            bs->dirty = true;
        pthread_mutex_unlock(&bs->mu);
        return MSGBUS_OK;
    }
    pthread_mutex_unlock(&bs->mu);

    /* nack: deliver a copy again right away with attempt + 1. The offset
     * stays in flight (uncommitted) until that copy is acked, and only
     * this partition's commit point waits for it. */
    msgbus_msg_t *again = mb_msg_new_received(bs->sub);
    if (!again)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory redelivering a nacked message");
    msgbus_err_t e = msgbus_msg_set_payload(again, m->payload, m->len);
    if (!e && m->key)
        e = msgbus_msg_set_key(again, m->key, m->key_len);
    for (size_t i = 0; !e && i < m->nheaders; i++)
        e = mb_msg_put_header(again, m->headers[i].name, strlen(m->headers[i].name),
                              m->headers[i].value, strlen(m->headers[i].value));
    if (!e && m->id) {
        char *id = mb_strdup(m->id);
        if (!id)
            e = MSGBUS_ERR_NOMEM;
        else
            mb_msg_take_id(again, id);
    }
    if (!e && !mb_ce_copy(again, m)) /* the same event: type, source, subject */
        e = MSGBUS_ERR_NOMEM;
    if (e) {
        msgbus_msg_free(again);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory redelivering a nacked message");
    }
    again->timestamp = m->timestamp;
    again->partition = m->partition;
    again->offset = m->offset;
    again->has_position = m->has_position;
    again->tag = m->tag;
    again->attempt = m->attempt + 1;
    again->next = NULL;
    mb_sub_push(bs->sub, again, 1);
    return MSGBUS_OK;
}

/* ---- subscribe / unsubscribe ------------------------------------------- */

static void mb_kafka_sub_free(struct mb_backend_sub *bs)
{
    for (size_t i = 0; i < bs->nparts; i++) {
        free(bs->parts[i].offs);
        free(bs->parts[i].acked);
    }
    free(bs->parts);
    pthread_cond_destroy(&bs->cv);
    pthread_cond_destroy(&bs->room);
    pthread_mutex_destroy(&bs->mu);
    free(bs);
}

msgbus_err_t mb_kafka_subscribe(struct mb_backend *be, msgbus_sub_t *sub,
                                struct mb_backend_sub **out)
{
    const char *topic = mb_sub_topic(sub);
    msgbus_err_t e;
    if (be->create_topics) {
        if ((e = mb_kafka_ensure_topic(be, topic)) != MSGBUS_OK)
            return e;
    }
    struct mb_backend_sub *bs = calloc(1, sizeof *bs);
    if (!bs)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    bs->be = be;
    bs->sub = sub;
    bs->topic = topic;
    bs->group = mb_sub_group(sub);
    pthread_mutex_init(&bs->mu, NULL);
    mb_cond_init(&bs->cv);
    mb_cond_init(&bs->room);
    if (bs->group) {
        snprintf(bs->group_id, sizeof bs->group_id, "%s", bs->group);
    } else {
        char uuid[37];
        mb_uuid7(uuid);
        snprintf(bs->group_id, sizeof bs->group_id, "msgbus-broadcast-%s", uuid);
    }
    bs->rk = mb_kafka_consumer_new(be, bs->group_id, bs, mb_kafka_rebalance_cb,
                                   mb_kafka_offset_commit_cb, mb_kafka_consumer_error_cb);
    if (!bs->rk) {
        mb_kafka_sub_free(bs);
        return MSGBUS_ERR_CONFIG;
    }
    /* The consumer's own view of the topic first. Without create_topics,
     * a missing topic is an error now. With it, the topic may be a moment
     * old: on a cluster the broker this consumer asks may not know it yet,
     * and a subscription that starts with "Subscribed topic not
     * available" waits for librdkafka's next metadata refresh (minutes),
     * so wait here until the consumer sees it (connect_timeout_ms). */
    int nparts;
    if ((e = mb_kafka_topic_partitions(be, bs->rk, topic, be->create_topics, &nparts)) !=
        MSGBUS_OK) {
        mb_kafka_consumer_destroy(bs->rk);
        mb_kafka_sub_free(bs);
        return e;
    }
    rd_kafka_poll_set_consumer(bs->rk);
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tl, topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t err = rd_kafka_subscribe(bs->rk, tl);
    rd_kafka_topic_partition_list_destroy(tl);
    if (err) {
        mb_kafka_consumer_destroy(bs->rk);
        mb_kafka_sub_free(bs);
        return mb_error(mb_kafka_err(err), "kafka: subscribing to '%s': %s", topic,
                        rd_kafka_err2str(err));
    }
    bs->last_commit_ms = mb_mono_ms();
    bs->rkref = malloc(sizeof *bs->rkref);
    if (!bs->rkref) {
        mb_kafka_consumer_destroy(bs->rk);
        mb_kafka_sub_free(bs);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    }
    bs->rkref->rk = bs->rk;
    bs->rkref->closeq = NULL;
    atomic_init(&bs->rkref->refs, 1);
    if (pthread_create(&bs->thread, NULL, mb_kafka_consumer_main, bs) != 0) {
        mb_kafka_consumer_destroy(bs->rk);
        free(bs->rkref);
        mb_kafka_sub_free(bs);
        return mb_error(MSGBUS_ERR_INTERNAL, "kafka: cannot start the consumer thread");
    }
    bs->thread_started = true;

    struct timespec deadline;
    mb_deadline(&deadline, be->subscribe_timeout_ms);
    pthread_mutex_lock(&bs->mu);
    while (!bs->ready)
        if (pthread_cond_timedwait(&bs->cv, &bs->mu, &deadline) != 0)
            break;
    bool ready = bs->ready;
    pthread_mutex_unlock(&bs->mu);
    if (!ready) {
        mb_kafka_unsubscribe(bs);
        return mb_error(MSGBUS_ERR_TIMEOUT,
                        "kafka: subscribing to '%s' as group '%s': no partition assignment "
                        "within %ld ms (subscribe_timeout_ms)",
                        topic, bs->group ? bs->group : "(broadcast)", be->subscribe_timeout_ms);
    }
    *out = bs;
    return MSGBUS_OK;
}

void mb_kafka_unsubscribe(struct mb_backend_sub *bs)
{
    /* Written before the store of stop, which publishes it to the thread. */
    bs->close_deadline = mb_bus_close_deadline(bs->be->bus, bs->be->close_timeout_ms);
    atomic_store(&bs->stop, true);
    if (bs->thread_started)
        pthread_join(bs->thread, NULL);
    if (bs->reap_q) { /* the close goes on without us */
        bs->rkref->closeq = bs->reap_q;
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, mb_kafka_reap_main, bs->rkref) != 0) {
            mb_log(MSGBUS_LOG_ERROR, "kafka: group '%s': no thread to finish the consumer close "
                   "on; waiting for it here", bs->group_id);
            mb_kafka_reap_main(bs->rkref);
        }
        pthread_attr_destroy(&attr);
        bs->rkref = NULL; /* the reaper drops it */
    }
    /* Destroys the handle now, or when the last borrowed record goes. */
    if (bs->rkref)
        mb_kafka_rkref_drop(bs->rkref);
    else if (!bs->thread_started)
        mb_kafka_consumer_destroy(bs->rk);
    mb_kafka_sub_free(bs);
}

/* ---- stats ---------------------------------------------------------------- */

/* ops->sub_stats: for each partition assigned to this subscription, lag =
 * high watermark - committed offset, summed into "lag". Committed: the
 * group's committed offset as the coordinator has it (rd_kafka_committed;
 * msgbus commits the acked prefix every commit_interval_ms, so it trails
 * the acks by about that much); a broadcast subscription commits nothing
 * and counts from its own acked position instead. High watermark: asked
 * of the partition leaders now (one ListOffsets round trip for the whole
 * assignment, rd_kafka_offsets_for_times with "latest", through the
 * producer), not librdkafka's
 * cached figure, which only fetch responses refresh and so goes stale
 * while the subscription is paused or the brokers are down. Both requests
 * together take at most timeout_ms; when either fails or runs out of time
 * "lag" is left out and lag_detail says why in "error". Runs on the thread
 * asking for stats: the subscription's thread is never waited for. */
void mb_kafka_sub_stats(struct mb_backend_sub *bs, json_t *sub, int timeout_ms)
{
    int64_t deadline = mb_mono_ms() + (timeout_ms > 0 ? timeout_ms : 1);
    rd_kafka_topic_partition_list_t *committed = rd_kafka_topic_partition_list_new(8);
    rd_kafka_topic_partition_list_t *ends = rd_kafka_topic_partition_list_new(8);
    int64_t *acked = NULL;
    size_t n = 0;
    pthread_mutex_lock(&bs->mu);
    if (bs->nparts)
        acked = malloc(bs->nparts * sizeof *acked);
    bool oom = bs->nparts && !acked;
    for (size_t i = 0; acked && i < bs->nparts; i++) {
        if (!bs->parts[i].assigned)
            continue;
        acked[n++] = mb_kafka_part_point(&bs->parts[i]);
        rd_kafka_topic_partition_list_add(committed, bs->topic, (int32_t)i)->offset =
            RD_KAFKA_OFFSET_INVALID;
        /* "latest" as a timestamp: ListOffsets answers the end offset. */
        rd_kafka_topic_partition_list_add(ends, bs->topic, (int32_t)i)->offset =
            RD_KAFKA_OFFSET_END;
    }
    pthread_mutex_unlock(&bs->mu);
    json_t *detail = json_object();
    json_t *arr = json_array();
    const char *error = NULL;
    char ebuf[256];
    if (n > 0 && bs->group) {
        int64_t left = deadline - mb_mono_ms();
        rd_kafka_resp_err_t err =
            left > 0 ? rd_kafka_committed(bs->rk, committed, (int)left) : RD_KAFKA_RESP_ERR__TIMED_OUT;
        if (err) {
            snprintf(ebuf, sizeof ebuf, "committed offsets: %s", rd_kafka_err2str(err));
            error = ebuf;
        }
    }
    if (n > 0 && !error) {
        int64_t left = deadline - mb_mono_ms();
        /* Asked through the producer: on the consumer's own connection the
         * request queued behind its long-poll fetch (fetch.wait.max.ms,
         * 500 ms each time, measured). */
        rd_kafka_resp_err_t err = left > 0 ? rd_kafka_offsets_for_times(bs->be->producer, ends,
                                                                        (int)left)
                                           : RD_KAFKA_RESP_ERR__TIMED_OUT;
        if (err) {
            snprintf(ebuf, sizeof ebuf, "end offsets: %s", rd_kafka_err2str(err));
            error = ebuf;
        }
    }
    int64_t total = 0;
    bool known = !error && !oom;
    for (size_t k = 0; !error && k < n; k++) {
        rd_kafka_topic_partition_t *c = &committed->elems[k], *e = &ends->elems[k];
        /* No commit yet (or a broadcast subscription): its own acked position. */
        int64_t pos = bs->group && c->offset >= 0 && !c->err ? c->offset : acked[k];
        int64_t hw = e->err ? -1 : e->offset;
        json_t *p = json_object();
        json_object_set_new(p, "partition", json_integer(c->partition));
        json_object_set_new(p, "high_watermark", hw >= 0 ? json_integer(hw) : json_null());
        json_object_set_new(p, "committed", pos >= 0 ? json_integer(pos) : json_null());
        json_object_set_new(p, "acked", acked[k] >= 0 ? json_integer(acked[k]) : json_null());
        if (hw >= 0 && pos >= 0) {
            int64_t lag = hw > pos ? hw - pos : 0;
            total += lag;
            json_object_set_new(p, "lag", json_integer(lag));
        } else {
            known = false;
            json_object_set_new(p, "lag", json_null());
        }
        json_array_append_new(arr, p);
    }
    json_object_set_new(detail, "partitions", arr);
    if (error || oom)
        json_object_set_new(detail, "error", json_string(oom ? "out of memory" : error));
    if (known)
        json_object_set_new(sub, "lag", json_integer(total));
    json_object_set_new(sub, "lag_detail", detail);
    free(acked);
    rd_kafka_topic_partition_list_destroy(committed);
    rd_kafka_topic_partition_list_destroy(ends);
}
