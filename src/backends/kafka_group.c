/*
 * kafka_group.c — the Kafka backend's consumer-group plumbing shared by
 * subscriptions and declare: creating consumer handles with msgbus's
 * settings, reading committed and end offsets through the transient errors
 * that follow topic creation or a broker restart, and declare's fixing of a
 * group's starting positions.
 */
#include "backends/kafka.h"

#include <stdio.h>
#include <time.h>

/* ---- offsets ---------------------------------------------------------------- */

/* Errors right after a topic is created or a broker restarts: leaders and
 * coordinators move; asking again shortly succeeds. */
static bool mb_kafka_retriable(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS:
    case RD_KAFKA_RESP_ERR_NOT_COORDINATOR:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
        return true;
    default:
        return false;
    }
}

static void mb_kafka_nap(void)
{
    struct timespec ts = {0, 100 * 1000000};
    nanosleep(&ts, NULL);
}

/* One request's wait: what is left of the deadline, but with `stop` at
 * most MB_KAFKA_STOP_SLICE_MS, so a closing subscription notices *stop
 * between requests (a request in flight cannot be cancelled). */
#define MB_KAFKA_STOP_SLICE_MS 250
static int mb_kafka_slice(int64_t deadline, const _Atomic bool *stop)
{
    int64_t left = deadline - mb_mono_ms();
    if (left < 100)
        left = 100;
    if (stop && left > MB_KAFKA_STOP_SLICE_MS)
        left = MB_KAFKA_STOP_SLICE_MS;
    return (int)left;
}

static bool mb_kafka_give_up(rd_kafka_resp_err_t err, int64_t deadline, const _Atomic bool *stop)
{
    return !err || !mb_kafka_retriable(err) || mb_mono_ms() >= deadline ||
           (stop && atomic_load(stop));
}

/* The partition's end offset, retrying transient errors up to timeout_ms. */
rd_kafka_resp_err_t mb_kafka_end_offset(rd_kafka_t *rk, const char *topic, int32_t partition,
                                        int timeout_ms, const _Atomic bool *stop, int64_t *hi)
{
    int64_t deadline = mb_mono_ms() + timeout_ms, lo = 0;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
            rk, topic, partition, &lo, hi, mb_kafka_slice(deadline, stop));
        if (mb_kafka_give_up(err, deadline, stop))
            return err;
        mb_kafka_nap();
    }
}

/* The group's committed offsets, retrying transient errors. */
rd_kafka_resp_err_t mb_kafka_committed(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts,
                                       int timeout_ms, const _Atomic bool *stop)
{
    int64_t deadline = mb_mono_ms() + timeout_ms;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_committed(rk, parts, mb_kafka_slice(deadline, stop));
        if (mb_kafka_give_up(err, deadline, stop))
            return err;
        mb_kafka_nap();
    }
}

/* Commits `offsets` and waits for the outcome up to timeout_ms, or until
 * give_up(arg) says so (looked at every 50 ms). A synchronous
 * rd_kafka_commit has no bound: it waited ~45 s for a
 * coordinator while the brokers were down. The request goes on when the
 * wait ends; its late outcome lands on a queue nobody reads and is
 * dropped with it. __TIMED_OUT when no outcome came in time. */
rd_kafka_resp_err_t mb_kafka_commit_wait(rd_kafka_t *rk,
                                         const rd_kafka_topic_partition_list_t *offsets,
                                         int timeout_ms, bool (*give_up)(void *), void *arg)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    if (!q)
        return RD_KAFKA_RESP_ERR__CRIT_SYS_RESOURCE;
    rd_kafka_resp_err_t err = rd_kafka_commit_queue(rk, offsets, q, NULL, NULL);
    int64_t deadline = mb_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    if (!err) {
        err = RD_KAFKA_RESP_ERR__TIMED_OUT;
        for (;;) {
            int64_t left = deadline - mb_mono_ms();
            /* Slices of 50 ms: `give_up` is looked at between them. */
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, (int)(left < 0 ? 0 : left > 50 ? 50 : left));
            if (ev) {
                bool done = rd_kafka_event_type(ev) == RD_KAFKA_EVENT_OFFSET_COMMIT;
                if (done)
                    err = rd_kafka_event_error(ev);
                rd_kafka_event_destroy(ev);
                if (done)
                    break;
            }
            if (mb_mono_ms() >= deadline || (give_up && give_up(arg)))
                break;
        }
    }
    rd_kafka_queue_destroy(q);
    return err;
}

static const char *const mb_kafka_consumer_defaults[] = {
    "enable.auto.commit", "false", "enable.auto.offset.store", "false",
    /* Only used when a committed offset is out of range (deleted by
     * retention): start at the oldest kept, never skip. New groups are
     * positioned explicitly at assignment. */
    "auto.offset.reset", "earliest",
    /* librdkafka 2.0.2 stops fetching a partition whose local queue holds
     * queued.min.messages (default 100,000) and looks again only on its
     * broker thread's periodic wake-up: a stall of up to ~1 s whenever a
     * consumer is briefly slower than the fetcher. Memory stays bounded by
     * queued.max.messages.kbytes (64 MB), which becomes the limit. */
    "queued.min.messages", "1000000", NULL};

rd_kafka_t *mb_kafka_consumer_new(struct mb_backend *be, const char *group_id, void *opaque,
                                  mb_kafka_rebalance_fn rebalance_cb, mb_kafka_commit_fn commit_cb,
                                  mb_kafka_error_fn error_cb)
{
    rd_kafka_conf_t *conf = mb_kafka_conf_new(be, RD_KAFKA_CONSUMER, mb_kafka_consumer_defaults);
    if (!conf)
        return NULL;
    char errstr[512];
    if (rd_kafka_conf_set(conf, "group.id", group_id, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        mb_error(MSGBUS_ERR_CONFIG, "kafka: group id '%s': %s", group_id, errstr);
        return NULL;
    }
    if (rebalance_cb)
        rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
    if (commit_cb)
        rd_kafka_conf_set_offset_commit_cb(conf, commit_cb);
    if (error_cb)
        rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_opaque(conf, opaque);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        mb_error(MSGBUS_ERR_CONFIG, "kafka: cannot create a consumer: %s", errstr);
    }
    return rk;
}

/* ---- declare: fix a group's starting position --------------------------- */

/* Reads the committed offsets of `parts` and moves the partitions that have
 * none into `todo` with the partition's current end. */
static msgbus_err_t mb_kafka_uncommitted(rd_kafka_t *rk, const char *topic, const char *group,
                                         rd_kafka_topic_partition_list_t *parts,
                                         rd_kafka_topic_partition_list_t *todo, int timeout)
{
    rd_kafka_resp_err_t err = mb_kafka_committed(rk, parts, timeout, NULL);
    if (err)
        return mb_error(mb_kafka_err(err), "kafka: declare '%s' group '%s': reading committed "
                        "offsets: %s", topic, group, rd_kafka_err2str(err));
    for (int i = 0; i < parts->cnt; i++) {
        if (parts->elems[i].offset >= 0)
            continue;
        int64_t hi;
        /* A topic made a moment ago on a cluster: the broker this consumer
         * asks may not know the partition yet (or its leader moves). */
        int64_t until = mb_mono_ms() + timeout;
        for (;;) {
            err = mb_kafka_end_offset(rk, topic, parts->elems[i].partition, timeout, NULL, &hi);
            if ((err != RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION &&
                 err != RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC &&
                 err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
                 err != RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION &&
                 err != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE) ||
                mb_mono_ms() >= until)
                break;
            mb_kafka_nap();
        }
        if (err)
            return mb_error(mb_kafka_err(err), "kafka: declare '%s' group '%s': end offset of "
                            "partition %d: %s", topic, group, (int)parts->elems[i].partition,
                            rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_add(todo, topic, parts->elems[i].partition)->offset = hi;
    }
    return MSGBUS_OK;
}

/* For each partition without a committed offset for `group`, commits the
 * current end, so everything published after declare returns is kept for
 * the group. Partitions that already have one are left alone.
 *
 * A group with live members refuses a commit from outside it. A msgbus
 * member commits its start position as soon as it is assigned, so declare
 * waits (up to connect_timeout_ms) until every partition has a committed
 * offset: returning before that would let a message published right after
 * declare land below the end a joining member is about to read, and the
 * group would never see it. */
msgbus_err_t mb_kafka_declare_group(struct mb_backend *be, const char *topic, const char *group)
{
    int n = 0;
    rd_kafka_t *rk = mb_kafka_consumer_new(be, group, NULL, NULL, NULL, NULL);
    if (!rk)
        return MSGBUS_ERR_CONFIG;
    /* Declare made the topic a moment ago (mb_kafka_ensure_topic): on a
     * cluster, the broker asked now may not know it yet, so "unknown" is
     * waited out (connect_timeout_ms), not an answer. */
    msgbus_err_t e = mb_kafka_topic_partitions(be, rk, topic, true, &n);
    if (e) {
        rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
        return e;
    }
    int timeout = (int)be->connect_timeout_ms;
    int64_t deadline = mb_mono_ms() + timeout;
    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(n);
    for (int i = 0; i < n; i++)
        rd_kafka_topic_partition_list_add(parts, topic, i);
    rd_kafka_topic_partition_list_t *todo = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (;;) {
        if (todo)
            rd_kafka_topic_partition_list_destroy(todo);
        todo = rd_kafka_topic_partition_list_new(n);
        if ((e = mb_kafka_uncommitted(rk, topic, group, parts, todo, timeout)) || todo->cnt == 0)
            break;
        int64_t left = deadline - mb_mono_ms();
        err = mb_kafka_commit_wait(rk, todo, (int)(left > 1000 ? left : 1000), NULL, NULL);
        if (err != RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID &&
            err != RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION &&
            err != RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS) {
            if (err)
                e = mb_error(mb_kafka_err(err), "kafka: declare '%s' group '%s': committing "
                             "start offsets: %s", topic, group, rd_kafka_err2str(err));
            break;
        }
        if (mb_mono_ms() >= deadline) {
            /* Members that are not msgbus's may keep positions of their own
             * without committing; theirs is the say. */
            mb_log(MSGBUS_LOG_WARN, "kafka: declare '%s' group '%s': the group is active (%s) "
                   "and %d partition(s) still have no committed offset after %d ms; left its "
                   "positions to its members", topic, group, rd_kafka_err2str(err), todo->cnt,
                   timeout);
            break;
        }
        mb_kafka_nap();
    }
    rd_kafka_topic_partition_list_destroy(todo);
    rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    return e;
}
