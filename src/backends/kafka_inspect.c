/*
 * kafka_inspect.c — the operator's view of a Kafka cluster (ops->inspect,
 * msgbus_inspect_json): topics with their partitions, watermarks and
 * retention, and the consumer groups with a position on them, with their
 * members, committed offsets and lag. Admin plumbing shared with group
 * reset lives in kafka_group.c.
 */
#include "backends/kafka.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One consumer group, as inspect gathers it. */
struct mb_kafka_ginfo {
    const char *name;                         /* owned by the listing event, or the caller */
    rd_kafka_topic_partition_list_t *offsets; /* committed offsets; NULL until answered */
    long members;                             /* -1: not known */
    bool answered;
};

static int mb_kafka_cmp_topic(const void *a, const void *b)
{
    const struct rd_kafka_metadata_topic *const *x = a, *const *y = b;
    return strcmp((*x)->topic, (*y)->topic);
}

static int mb_kafka_cmp_group(const void *a, const void *b)
{
    const struct mb_kafka_ginfo *x = a, *y = b;
    return strcmp(x->name, y->name);
}

/* The committed offset of topic[partition] in `offsets`, or -1. */
static int64_t mb_kafka_committed_in(const rd_kafka_topic_partition_list_t *offsets,
                                     const char *topic, int32_t partition)
{
    for (int i = 0; offsets && i < offsets->cnt; i++)
        if (offsets->elems[i].partition == partition && !offsets->elems[i].err &&
            strcmp(offsets->elems[i].topic, topic) == 0)
            return offsets->elems[i].offset >= 0 ? offsets->elems[i].offset : -1;
    return -1;
}

static bool mb_kafka_has_position(const struct mb_kafka_ginfo *g, const char *topic)
{
    for (int i = 0; g->offsets && i < g->offsets->cnt; i++)
        if (!g->offsets->elems[i].err && g->offsets->elems[i].offset >= 0 &&
            strcmp(g->offsets->elems[i].topic, topic) == 0)
            return true;
    return false;
}

/* retention.ms of each topic in `topics` from a DescribeConfigs result
 * (retention[i] stays INT64_MIN where the broker did not say). */
static void mb_kafka_retention(rd_kafka_event_t *ev, const struct rd_kafka_metadata_topic **topics,
                               size_t n, int64_t *retention)
{
    size_t cnt = 0;
    const rd_kafka_ConfigResource_t **res =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &cnt);
    for (size_t r = 0; r < cnt; r++) {
        if (rd_kafka_ConfigResource_error(res[r]))
            continue;
        const char *name = rd_kafka_ConfigResource_name(res[r]);
        size_t ne = 0;
        const rd_kafka_ConfigEntry_t **entries = rd_kafka_ConfigResource_configs(res[r], &ne);
        for (size_t k = 0; k < ne; k++) {
            const char *v = rd_kafka_ConfigEntry_value(entries[k]);
            if (strcmp(rd_kafka_ConfigEntry_name(entries[k]), "retention.ms") != 0 || !v)
                continue;
            for (size_t t = 0; t < n; t++)
                if (strcmp(topics[t]->topic, name) == 0)
                    retention[t] = strtoll(v, NULL, 10);
        }
    }
}

/* One topic's object of the inspect answer. */
/* The offset `list` has for topic[partition], or -1. */
static int64_t mb_kafka_offset_in(const rd_kafka_topic_partition_list_t *list, const char *topic,
                                  int32_t partition)
{
    for (int k = 0; list && k < list->cnt; k++)
        if (list->elems[k].partition == partition && !list->elems[k].err &&
            strcmp(list->elems[k].topic, topic) == 0)
            return list->elems[k].offset;
    return -1;
}

static json_t *mb_kafka_topic_json(const struct rd_kafka_metadata_topic *t, int64_t retention,
                                   const rd_kafka_topic_partition_list_t *lows,
                                   const rd_kafka_topic_partition_list_t *ends,
                                   const struct mb_kafka_ginfo *groups, size_t ngroups)
{
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(t->topic));
    json_object_set_new(o, "partitions", json_integer(t->partition_cnt));
    if (retention != INT64_MIN)
        json_object_set_new(o, "retention_ms", json_integer(retention));
    /* Where each partition begins and ends now, whatever the groups: what
     * `msgbus sub -e` reads up to, and low == high for an empty one. */
    json_t *warr = json_array();
    for (int p = 0; p < t->partition_cnt; p++) {
        int32_t part = t->partitions[p].id;
        int64_t lo = mb_kafka_offset_in(lows, t->topic, part);
        int64_t hi = mb_kafka_offset_in(ends, t->topic, part);
        json_t *w = json_object();
        json_object_set_new(w, "partition", json_integer(part));
        json_object_set_new(w, "low", lo >= 0 ? json_integer(lo) : json_null());
        json_object_set_new(w, "high", hi >= 0 ? json_integer(hi) : json_null());
        json_array_append_new(warr, w);
    }
    json_object_set_new(o, "watermarks", warr);
    json_t *garr = json_array();
    for (size_t g = 0; g < ngroups; g++) {
        if (!mb_kafka_has_position(&groups[g], t->topic))
            continue;
        json_t *go = json_object();
        json_object_set_new(go, "name", json_string(groups[g].name));
        if (groups[g].members >= 0)
            json_object_set_new(go, "members", json_integer(groups[g].members));
        json_t *parr = json_array();
        int64_t total = 0;
        bool known = true;
        for (int p = 0; p < t->partition_cnt; p++) {
            int32_t part = t->partitions[p].id;
            int64_t committed = mb_kafka_committed_in(groups[g].offsets, t->topic, part);
            int64_t hw = mb_kafka_offset_in(ends, t->topic, part);
            json_t *po = json_object();
            json_object_set_new(po, "partition", json_integer(part));
            json_object_set_new(po, "committed", committed >= 0 ? json_integer(committed)
                                                                : json_null());
            json_object_set_new(po, "high_watermark", hw >= 0 ? json_integer(hw) : json_null());
            if (committed >= 0 && hw >= 0) {
                int64_t lag = hw > committed ? hw - committed : 0;
                total += lag;
                json_object_set_new(po, "lag", json_integer(lag));
            } else {
                known = false;
                json_object_set_new(po, "lag", json_null());
            }
            json_array_append_new(parr, po);
        }
        if (known)
            json_object_set_new(go, "lag", json_integer(total));
        json_object_set_new(go, "partitions", parr);
        json_array_append_new(garr, go);
    }
    json_object_set_new(o, "groups", garr);
    return o;
}

/* ops->inspect. Requests go out together where they can (the topics'
 * configurations and the group list while the end offsets are asked; every
 * group's committed offsets and their descriptions at once) on a handle of
 * its own, so the whole answer takes a few round trips, bounded by
 * timeout_ms. What the brokers do not answer in time: retention_ms and
 * members are left out; end offsets come back null (no lag); group
 * listings and committed offsets fail the call (MSGBUS_ERR_TIMEOUT), since
 * a group left out would read as "no such group". */
msgbus_err_t mb_kafka_inspect(struct mb_backend *be, const char *topic, const char *group,
                              int timeout_ms, json_t *out)
{
    int64_t deadline = mb_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    rd_kafka_t *rk = mb_kafka_consumer_new(be, "msgbus-inspect", NULL, NULL, NULL, NULL);
    if (!rk)
        return MSGBUS_ERR_CONFIG;
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    const struct rd_kafka_metadata *md = NULL;
    const struct rd_kafka_metadata_topic **topics = NULL;
    size_t ntopics = 0, nconf = 0, ngroups = 0;
    int64_t *retention = NULL;
    rd_kafka_topic_partition_list_t *ends = NULL, *lows = NULL;
    struct mb_kafka_ginfo *groups = NULL;
    rd_kafka_event_t *listing = NULL;
    rd_kafka_AdminOptions_t *ao_conf = NULL, *ao_list = NULL, *ao_offs = NULL, *ao_desc = NULL;
    rd_kafka_ConfigResource_t **conf_res = NULL;
    msgbus_err_t e = mb_kafka_cluster_topics(rk, deadline, "inspect", &md);
    if (e)
        goto done;

    topics = calloc((size_t)md->topic_cnt + 1, sizeof *topics);
    if (!topics) {
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];
        if (t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
            (topic ? strcmp(t->topic, topic) != 0 : mb_kafka_internal_topic(t->topic)))
            continue;
        topics[ntopics++] = t;
    }
    if (topic && ntopics == 0) {
        e = mb_error(MSGBUS_ERR_NOT_FOUND, "kafka: inspect: topic '%s' does not exist on %s",
                     topic, mb_bus_url(be->bus));
        goto done;
    }
    qsort(topics, ntopics, sizeof *topics, mb_kafka_cmp_topic);

    /* Retention (DescribeConfigs) and the groups (ListConsumerGroups)
     * travel while the end offsets are asked. */
    retention = malloc((ntopics + 1) * sizeof *retention);
    conf_res = calloc(ntopics + 1, sizeof *conf_res);
    ends = rd_kafka_topic_partition_list_new(16);
    lows = rd_kafka_topic_partition_list_new(16);
    if (!retention || !conf_res) {
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        goto done;
    }
    nconf = ntopics;
    for (size_t t = 0; t < ntopics; t++) {
        retention[t] = INT64_MIN;
        conf_res[t] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topics[t]->topic);
        for (int p = 0; p < topics[t]->partition_cnt; p++) {
            rd_kafka_topic_partition_list_add(ends, topics[t]->topic,
                                              topics[t]->partitions[p].id)
                ->offset = RD_KAFKA_OFFSET_END;
            rd_kafka_topic_partition_list_add(lows, topics[t]->topic,
                                              topics[t]->partitions[p].id)
                ->offset = RD_KAFKA_OFFSET_BEGINNING;
        }
    }
    bool want_conf = ntopics > 0, want_list = group == NULL;
    if (want_conf) {
        ao_conf = mb_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS, deadline);
        rd_kafka_DescribeConfigs(rk, conf_res, ntopics, ao_conf, q);
    }
    if (want_list) {
        ao_list = mb_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPS, deadline);
        rd_kafka_ListConsumerGroups(rk, ao_list, q);
    }
    /* End offsets: "latest" as a timestamp, one ListOffsets per leader. A
     * failure leaves high_watermark null (and the lag unknown). */
    for (int which = 0; which < 2 && ends->cnt > 0; which++) {
        rd_kafka_topic_partition_list_t *l = which ? lows : ends;
        rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(rk, l, mb_kafka_left(deadline));
        if (err) {
            mb_log(MSGBUS_LOG_WARN, "kafka: inspect: %s offsets: %s", which ? "start" : "end",
                   rd_kafka_err2str(err));
            for (int i = 0; i < l->cnt; i++)
                l->elems[i].err = err;
        }
    }
    while (want_conf || want_list) {
        int64_t left = deadline - mb_mono_ms();
        rd_kafka_event_t *ev = left > 0 ? rd_kafka_queue_poll(q, (int)left) : NULL;
        if (!ev)
            break;
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_DESCRIBECONFIGS_RESULT) {
            want_conf = false;
            if (!rd_kafka_event_error(ev))
                mb_kafka_retention(ev, topics, ntopics, retention);
            rd_kafka_event_destroy(ev);
        } else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_LISTCONSUMERGROUPS_RESULT) {
            want_list = false;
            listing = ev; /* kept: the group names live in it */
        } else {
            rd_kafka_event_destroy(ev);
        }
    }
    if (want_list) {
        e = mb_error(MSGBUS_ERR_TIMEOUT, "kafka: inspect: the cluster did not list its consumer "
                     "groups within %d ms", timeout_ms);
        goto done;
    }

    /* The groups: the one named, or every group the cluster listed. */
    if (group) {
        groups = calloc(1, sizeof *groups);
        if (groups) {
            groups[0].name = group;
            ngroups = 1;
        }
    } else {
        if (rd_kafka_event_error(listing)) {
            e = mb_error(mb_kafka_err(rd_kafka_event_error(listing)), "kafka: inspect: listing "
                         "consumer groups: %s", rd_kafka_event_error_string(listing));
            goto done;
        }
        const rd_kafka_ListConsumerGroups_result_t *lr =
            rd_kafka_event_ListConsumerGroups_result(listing);
        size_t nerr = 0, nvalid = 0;
        const rd_kafka_error_t **errs = rd_kafka_ListConsumerGroups_result_errors(lr, &nerr);
        for (size_t i = 0; i < nerr; i++) /* one broker's list missing: groups may be too */
            mb_log(MSGBUS_LOG_WARN, "kafka: inspect: listing consumer groups: %s",
                   rd_kafka_error_string(errs[i]));
        const rd_kafka_ConsumerGroupListing_t **valid =
            rd_kafka_ListConsumerGroups_result_valid(lr, &nvalid);
        groups = calloc(nvalid + 1, sizeof *groups);
        for (size_t i = 0; groups && i < nvalid; i++)
            groups[ngroups++].name = rd_kafka_ConsumerGroupListing_group_id(valid[i]);
    }
    if (!groups) {
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t g = 0; g < ngroups; g++)
        groups[g].members = -1;

    /* Every group's committed offsets (one request per group: librdkafka
     * 2.0.2 takes one group per call) and their descriptions, at once. */
    size_t waiting = 0;
    bool want_desc = ngroups > 0;
    if (ngroups > 0) {
        ao_offs = mb_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS, deadline);
        for (size_t g = 0; g < ngroups; g++) {
            rd_kafka_ListConsumerGroupOffsets_t *req =
                rd_kafka_ListConsumerGroupOffsets_new(groups[g].name, NULL);
            rd_kafka_ListConsumerGroupOffsets(rk, &req, 1, ao_offs, q);
            rd_kafka_ListConsumerGroupOffsets_destroy(req);
            waiting++;
        }
        const char **names = malloc(ngroups * sizeof *names);
        if (!names) {
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory");
            goto done;
        }
        for (size_t g = 0; g < ngroups; g++)
            names[g] = groups[g].name;
        ao_desc = mb_kafka_admin_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS, deadline);
        rd_kafka_DescribeConsumerGroups(rk, names, ngroups, ao_desc, q);
        free(names);
    }
    while (waiting > 0 || want_desc) {
        int64_t left = deadline - mb_mono_ms();
        rd_kafka_event_t *ev = left > 0 ? rd_kafka_queue_poll(q, (int)left) : NULL;
        if (!ev)
            break;
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_LISTCONSUMERGROUPOFFSETS_RESULT) {
            waiting--;
            size_t n = 0;
            const rd_kafka_group_result_t **gr = rd_kafka_ListConsumerGroupOffsets_result_groups(
                rd_kafka_event_ListConsumerGroupOffsets_result(ev), &n);
            for (size_t i = 0; i < n; i++) {
                const char *name = rd_kafka_group_result_name(gr[i]);
                const rd_kafka_error_t *gerr = rd_kafka_group_result_error(gr[i]);
                const rd_kafka_topic_partition_list_t *offs = rd_kafka_group_result_partitions(gr[i]);
                for (size_t g = 0; g < ngroups; g++) {
                    if (strcmp(groups[g].name, name) != 0 || groups[g].answered)
                        continue;
                    groups[g].answered = true;
                    if (gerr && rd_kafka_error_code(gerr) != RD_KAFKA_RESP_ERR_GROUP_ID_NOT_FOUND)
                        mb_log(MSGBUS_LOG_WARN, "kafka: inspect: offsets of group '%s': %s",
                               name, rd_kafka_error_string(gerr));
                    else if (offs)
                        groups[g].offsets = rd_kafka_topic_partition_list_copy(offs);
                    break;
                }
            }
            if (rd_kafka_event_error(ev))
                mb_log(MSGBUS_LOG_WARN, "kafka: inspect: committed offsets: %s",
                       rd_kafka_event_error_string(ev));
        } else if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_DESCRIBECONSUMERGROUPS_RESULT) {
            want_desc = false;
            size_t n = 0;
            const rd_kafka_ConsumerGroupDescription_t **d =
                rd_kafka_DescribeConsumerGroups_result_groups(
                    rd_kafka_event_DescribeConsumerGroups_result(ev), &n);
            for (size_t i = 0; i < n; i++) {
                if (rd_kafka_ConsumerGroupDescription_error(d[i]))
                    continue;
                const char *name = rd_kafka_ConsumerGroupDescription_group_id(d[i]);
                for (size_t g = 0; g < ngroups; g++)
                    if (strcmp(groups[g].name, name) == 0)
                        groups[g].members =
                            (long)rd_kafka_ConsumerGroupDescription_member_count(d[i]);
            }
        }
        rd_kafka_event_destroy(ev);
    }
    if (waiting > 0) {
        e = mb_error(MSGBUS_ERR_TIMEOUT, "kafka: inspect: the committed offsets of %zu of %zu "
                     "consumer group%s did not come within %d ms", waiting, ngroups,
                     ngroups == 1 ? "" : "s", timeout_ms);
        goto done;
    }
    qsort(groups, ngroups, sizeof *groups, mb_kafka_cmp_group);

    /* A named group must have a position on some topic asked about; with
     * no topic named, only the topics it has positions on are shown. */
    if (group) {
        size_t kept = 0;
        for (size_t t = 0; t < ntopics; t++)
            if (mb_kafka_has_position(&groups[0], topics[t]->topic)) {
                topics[kept] = topics[t];
                retention[kept++] = retention[t];
            }
        if (kept == 0) {
            e = mb_error(MSGBUS_ERR_NOT_FOUND, "kafka: inspect: group '%s' has no committed "
                         "position on %s%s%s", group, topic ? "topic '" : "any topic",
                         topic ? topic : "", topic ? "'" : "");
            goto done;
        }
        ntopics = kept;
    }
    json_t *arr = json_array();
    for (size_t t = 0; t < ntopics; t++)
        json_array_append_new(arr, mb_kafka_topic_json(topics[t], retention[t], lows, ends,
                                                       groups, ngroups));
    json_object_set_new(out, "topics", arr);

done:
    for (size_t g = 0; groups && g < ngroups; g++)
        if (groups[g].offsets)
            rd_kafka_topic_partition_list_destroy(groups[g].offsets);
    free(groups);
    if (listing)
        rd_kafka_event_destroy(listing);
    for (size_t t = 0; conf_res && t < nconf; t++)
        if (conf_res[t])
            rd_kafka_ConfigResource_destroy(conf_res[t]);
    free(conf_res);
    free(retention);
    if (ends)
        rd_kafka_topic_partition_list_destroy(ends);
    if (lows)
        rd_kafka_topic_partition_list_destroy(lows);
    free(topics);
    if (md)
        rd_kafka_metadata_destroy(md);
    if (ao_conf)
        rd_kafka_AdminOptions_destroy(ao_conf);
    if (ao_list)
        rd_kafka_AdminOptions_destroy(ao_list);
    if (ao_offs)
        rd_kafka_AdminOptions_destroy(ao_offs);
    if (ao_desc)
        rd_kafka_AdminOptions_destroy(ao_desc);
    /* Before the handle: events still queued (late answers) hold references. */
    rd_kafka_queue_destroy(q);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    return e;
}
