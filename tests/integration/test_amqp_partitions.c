/*
 * test_amqp_partitions.c — partitioned groups on the real RabbitMQ
 * (MSGBUS_TEST_AMQP_URL with partitions=N, docs/amqp.md "Partitioned
 * groups"):
 *
 *  - spread: 3 members (own buses, own threads) of a group with 6
 *    partitions share a keyed stream; each gets a share, printed per
 *    member; every message arrives, per-key order holds for everything not
 *    marked redelivered;
 *  - quorum partition queues (queue_type=quorum): two members share them
 *    (members are counted on a classic queue: a single-active-consumer
 *    quorum queue reports only its active consumer), one closes
 *    mid-stream, nothing lost, order holds;
 *  - scaling out: two members join a working one mid-stream and take a
 *    share, order kept;
 *  - hand-over: one member of three closes mid-stream, another's
 *    connection is cut (an in-test proxy: a death as the broker sees it);
 *    the last one gets the rest, nothing is lost, order holds likewise;
 *  - layout: all N queues exist after a declare; a bus with another
 *    partitions= or none, and a partitioned bus on an unpartitioned group,
 *    are refused with MSGBUS_ERR_CONFIG naming the reason, changing
 *    nothing; keyless messages all reach one partition and are delivered;
 *  - capabilities: key_order is claimed with partitions=, not without, and
 *    require=key_order opens;
 *  - on a private node without the consistent-hash plugin
 *    (amqp_private_node.sh), a partitioned group is MSGBUS_ERR_UNSUPPORTED
 *    naming the plugin, at once the second time; other groups work.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "testutil.h"
#include "tu_amqp.h"
#include "tu_proxy.h"

enum { KEYS = 60, MEMBERS = 3 };

static void part_url(char *buf, size_t n, const char *base, const char *opts)
{
    snprintf(buf, n, "%s%s%s", base, strchr(base, '?') ? "&" : "?", opts);
}

static msgbus_t *open_with(const char *opts)
{
    char url[1024];
    part_url(url, sizeof url, tu_broker_url("amqp"), opts);
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    return bus;
}

/* ---- a shared record of what the members received -------------------------------- */

struct rec {
    pthread_mutex_t mu;
    int total;          /* messages published */
    bool *seen;         /* [total]: acked once */
    int last[KEYS];     /* highest sequence seen per key (non-redelivered) */
    int got, dups, out_of_order, redelivered_late;
    int by[MEMBERS];    /* first receipts per member */
    int by_late[MEMBERS]; /* first receipts per member, second half of the stream */
};

struct member {
    struct rec *r;
    int idx;
    msgbus_sub_t *sub;
    _Atomic bool stop;
    pthread_t th;
};

/* "n=<i>" with key "k<i % KEYS>": i / KEYS is the key's sequence number. */
static void record(struct rec *r, int who, const msgbus_msg_t *m)
{
    size_t len = 0;
    const char *p = msgbus_msg_payload(m, &len);
    int n = -1;
    if (len > 2 && len < 16 && memcmp(p, "n=", 2) == 0) {
        char tmp[16];
        memcpy(tmp, p, len);
        tmp[len] = '\0';
        n = atoi(tmp + 2);
    }
    pthread_mutex_lock(&r->mu);
    if (n < 0 || n >= r->total) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    int key = n % KEYS, seq = n / KEYS;
    if (r->seen[n]) {
        r->dups++;
    } else {
        r->seen[n] = true;
        r->got++;
        r->by[who]++;
        if (n >= r->total / 2)
            r->by_late[who]++;
        if (seq < r->last[key]) {
            if (msgbus_msg_redelivered(m))
                r->redelivered_late++;
            else
                r->out_of_order++;
        }
    }
    if (seq > r->last[key] && !msgbus_msg_redelivered(m))
        r->last[key] = seq;
    pthread_mutex_unlock(&r->mu);
}

static void *member_main(void *arg)
{
    struct member *mb = arg;
    while (!atomic_load(&mb->stop)) {
        msgbus_msg_t *m = NULL;
        msgbus_err_t e = msgbus_receive(mb->sub, 50, &m);
        if (e != MSGBUS_OK || !m)
            continue;
        record(mb->r, mb->idx, m);
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
    return NULL;
}

static void rec_init(struct rec *r, int total)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->total = total;
    r->seen = calloc((size_t)total, 1);
    ck_assert_ptr_nonnull(r->seen);
    for (int k = 0; k < KEYS; k++)
        r->last[k] = -1;
}

static void publish_range(msgbus_t *bus, const char *topic, int from, int to, int pace_every,
                          int pace_ms)
{
    for (int i = from; i < to; i++) {
        char p[32], k[16];
        snprintf(p, sizeof p, "n=%d", i);
        snprintf(k, sizeof k, "k%d", i % KEYS);
        tu_publish_str(bus, topic, k, p);
        if (pace_every && i % pace_every == pace_every - 1)
            usleep((useconds_t)pace_ms * 1000);
    }
    tu_ck_ok(msgbus_flush(bus, 30000, NULL));
}

static int wait_all(struct rec *r, int want, int timeout_ms)
{
    int64_t deadline = tu_now_ms() + timeout_ms;
    int got;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        got = r->got;
        pthread_mutex_unlock(&r->mu);
        if (got >= want || tu_now_ms() > deadline)
            return got;
        usleep(20000);
    }
}

/* ---- spread ---------------------------------------------------------------------- */

START_TEST(three_members_share_six_partitions)
{
    enum { TOTAL = 24000 };
    const char *opts = "partitions=6&rebalance_ms=250";
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "part-spread");
    tu_unique(group, sizeof group, "g");
    msgbus_t *pub = open_with(opts);
    tu_ck_ok(msgbus_declare(pub, topic, group));
    static struct rec r;
    rec_init(&r, TOTAL);
    msgbus_t *bus[MEMBERS];
    struct member mb[MEMBERS];
    for (int i = 0; i < MEMBERS; i++) {
        bus[i] = open_with(opts);
        memset(&mb[i], 0, sizeof mb[i]);
        mb[i].r = &r;
        mb[i].idx = i;
        tu_ck_ok(msgbus_subscribe(bus[i], topic, group, &mb[i].sub));
        ck_assert_int_eq(pthread_create(&mb[i].th, NULL, member_main, &mb[i]), 0);
    }
    int64_t t0 = tu_now_ms();
    /* ~8 s of stream: 200 messages every 60 ms. */
    publish_range(pub, topic, 0, TOTAL, 200, 60);
    int got = wait_all(&r, TOTAL, 60000);
    int64_t took = tu_now_ms() - t0;
    for (int i = 0; i < MEMBERS; i++) {
        atomic_store(&mb[i].stop, true);
        pthread_join(mb[i].th, NULL);
        msgbus_sub_close(mb[i].sub);
        msgbus_close(bus[i]);
    }
    printf("spread: %d of %d in %lld ms; per member %d / %d / %d (second half %d / %d / %d); "
           "%d again, %d out of order, %d redelivered after later ones\n",
           got, TOTAL, (long long)took, r.by[0], r.by[1], r.by[2], r.by_late[0], r.by_late[1],
           r.by_late[2], r.dups, r.out_of_order, r.redelivered_late);
    ck_assert_int_eq(got, TOTAL);
    ck_assert_int_eq(r.out_of_order, 0);
    for (int i = 0; i < MEMBERS; i++)
        ck_assert_msg(r.by_late[i] >= TOTAL / 2 / 10,
                      "member %d got %d of the second half's %d: the work did not spread", i,
                      r.by_late[i], TOTAL / 2);
    msgbus_close(pub);
    free(r.seen);
}
END_TEST

/* Scaling out: one member works alone, two more join mid-stream and take a
 * share of the last third, order kept throughout. */
START_TEST(members_joining_mid_stream_take_a_share)
{
    enum { TOTAL = 18000 };
    const char *opts = "partitions=6&rebalance_ms=250";
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "part-join");
    tu_unique(group, sizeof group, "g");
    msgbus_t *pub = open_with(opts);
    tu_ck_ok(msgbus_declare(pub, topic, group));
    static struct rec r;
    rec_init(&r, TOTAL);
    msgbus_t *bus[MEMBERS];
    struct member mb[MEMBERS];
    for (int i = 0; i < MEMBERS; i++) {
        if (i == 1)
            publish_range(pub, topic, 0, TOTAL / 3, 200, 50);
        bus[i] = open_with(opts);
        memset(&mb[i], 0, sizeof mb[i]);
        mb[i].r = &r;
        mb[i].idx = i;
        tu_ck_ok(msgbus_subscribe(bus[i], topic, group, &mb[i].sub));
        ck_assert_int_eq(pthread_create(&mb[i].th, NULL, member_main, &mb[i]), 0);
    }
    int before = r.got;
    publish_range(pub, topic, TOTAL / 3, TOTAL, 200, 50);
    int got = wait_all(&r, TOTAL, 60000);
    for (int i = 0; i < MEMBERS; i++) {
        atomic_store(&mb[i].stop, true);
        pthread_join(mb[i].th, NULL);
        msgbus_sub_close(mb[i].sub);
        msgbus_close(bus[i]);
    }
    printf("join: %d of %d (%d before the others joined); per member %d / %d / %d (second "
           "half %d / %d / %d); %d again, %d out of order, %d redelivered after later ones\n",
           got, TOTAL, before, r.by[0], r.by[1], r.by[2], r.by_late[0], r.by_late[1],
           r.by_late[2], r.dups, r.out_of_order, r.redelivered_late);
    ck_assert_int_eq(got, TOTAL);
    ck_assert_int_eq(r.out_of_order, 0);
    for (int i = 1; i < MEMBERS; i++)
        ck_assert_msg(r.by_late[i] >= TOTAL / 2 / 10,
                      "member %d, joining late, got %d of the second half's %d", i,
                      r.by_late[i], TOTAL / 2);
    msgbus_close(pub);
    free(r.seen);
}
END_TEST

/* ---- hand-over ---------------------------------------------------------------------- */

START_TEST(members_closing_and_dying_hand_over_without_loss)
{
    enum { TOTAL = 12000 };
    const char *opts = "partitions=4&rebalance_ms=250&heartbeat=1";
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "part-hand");
    tu_unique(group, sizeof group, "g");
    msgbus_t *pub = open_with(opts);
    tu_ck_ok(msgbus_declare(pub, topic, group));
    /* Member 1 reaches the broker through a proxy the test stops: its
     * connection is cut and it cannot reconnect (a dead process, as the
     * broker sees it). */
    char px_url[1024];
    tu_proxy_start_amqp(NULL, NULL,
                        "partitions=4&rebalance_ms=250&heartbeat=1&reconnect_backoff_ms=60000&"
                        "reconnect_backoff_max_ms=60000",
                        px_url, sizeof px_url);
    static struct rec r;
    rec_init(&r, TOTAL);
    msgbus_t *bus[MEMBERS];
    struct member mb[MEMBERS];
    for (int i = 0; i < MEMBERS; i++) {
        char url[1024];
        if (i == 1)
            snprintf(url, sizeof url, "%s", px_url);
        else
            part_url(url, sizeof url, tu_broker_url("amqp"), opts);
        tu_ck_ok(msgbus_open(&bus[i], url, NULL));
        memset(&mb[i], 0, sizeof mb[i]);
        mb[i].r = &r;
        mb[i].idx = i;
        tu_ck_ok(msgbus_subscribe(bus[i], topic, group, &mb[i].sub));
        ck_assert_int_eq(pthread_create(&mb[i].th, NULL, member_main, &mb[i]), 0);
    }
    publish_range(pub, topic, 0, TOTAL / 3, 200, 50);
    wait_all(&r, TOTAL / 3, 30000);
    /* Member 0 leaves. */
    atomic_store(&mb[0].stop, true);
    pthread_join(mb[0].th, NULL);
    msgbus_sub_close(mb[0].sub);
    int at_close = r.got;
    publish_range(pub, topic, TOTAL / 3, 2 * TOTAL / 3, 200, 50);
    /* Member 1 dies as the broker sees it: its connection is cut. Its
     * thread keeps running; it cannot reconnect for a minute. */
    atomic_store(&mb[1].stop, true);
    pthread_join(mb[1].th, NULL);
    tu_proxy_stop();
    int at_kill = r.got;
    publish_range(pub, topic, 2 * TOTAL / 3, TOTAL, 200, 50);
    int got = wait_all(&r, TOTAL, 60000);
    printf("hand-over: %d of %d; member 0 closed at %d, member 1 cut at %d; per member "
           "%d / %d / %d; %d again, %d out of order, %d redelivered after later ones\n",
           got, TOTAL, at_close, at_kill, r.by[0], r.by[1], r.by[2], r.dups, r.out_of_order,
           r.redelivered_late);
    atomic_store(&mb[2].stop, true);
    pthread_join(mb[2].th, NULL);
    msgbus_sub_close(mb[1].sub);
    msgbus_sub_close(mb[2].sub);
    for (int i = 0; i < MEMBERS; i++)
        msgbus_close(bus[i]);
    ck_assert_int_eq(got, TOTAL);
    ck_assert_int_eq(r.out_of_order, 0);
    ck_assert_msg(r.by[2] > 0, "the last member got nothing");
    msgbus_close(pub);
    free(r.seen);
}
END_TEST

/* ---- quorum ----------------------------------------------------------------------- */

/* queue_type=quorum: the partitions are quorum single-active-consumer
 * queues; two members share them, one closes mid-stream, the other gets
 * the rest, in key order. */
START_TEST(quorum_partitions_hand_over_in_order)
{
    enum { TOTAL = 6000 };
    const char *opts = "queue_type=quorum&partitions=3&rebalance_ms=250";
    char topic[128], group[128];
    tu_unique(topic, sizeof topic, "part-quorum");
    tu_unique(group, sizeof group, "g");
    msgbus_t *pub = open_with(opts);
    tu_ck_ok(msgbus_declare(pub, topic, group));
    static struct rec r;
    rec_init(&r, TOTAL);
    msgbus_t *bus[2];
    struct member mb[2];
    for (int i = 0; i < 2; i++) {
        bus[i] = open_with(opts);
        memset(&mb[i], 0, sizeof mb[i]);
        mb[i].r = &r;
        mb[i].idx = i;
        tu_ck_ok(msgbus_subscribe(bus[i], topic, group, &mb[i].sub));
        ck_assert_int_eq(pthread_create(&mb[i].th, NULL, member_main, &mb[i]), 0);
    }
    publish_range(pub, topic, 0, TOTAL / 2, 200, 50);
    wait_all(&r, TOTAL / 2, 30000);
    atomic_store(&mb[0].stop, true);
    pthread_join(mb[0].th, NULL);
    msgbus_sub_close(mb[0].sub);
    publish_range(pub, topic, TOTAL / 2, TOTAL, 200, 50);
    int got = wait_all(&r, TOTAL, 60000);
    atomic_store(&mb[1].stop, true);
    pthread_join(mb[1].th, NULL);
    msgbus_sub_close(mb[1].sub);
    printf("quorum: %d of %d; per member %d / %d; %d again, %d out of order, %d redelivered "
           "after later ones\n",
           got, TOTAL, r.by[0], r.by[1], r.dups, r.out_of_order, r.redelivered_late);
    for (int i = 0; i < 2; i++)
        msgbus_close(bus[i]);
    msgbus_close(pub);
    ck_assert_int_eq(got, TOTAL);
    ck_assert_int_eq(r.out_of_order, 0);
    ck_assert_msg(r.by[0] > 0, "member 0 never worked");
    ck_assert_msg(r.by[1] > TOTAL / 2,
                  "member 1 got nothing of the first half (%d in all): the work did not spread",
                  r.by[1]);
    free(r.seen);
}
END_TEST

/* ---- layout ---------------------------------------------------------------------- */

/* A number of the group's entry in msgbus_inspect_json(topic, group). */
static json_int_t group_field(msgbus_t *bus, const char *topic, const char *group,
                              const char *field)
{
    char *text = NULL;
    tu_ck_ok(msgbus_inspect_json(bus, topic, group, 5000, &text));
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    ck_assert_msg(o, "inspect output does not parse: %s", err.text);
    json_t *v = tu_json_at(o, "topics.0.groups.0");
    ck_assert_msg(v && json_integer_value(json_object_get(v, field)) >= 0 &&
                      json_is_integer(json_object_get(v, field)),
                  "no %s in %s", field, text);
    json_int_t r = json_integer_value(json_object_get(v, field));
    json_decref(o);
    msgbus_free(text);
    return r;
}

static void tu_err_reset_refused(msgbus_t *bus, const char *topic, const char *group)
{
    tu_ck_err(msgbus_group_reset(bus, topic, group, "latest"), MSGBUS_ERR_STATE);
    printf("reset with a member: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "1 active member"));
}

START_TEST(partition_count_is_fixed_and_keyless_messages_arrive)
{
    char topic[128], group[128], plain[128];
    tu_unique(topic, sizeof topic, "part-layout");
    tu_unique(group, sizeof group, "g");
    tu_unique(plain, sizeof plain, "plain");
    msgbus_t *b3 = open_with("partitions=3");
    tu_ck_ok(msgbus_declare(b3, topic, group));
    /* Every partition queue exists: inspect each through an unpartitioned
     * bus would refuse the group, so ask by subscribing with the same N. */
    msgbus_sub_t *s = NULL;
    tu_ck_ok(msgbus_subscribe(b3, topic, group, &s));

    msgbus_t *b4 = open_with("partitions=4");
    msgbus_sub_t *bad = NULL;
    tu_ck_err(msgbus_subscribe(b4, topic, group, &bad), MSGBUS_ERR_CONFIG);
    printf("partitions=4 on a 3-partition group: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "fewer than partitions=4"));
    msgbus_t *b2 = open_with("partitions=2");
    tu_ck_err(msgbus_declare(b2, topic, group), MSGBUS_ERR_CONFIG);
    printf("partitions=2 on a 3-partition group: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "more than partitions=2"));
    msgbus_t *b0 = NULL;
    tu_ck_ok(msgbus_open(&b0, tu_broker_url("amqp"), NULL));
    tu_ck_err(msgbus_subscribe(b0, topic, group, &bad), MSGBUS_ERR_CONFIG);
    printf("no partitions= on a partitioned group: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "is partitioned"));
    /* An unpartitioned group cannot become partitioned. */
    tu_ck_ok(msgbus_declare(b0, topic, plain));
    tu_ck_err(msgbus_subscribe(b3, topic, plain, &bad), MSGBUS_ERR_CONFIG);
    printf("partitions=3 on an unpartitioned group: %s\n", msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "exists unpartitioned"));

    /* The group still works as created: keyed and keyless messages. */
    for (int i = 0; i < 30; i++) {
        char p[32];
        snprintf(p, sizeof p, "n=%d", i);
        tu_publish_str(b0, topic, i % 2 ? NULL : "k", p);
    }
    tu_ck_ok(msgbus_flush(b0, 10000, NULL));
    int got = 0, keyless = 0;
    msgbus_msg_t *m;
    while (got < 30 && (m = tu_receive(s, 10000))) {
        size_t kl = 0;
        keyless += msgbus_msg_key(m, &kl) == NULL;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
        got++;
    }
    printf("after the refusals: %d of 30 received, %d keyless\n", got, keyless);
    ck_assert_int_eq(got, 30);
    ck_assert_int_eq(keyless, 15);
    ck_assert_int_eq(group_field(b3, topic, group, "members"), 1);
    tu_err_reset_refused(b3, topic, group);
    /* Stats: the subscription's lag is over its partition queues. */
    json_t *st = tu_stats(b3);
    json_t *so = tu_json_at(st, "subscriptions.0");
    ck_assert_ptr_nonnull(so);
    char want_q[300];
    snprintf(want_q, sizeof want_q, "%s.%s~0..2", topic, group);
    const char *lq = json_string_value(tu_json_at(so, "lag_detail.queue"));
    printf("stats: lag %lld, lag_detail.queue %s\n", (long long)tu_json_int(so, "lag"),
           lq ? lq : "(none)");
    ck_assert_pstr_eq(lq, want_q);
    ck_assert_int_eq(tu_json_int(so, "lag"), 0);
    json_decref(st);
    msgbus_sub_close(s);
    /* Inspection sums the partitions; a reset purges every one. */
    for (int i = 0; i < 12; i++) {
        char k[8];
        snprintf(k, sizeof k, "k%d", i);
        tu_publish_str(b0, topic, k, "x");
    }
    tu_ck_ok(msgbus_flush(b0, 10000, NULL));
    json_int_t ready = -1;
    for (int i = 0; i < 50 && ready != 12; i++, usleep(20000))
        ready = group_field(b3, topic, group, "ready");
    ck_assert_int_eq(ready, 12);
    ck_assert_int_eq(group_field(b3, topic, group, "members"), 0);
    tu_ck_ok(msgbus_group_reset(b3, topic, group, "latest"));
    ck_assert_int_eq(group_field(b3, topic, group, "ready"), 0);
    printf("inspect and reset: 12 ready over 3 partitions, 0 after the reset\n");
    msgbus_close(b0);
    msgbus_close(b2);
    msgbus_close(b3);
    msgbus_close(b4);
}
END_TEST

/* ---- capabilities --------------------------------------------------------------- */

START_TEST(key_order_is_claimed_when_partitioned)
{
    msgbus_t *plain = NULL;
    tu_ck_ok(msgbus_open(&plain, tu_broker_url("amqp"), NULL));
    ck_assert_msg(!(msgbus_caps(plain) & MSGBUS_CAP_KEY_ORDER), "claimed without partitions");
    msgbus_close(plain);
    msgbus_t *p = open_with("partitions=3&require=key_order");
    ck_assert_msg(msgbus_caps(p) & MSGBUS_CAP_KEY_ORDER, "not claimed with partitions=3");
    msgbus_close(p);
    char url[1024];
    part_url(url, sizeof url, tu_broker_url("amqp"), "partitions=1001");
    msgbus_t *bad = NULL;
    tu_ck_err(msgbus_open(&bad, url, NULL), MSGBUS_ERR_CONFIG);
    printf("partitions=1001: %s\n", msgbus_last_error());
}
END_TEST

/* ---- without the plugin --------------------------------------------------------- */

/* A private node (amqp_private_node.sh: no plugins at all): a partitioned
 * group fails with MSGBUS_ERR_UNSUPPORTED naming the plugin and how to
 * enable it; asking again fails at once, and unpartitioned groups on the
 * same bus keep working. */
START_TEST(missing_plugin_is_unsupported_and_says_how_to_enable_it)
{
    char url[256], topic[128], group[128];
    snprintf(url, sizeof url, "amqp://guest:guest@127.0.0.1:%d/?partitions=3", tu_node.port);
    tu_unique(topic, sizeof topic, "part-noplugin");
    tu_unique(group, sizeof group, "g");
    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    msgbus_sub_t *sub = NULL;
    int64_t t0 = tu_now_ms();
    tu_ck_err(msgbus_subscribe(bus, topic, group, &sub), MSGBUS_ERR_UNSUPPORTED);
    int64_t first = tu_now_ms() - t0;
    printf("without the plugin (%lld ms): %s\n", (long long)first, msgbus_last_error());
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "rabbitmq_consistent_hash_exchange"));
    ck_assert_ptr_nonnull(strstr(msgbus_last_error(), "rabbitmq-plugins enable"));
    t0 = tu_now_ms();
    tu_ck_err(msgbus_declare(bus, topic, group), MSGBUS_ERR_UNSUPPORTED);
    int64_t again = tu_now_ms() - t0;
    printf("declare, again: %lld ms\n", (long long)again);
    ck_assert_int_lt(first, 5000);
    ck_assert_int_lt(again, 100);
    /* Broadcast subscriptions need no plugin. */
    tu_ck_ok(msgbus_subscribe(bus, topic, NULL, &sub));
    tu_publish_str(bus, topic, "k", "hello");
    tu_ck_ok(msgbus_flush(bus, 10000, NULL));
    msgbus_msg_t *m = tu_receive(sub, 10000);
    ck_assert_ptr_nonnull(m);
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (getenv("TU_DEBUG"))
        msgbus_set_log(NULL, NULL, MSGBUS_LOG_DEBUG);
    Suite *s = suite_create("amqp_partitions");
    TCase *tc = tcase_create("partitions");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, key_order_is_claimed_when_partitioned);
    tcase_add_test(tc, partition_count_is_fixed_and_keyless_messages_arrive);
    tcase_add_test(tc, three_members_share_six_partitions);
    tcase_add_test(tc, members_joining_mid_stream_take_a_share);
    tcase_add_test(tc, members_closing_and_dying_hand_over_without_loss);
    tcase_add_test(tc, quorum_partitions_hand_over_in_order);
    tcase_add_test(tc, missing_plugin_is_unsupported_and_says_how_to_enable_it);
    suite_add_tcase(s, tc);
    /* Slot 3 (tu_amqp.h): ports of their own next to the other programs'. */
    if (!tu_node_start("amqp-partitions", 3, "plain"))
        return 1;
    int rc = tu_run_suite(s);
    tu_node_stop();
    return rc;
}
