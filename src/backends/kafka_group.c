/*
 * kafka_group.c — the Kafka backend's consumer-group plumbing shared by
 * subscriptions and declare: creating consumer handles with msgbus's
 * settings, reading committed and end offsets through the transient errors
 * that follow topic creation or a broker restart, and declare's fixing of a
 * group's starting positions; start positions (start=, group reset), and
 * the admin requests inspect (kafka_inspect.c) shares.
 */
#include "backends/kafka.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

/* The partition's low and high watermarks, retrying transient errors up
 * to timeout_ms. */
rd_kafka_resp_err_t mb_kafka_watermarks(rd_kafka_t *rk, const char *topic, int32_t partition,
                                        int timeout_ms, const _Atomic bool *stop, int64_t *lo,
                                        int64_t *hi)
{
    int64_t deadline = mb_mono_ms() + timeout_ms;
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(
            rk, topic, partition, lo, hi, mb_kafka_slice(deadline, stop));
        if (mb_kafka_give_up(err, deadline, stop))
            return err;
        mb_kafka_nap();
    }
}

/* The partition's end offset, retrying transient errors up to timeout_ms. */
rd_kafka_resp_err_t mb_kafka_end_offset(rd_kafka_t *rk, const char *topic, int32_t partition,
                                        int timeout_ms, const _Atomic bool *stop, int64_t *hi)
{
    int64_t lo = 0;
    return mb_kafka_watermarks(rk, topic, partition, timeout_ms, stop, &lo, hi);
}

/* Offsets by time (ListOffsets, one request per leader for the whole
 * list), retrying transient errors of the request or of any partition.
 * A partition with no message at or after the time gets -1. */
static rd_kafka_resp_err_t mb_kafka_offsets_at(rd_kafka_t *rk,
                                               rd_kafka_topic_partition_list_t *parts,
                                               int64_t time_ms, int64_t deadline,
                                               const _Atomic bool *stop)
{
    for (;;) {
        for (int i = 0; i < parts->cnt; i++) {
            parts->elems[i].offset = time_ms;
            parts->elems[i].err = RD_KAFKA_RESP_ERR_NO_ERROR;
        }
        rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(rk, parts,
                                                             mb_kafka_slice(deadline, stop));
        for (int i = 0; !err && i < parts->cnt; i++)
            err = parts->elems[i].err;
        if (mb_kafka_give_up(err, deadline, stop))
            return err;
        mb_kafka_nap();
    }
}

rd_kafka_resp_err_t mb_kafka_start_offsets(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts,
                                           const struct mb_start *start, int timeout_ms,
                                           const _Atomic bool *stop)
{
    int64_t deadline = mb_mono_ms() + timeout_ms;
    rd_kafka_resp_err_t first = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int i = 0; i < parts->cnt; i++) {
        parts->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
        parts->elems[i].err = RD_KAFKA_RESP_ERR_NO_ERROR;
    }
    if (start->kind == MB_START_TIME && parts->cnt > 0) {
        rd_kafka_topic_partition_list_t *at = rd_kafka_topic_partition_list_copy(parts);
        first = mb_kafka_offsets_at(rk, at, start->time_ms, deadline, stop);
        for (int i = 0; i < parts->cnt; i++) {
            parts->elems[i].err = first ? first : at->elems[i].err;
            if (!parts->elems[i].err && at->elems[i].offset >= 0)
                parts->elems[i].offset = at->elems[i].offset;
        }
        rd_kafka_topic_partition_list_destroy(at);
        if (first)
            return first;
    }
    /* EARLIEST, LATEST, and a time later than every message: the end. */
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        if (tp->offset >= 0)
            continue;
        int64_t lo = 0, hi = 0, left = deadline - mb_mono_ms();
        rd_kafka_resp_err_t err = mb_kafka_watermarks(rk, tp->topic, tp->partition,
                                                      (int)(left > 100 ? left : 100), stop, &lo,
                                                      &hi);
        if (err) {
            tp->err = err;
            if (!first)
                first = err;
            continue;
        }
        tp->offset = start->kind == MB_START_EARLIEST ? lo : hi;
    }
    return first;
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
                if (done) {
                    err = rd_kafka_event_error(ev);
                    /* A request that went through can still refuse
                     * partitions one by one (a group with a new member:
                     * UNKNOWN_MEMBER_ID per partition). */
                    const rd_kafka_topic_partition_list_t *res =
                        rd_kafka_event_topic_partition_list(ev);
                    for (int i = 0; !err && res && i < res->cnt; i++)
                        err = res->elems[i].err;
                }
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

/* ---- admin requests: topics and groups as an operator sees them ---------- */

/* What is left of `deadline` for one request, at least 1 ms. */
int mb_kafka_left(int64_t deadline)
{
    int64_t left = deadline - mb_mono_ms();
    return left > 1 ? (int)(left < INT32_MAX ? left : INT32_MAX) : 1;
}

/* Every topic of the cluster (metadata for all topics: no topic handle is
 * made, so asking creates nothing even where the broker creates topics on
 * first use), retrying transient errors until `deadline`. */
msgbus_err_t mb_kafka_cluster_topics(rd_kafka_t *rk, int64_t deadline, const char *what,
                                            const struct rd_kafka_metadata **out)
{
    for (;;) {
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, out, mb_kafka_left(deadline));
        if (!err)
            return MSGBUS_OK;
        if (!mb_kafka_retriable(err) || mb_mono_ms() >= deadline)
            return mb_error(err == RD_KAFKA_RESP_ERR__TIMED_OUT ? MSGBUS_ERR_TIMEOUT
                                                                : mb_kafka_err(err),
                            "kafka: %s: asking the cluster for its topics: %s", what,
                            rd_kafka_err2str(err));
        mb_kafka_nap();
    }
}

static const struct rd_kafka_metadata_topic *mb_kafka_find_topic(const struct rd_kafka_metadata *md,
                                                                 const char *topic)
{
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0 &&
            md->topics[i].err != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
            return &md->topics[i];
    return NULL;
}

/* Kafka's own topics (__consumer_offsets, __transaction_state, ...). */
bool mb_kafka_internal_topic(const char *name)
{
    return strncmp(name, "__", 2) == 0;
}

rd_kafka_AdminOptions_t *mb_kafka_admin_options(rd_kafka_t *rk, rd_kafka_admin_op_t op,
                                                       int64_t deadline)
{
    char errstr[256];
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, op);
    if (ao)
        rd_kafka_AdminOptions_set_request_timeout(ao, mb_kafka_left(deadline), errstr,
                                                  sizeof errstr);
    return ao;
}

/* Waits on `q` for the result of one admin request of type `type` (other
 * events are dropped) until `deadline`; NULL when none came. */
static rd_kafka_event_t *mb_kafka_admin_wait(rd_kafka_queue_t *q, rd_kafka_event_type_t type,
                                             int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mb_mono_ms();
        if (left <= 0)
            return NULL;
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, (int)left);
        if (ev && rd_kafka_event_type(ev) == type)
            return ev;
        if (ev)
            rd_kafka_event_destroy(ev);
    }
}

/* How many members `group` has now (0 for a group that does not exist):
 * DescribeConsumerGroups through `rk`. */
static msgbus_err_t mb_kafka_group_members(rd_kafka_t *rk, const char *group, int64_t deadline,
                                           size_t *members)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *ao =
        mb_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS, deadline);
    const char *groups[1] = {group};
    rd_kafka_DescribeConsumerGroups(rk, groups, 1, ao, q);
    rd_kafka_event_t *ev = mb_kafka_admin_wait(q, RD_KAFKA_EVENT_DESCRIBECONSUMERGROUPS_RESULT,
                                               deadline);
    msgbus_err_t e = MSGBUS_OK;
    *members = 0;
    if (!ev) {
        e = mb_error(MSGBUS_ERR_TIMEOUT, "kafka: group '%s': no description of the group in "
                     "time (DescribeConsumerGroups)", group);
    } else if (rd_kafka_event_error(ev)) {
        e = mb_error(mb_kafka_err(rd_kafka_event_error(ev)), "kafka: describing group '%s': %s",
                     group, rd_kafka_event_error_string(ev));
    } else {
        size_t n = 0;
        const rd_kafka_ConsumerGroupDescription_t **d = rd_kafka_DescribeConsumerGroups_result_groups(
            rd_kafka_event_DescribeConsumerGroups_result(ev), &n);
        const rd_kafka_error_t *gerr = n ? rd_kafka_ConsumerGroupDescription_error(d[0]) : NULL;
        if (gerr && rd_kafka_error_code(gerr) != RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND)
            e = mb_error(mb_kafka_err(rd_kafka_error_code(gerr)), "kafka: describing group "
                         "'%s': %s", group, rd_kafka_error_string(gerr));
        else if (n && !gerr)
            *members = rd_kafka_ConsumerGroupDescription_member_count(d[0]);
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_queue_destroy(q);
    return e;
}

/* ---- group reset ------------------------------------------------------------ */

/* ops->group_reset: the offsets `to` names, committed for `group` by a
 * consumer of that group id that never joins it (as declare does). The
 * broker itself refuses such a commit while the group has members, so a
 * member that joins between the check and the commit is refused too
 * (MSGBUS_ERR_STATE either way), never overwritten. */
msgbus_err_t mb_kafka_group_reset(struct mb_backend *be, const char *topic, const char *group,
                                  const struct mb_start *to, int timeout_ms)
{
    int64_t deadline = mb_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    rd_kafka_t *rk = mb_kafka_consumer_new(be, group, NULL, NULL, NULL, NULL);
    if (!rk)
        return MSGBUS_ERR_CONFIG;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    char what[300];
    snprintf(what, sizeof what, "resetting group '%s' on '%s'", group, topic);
    msgbus_err_t e = mb_kafka_cluster_topics(rk, deadline, what, &md);
    if (!e) {
        const struct rd_kafka_metadata_topic *t = mb_kafka_find_topic(md, topic);
        if (!t || t->partition_cnt <= 0) {
            e = mb_error(MSGBUS_ERR_NOT_FOUND, "kafka: cannot reset group '%s': topic '%s' does "
                         "not exist on %s", group, topic, mb_bus_url(be->bus));
        } else {
            parts = rd_kafka_topic_partition_list_new(t->partition_cnt);
            for (int i = 0; i < t->partition_cnt; i++)
                rd_kafka_topic_partition_list_add(parts, topic, t->partitions[i].id);
        }
        rd_kafka_metadata_destroy(md);
    }
    size_t members = 0;
    if (!e)
        e = mb_kafka_group_members(rk, group, deadline, &members);
    if (!e && members > 0)
        e = mb_error(MSGBUS_ERR_STATE, "kafka: cannot reset group '%s' on '%s': group '%s' has "
                     "%zu active member%s (close its subscriptions first)", group, topic, group,
                     members, members == 1 ? "" : "s");
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (!e && (err = mb_kafka_start_offsets(rk, parts, to, mb_kafka_left(deadline), NULL))) {
        int32_t bad = 0;
        for (int i = 0; i < parts->cnt; i++)
            if (parts->elems[i].err) {
                bad = parts->elems[i].partition;
                break;
            }
        e = mb_error(err == RD_KAFKA_RESP_ERR__TIMED_OUT ? MSGBUS_ERR_TIMEOUT : mb_kafka_err(err),
                     "kafka: resetting group '%s' on '%s': offsets of partition %d: %s", group,
                     topic, (int)bad, rd_kafka_err2str(err));
    }
    if (!e) {
        err = mb_kafka_commit_wait(rk, parts, mb_kafka_left(deadline), NULL, NULL);
        if (err == RD_KAFKA_RESP_ERR_UNKNOWN_MEMBER_ID ||
            err == RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION ||
            err == RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS)
            e = mb_error(MSGBUS_ERR_STATE, "kafka: cannot reset group '%s' on '%s': a member "
                         "joined the group while it was being reset (%s); nothing was changed",
                         group, topic, rd_kafka_err2str(err));
        else if (err)
            e = mb_error(err == RD_KAFKA_RESP_ERR__TIMED_OUT ? MSGBUS_ERR_TIMEOUT
                                                             : mb_kafka_err(err),
                         "kafka: resetting group '%s' on '%s': committing the new offsets: %s",
                         group, topic, rd_kafka_err2str(err));
    }
    if (!e && mb_log_enabled(MSGBUS_LOG_INFO)) {
        char line[512];
        size_t off = 0;
        for (int i = 0; i < parts->cnt && off < sizeof line; i++)
            off += (size_t)snprintf(line + off, sizeof line - off, " %d@%lld",
                                    (int)parts->elems[i].partition,
                                    (long long)parts->elems[i].offset);
        mb_log(MSGBUS_LOG_INFO, "kafka: group '%s' on '%s' reset to%s", group, topic, line);
    }
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    return e;
}

/* ---- inspect ------------------------------------------------------------------- */
