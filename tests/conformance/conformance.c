/*
 * conformance.c — the one suite that pins down the messaging model of
 * DESIGN.md §2 / docs/semantics.md, run unchanged against every backend:
 *
 *     conformance mem | kafka | amqp
 *
 * mem runs on mem://conformance-<pid>; kafka and amqp on the real brokers
 * named by MSGBUS_TEST_KAFKA_URL / MSGBUS_TEST_AMQP_URL (scripts/brokers up):
 * a missing broker is a failure, never a skip. docs/conformance.md lists
 * what each test promises and where a backend is tested differently.
 *
 * Rules every test follows, because the brokers are real:
 *  - fresh topic and group names (tu_unique), so runs never collide;
 *  - subscribe or declare BEFORE publishing: a new Kafka group starts at the
 *    end of the topic and RabbitMQ drops messages no queue is bound for;
 *  - bounded waits: 30 s for a first message (Kafka group joins take
 *    seconds), bounded loops everywhere, a Check timeout per test case.
 * Each test runs in its own process (CK_FORK), so a crash fails one test.
 * Failure paths live in conformance_errors.h, the fd test in
 * conformance_fd.h, shared helpers in conformance_util.h.
 */
#include <unistd.h>

#include "conformance_util.h"
#include "conformance_errors.h"
#include "conformance_fd.h"
#include "conformance_retry.h"
#include "conformance_stats.h"
#include "conformance_positions.h"
#include "conformance_caps.h"
#include "conformance_order.h"

/* ------------------------------------------------------- round trips */

START_TEST(round_trip_keeps_payload_key_headers_id_timestamp)
{
    char topic[128], group[128], id[128];
    cf_name(topic, sizeof topic, "rt");
    cf_name(group, sizeof group, "g");
    cf_name(id, sizeof id, "my-id");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));

    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "hello", 5));
    tu_ck_ok(msgbus_msg_set_key(m, "order-42", 8));
    tu_ck_ok(msgbus_msg_set_header(m, "content-type", "application/json"));
    tu_ck_ok(msgbus_msg_set_header(m, "trace.id_v:1", "a b=c;d"));
    tu_ck_ok(msgbus_msg_set_header(m, "empty", ""));
    tu_ck_ok(msgbus_msg_set_id(m, id));
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1700000000123LL));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    cf_flush_ok(bus);

    msgbus_msg_t *in = cf_receive_one(sub);
    ck_assert_msg(cf_payload_is(in, "hello"), "payload changed");
    size_t klen = 0;
    const void *key = msgbus_msg_key(in, &klen);
    ck_assert_msg(key && klen == 8 && memcmp(key, "order-42", 8) == 0, "key changed");
    ck_assert_uint_eq(msgbus_msg_header_count(in), 3);
    ck_assert_pstr_eq(msgbus_msg_header(in, "content-type"), "application/json");
    ck_assert_pstr_eq(msgbus_msg_header(in, "trace.id_v:1"), "a b=c;d");
    ck_assert_pstr_eq(msgbus_msg_header(in, "empty"), "");
    ck_assert_pstr_eq(msgbus_msg_id(in), id);
    ck_assert_int_eq(msgbus_msg_timestamp(in), 1700000000123LL);
    ck_assert_pstr_eq(msgbus_msg_topic(in), topic);
    ck_assert_pstr_eq(msgbus_msg_group(in), group);
    ck_assert_int_eq(msgbus_msg_attempt(in), 1);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(round_trip_keeps_default_id_and_timestamp_and_no_key)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "rtd");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));

    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "x", 1));
    char *id = strdup(msgbus_msg_id(m));
    int64_t ts = msgbus_msg_timestamp(m);
    ck_assert_msg(id && strlen(id) == 36, "msgbus_msg_new gives a UUID id");
    ck_assert_msg(ts > 1600000000000LL, "msgbus_msg_new stamps the current time");
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    cf_flush_ok(bus);

    msgbus_msg_t *in = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(in), id);
    ck_assert_int_eq(msgbus_msg_timestamp(in), ts);
    size_t klen = 99;
    ck_assert_msg(msgbus_msg_key(in, &klen) == NULL, "a keyless message arrives without key");
    ck_assert_uint_eq(msgbus_msg_header_count(in), 0);
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    free(id);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* msgbus_msg_partition/offset/redelivered: on Kafka the partition and
 * offset a message was read from (one key: one partition, offsets rising);
 * -1 where the backend has no position; the redelivered flag only where
 * the broker says so (RabbitMQ, after an unacked delivery). */
START_TEST(position_says_where_a_message_came_from)
{
    enum { N = 5 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "pos");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *made = NULL;
    tu_ck_ok(msgbus_msg_new(&made, "x", 1));
    ck_assert_int_eq(msgbus_msg_partition(made), -1);
    ck_assert_int_eq(msgbus_msg_offset(made), -1);
    ck_assert_int_eq(msgbus_msg_redelivered(made), 0);
    msgbus_msg_free(made);
    ck_assert_int_eq(msgbus_msg_partition(NULL), -1);
    ck_assert_int_eq(msgbus_msg_offset(NULL), -1);
    ck_assert_int_eq(msgbus_msg_redelivered(NULL), 0);
    for (int i = 0; i < N; i++)
        free(cf_publish(bus, topic, "pk", "p", 1, NULL));
    cf_flush_ok(bus);
    int32_t part = -2;
    int64_t last = -1;
    for (int i = 0; i < N; i++) {
        msgbus_msg_t *in = cf_receive_one(sub);
        int32_t p = msgbus_msg_partition(in);
        int64_t o = msgbus_msg_offset(in);
        printf("  position[%s]: partition %d offset %lld redelivered %d\n", cf_backend, (int)p,
               (long long)o, msgbus_msg_redelivered(in));
        if (cf_is("kafka")) {
            ck_assert_int_ge(p, 0);
            ck_assert_int_lt(p, 3);
            ck_assert_msg(part == -2 || p == part, "one key, one partition (%d, %d)", part, p);
            ck_assert_msg(o > last, "offsets rise (%lld after %lld)", (long long)o,
                          (long long)last);
            part = p;
            last = o;
        } else {
            ck_assert_int_eq(p, -1);
            ck_assert_int_eq(o, -1);
        }
        ck_assert_int_eq(msgbus_msg_redelivered(in), 0);
        if (i < N - 1)
            tu_ck_ok(msgbus_ack(in));
        msgbus_msg_free(in); /* the last one unsettled: delivered again */
    }
    msgbus_sub_close(sub);
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *again = cf_receive_one(sub);
    printf("  again[%s]: partition %d offset %lld redelivered %d\n", cf_backend,
           (int)msgbus_msg_partition(again), (long long)msgbus_msg_offset(again),
           msgbus_msg_redelivered(again));
    ck_assert_int_eq(msgbus_msg_redelivered(again), cf_is("amqp") || cf_is("sqlite") ? 1 : 0);
    if (cf_is("kafka")) {
        ck_assert_int_eq(msgbus_msg_partition(again), part);
        ck_assert_int_eq(msgbus_msg_offset(again), last);
    }
    tu_ck_ok(msgbus_ack(again));
    msgbus_msg_free(again);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* Publishes `len` bytes and checks they come back byte for byte. */
static void cf_payload_round_trip(const unsigned char *payload, size_t len, const void *key,
                                  size_t klen)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "pl");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, len));
    if (key)
        tu_ck_ok(msgbus_msg_set_key(m, key, klen));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    cf_flush_ok(bus);

    msgbus_msg_t *in = cf_receive_one(sub);
    size_t got = 12345;
    const unsigned char *p = msgbus_msg_payload(in, &got);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(got, len);
    ck_assert_msg(len == 0 || memcmp(p, payload, len) == 0, "payload bytes changed");
    if (key) {
        size_t gk = 0;
        const void *k = msgbus_msg_key(in, &gk);
        ck_assert_msg(k && gk == klen && memcmp(k, key, klen) == 0, "binary key changed");
    }
    tu_ck_ok(msgbus_ack(in));
    msgbus_msg_free(in);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}

START_TEST(binary_payload_with_nul_bytes_round_trips)
{
    unsigned char payload[1024];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (unsigned char)(i % 256); /* NULs at 0, 256, 512, 768 */
    static const unsigned char key[] = {'k', 0, 'e', 0xff, 'y'};
    cf_payload_round_trip(payload, sizeof payload, key, sizeof key);
}
END_TEST

START_TEST(empty_payload_round_trips)
{
    cf_payload_round_trip(NULL, 0, NULL, 0);
}
END_TEST

START_TEST(one_mib_payload_round_trips)
{
    size_t len = 1u << 20;
    unsigned char *payload = malloc(len);
    ck_assert_ptr_nonnull(payload);
    for (size_t i = 0; i < len; i++)
        payload[i] = (unsigned char)((i % 251) ^ (i >> 12)); /* every byte value, NULs too */
    cf_payload_round_trip(payload, len, NULL, 0);
    free(payload);
}
END_TEST

/* ------------------------------------------------------------ groups */

/* Receives numbered messages from..to-1 on `sub`, each exactly once and
 * nothing else; acks them. */
static void cf_receive_range(msgbus_sub_t *sub, int from, int to, const char *who)
{
    int n = to - from;
    char *seen = calloc((size_t)n, 1);
    ck_assert_ptr_nonnull(seen);
    int got = 0, dups = 0;
    int64_t deadline = tu_now_ms() + CF_FIRST_MS + 30000;
    while (got < n && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(sub, got ? CF_NEXT_MS : CF_FIRST_MS);
        if (!m)
            break;
        int i = cf_payload_number(m) - from;
        ck_assert_msg(i >= 0 && i < n, "%s: unexpected message n=%d", who, i + from);
        if (seen[i])
            dups++;
        else
            got++;
        seen[i] = 1;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    printf("  %s: %d of %d distinct, %d duplicates\n", who, got, n, dups);
    free(seen);
    msgbus_msg_t *extra = tu_receive(sub, 300);
    ck_assert_msg(extra == NULL, "%s: an unexpected extra message", who);
    ck_assert_msg(got == n, "%s received %d of %d messages", who, got, n);
    ck_assert_msg(dups == 0, "%s received %d duplicates", who, dups);
}

START_TEST(two_groups_each_receive_every_message)
{
    char topic[128], g1[128], g2[128];
    cf_name(topic, sizeof topic, "2g");
    cf_name(g1, sizeof g1, "ga");
    cf_name(g2, sizeof g2, "gb");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *s1 = NULL, *s2 = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, g1, &s1));
    tu_ck_ok(msgbus_subscribe(bus, topic, g2, &s2));
    cf_publish_numbered(bus, topic, 0, 50, true);
    cf_flush_ok(bus);
    cf_receive_range(s1, 0, 50, "group A");
    cf_receive_range(s2, 0, 50, "group B");
    msgbus_sub_close(s1);
    msgbus_sub_close(s2);
    msgbus_close(bus);
}
END_TEST

START_TEST(group_members_share_messages_and_none_reaches_both)
{
    enum { N = 200 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "share");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *a = NULL, *b = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &a));
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &b));
    cf_publish_numbered(bus, topic, 0, N, true); /* N distinct keys spread over partitions */
    cf_flush_ok(bus);

    struct cf_ids ids_a, ids_b;
    cf_ids_init(&ids_a, N);
    cf_ids_init(&ids_b, N);
    int got_a = 0, got_b = 0, both = 0, dups = 0;
    int64_t deadline = tu_now_ms() + 60000;
    while (got_a + got_b < N && tu_now_ms() < deadline) {
        msgbus_sub_t *subs[2] = {a, b};
        for (int s = 0; s < 2; s++) {
            msgbus_msg_t *m = tu_receive(subs[s], 100);
            if (!m)
                continue;
            struct cf_ids *mine = s == 0 ? &ids_a : &ids_b;
            struct cf_ids *other = s == 0 ? &ids_b : &ids_a;
            if (cf_ids_has(other, msgbus_msg_id(m)))
                both++;
            if (!cf_ids_add(mine, msgbus_msg_id(m)))
                dups++;
            else if (s == 0)
                got_a++;
            else
                got_b++;
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
    }
    /* A message delivered to both would show up late: give it a moment. */
    for (int s = 0; s < 2; s++) {
        msgbus_msg_t *m;
        while ((m = tu_receive(s == 0 ? a : b, 500)) != NULL) {
            both++;
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
    }
    printf("  group members: A got %d, B got %d (of %d), %d reached both, %d dup\n", got_a,
           got_b, N, both, dups);
    cf_ids_free(&ids_a);
    cf_ids_free(&ids_b);
    ck_assert_msg(got_a + got_b == N, "members received %d of %d", got_a + got_b, N);
    ck_assert_msg(got_a > 0 && got_b > 0, "both members get some (A %d, B %d)", got_a, got_b);
    ck_assert_msg(both == 0 && dups == 0, "%d messages reached both members, %d twice", both,
                  dups);
    msgbus_sub_close(a);
    msgbus_sub_close(b);
    msgbus_close(bus);
}
END_TEST

START_TEST(broadcast_subscriber_receives_every_message_after_it_subscribed)
{
    char topic[128];
    cf_name(topic, sizeof topic, "bc");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *x = NULL, *y = NULL, *late = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, NULL, &x));
    tu_ck_ok(msgbus_subscribe(bus, topic, NULL, &y));
    cf_publish_numbered(bus, topic, 0, 30, true);
    cf_flush_ok(bus);
    /* Broadcast subscribers do not share: each one sees all 30. */
    cf_receive_range(x, 0, 30, "broadcast X");
    cf_receive_range(y, 0, 30, "broadcast Y");

    tu_ck_ok(msgbus_subscribe(bus, topic, NULL, &late));
    cf_publish_numbered(bus, topic, 30, 40, true);
    cf_flush_ok(bus);
    int got = 0, early = 0;
    int64_t deadline = tu_now_ms() + 60000;
    while (got < 10 && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(late, got ? CF_NEXT_MS : CF_FIRST_MS);
        if (!m)
            break;
        int i = cf_payload_number(m);
        ck_assert_ptr_null(msgbus_msg_group(m));
        if (i < 30)
            early++;
        else
            got++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_msg_t *m;
    while ((m = tu_receive(late, 500)) != NULL) { /* nothing older may trail in */
        if (cf_payload_number(m) < 30)
            early++;
        msgbus_msg_free(m);
    }
    printf("  late broadcast subscriber: %d of 10 new, %d from before it subscribed\n", got,
           early);
    ck_assert_int_eq(got, 10);
    ck_assert_msg(early == 0, "late broadcast subscriber got %d older messages", early);
    cf_receive_range(x, 30, 40, "broadcast X, later messages");
    msgbus_sub_close(x);
    msgbus_sub_close(y);
    msgbus_sub_close(late);
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------------------------- order */

START_TEST(per_key_order_holds_for_ten_thousand_messages)
{
    enum { N = 10000, KEYS = 8 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "order");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    int next_pub[KEYS] = {0};
    for (int i = 0; i < N; i++) {
        int k = (i * 7 + i / 3) % KEYS; /* interleaved, not a plain rotation */
        char key[16], payload[32];
        snprintf(key, sizeof key, "key-%d", k);
        snprintf(payload, sizeof payload, "%d:%d", k, next_pub[k]++);
        cf_publish_str(bus, topic, key, payload);
    }
    cf_flush_ok(bus);

    int next_seen[KEYS] = {0};
    int got = 0, out_of_order = 0, wrong_key = 0;
    int64_t deadline = tu_now_ms() + 100000;
    while (got < N && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(sub, got ? CF_NEXT_MS : CF_FIRST_MS);
        if (!m)
            break;
        size_t len = 0, klen = 0;
        const char *p = msgbus_msg_payload(m, &len);
        char buf[32];
        ck_assert_uint_lt(len, sizeof buf);
        memcpy(buf, p, len);
        buf[len] = '\0';
        int k = -1, seq = -1;
        ck_assert_int_eq(sscanf(buf, "%d:%d", &k, &seq), 2);
        ck_assert(k >= 0 && k < KEYS);
        char key[16];
        snprintf(key, sizeof key, "key-%d", k);
        const void *kp = msgbus_msg_key(m, &klen);
        if (!kp || klen != strlen(key) || memcmp(kp, key, klen) != 0)
            wrong_key++;
        if (seq != next_seen[k])
            out_of_order++;
        next_seen[k] = seq + 1;
        got++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    printf("  per-key order: received %d of %d over %d keys, %d out of order, %d wrong key\n",
           got, N, KEYS, out_of_order, wrong_key);
    ck_assert_int_eq(got, N);
    ck_assert_int_eq(out_of_order, 0);
    ck_assert_int_eq(wrong_key, 0);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------------------- ack and nack */

START_TEST(acked_messages_are_not_delivered_again_after_reconnect)
{
    enum { N = 20 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "ack");
    cf_name(group, sizeof group, "g");
    msgbus_t *pub = cf_open();
    msgbus_t *c1 = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(c1, topic, group, &sub));
    cf_publish_numbered(pub, topic, 0, N, true);
    cf_flush_ok(pub);

    /* Ack the first half received, leave the rest unsettled. Acking a
     * received prefix keeps this meaningful on Kafka, whose commits are
     * per-partition prefixes: if acks did nothing, the next consumer would
     * get the acked ones again; if close lost the unacked, it would not
     * get those. */
    struct cf_ids acked, unacked;
    cf_ids_init(&acked, N);
    cf_ids_init(&unacked, N);
    for (int got = 0; got < N; got++) {
        msgbus_msg_t *m = tu_receive(sub, got ? CF_NEXT_MS : CF_FIRST_MS);
        ck_assert_msg(m != NULL, "first consumer received %d of %d", got, N);
        if (got < N / 2) {
            tu_ck_ok(msgbus_ack(m));
            cf_ids_add(&acked, msgbus_msg_id(m));
        } else {
            cf_ids_add(&unacked, msgbus_msg_id(m));
        }
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub);
    msgbus_close(c1);

    msgbus_t *c2 = cf_open();
    tu_ck_ok(msgbus_subscribe(c2, topic, group, &sub));
    char *marker = cf_publish(pub, topic, "marker", "marker", 6, NULL);
    cf_flush_ok(pub);
    struct cf_ids again;
    cf_ids_init(&again, N + 1);
    int acked_again = 0, unacked_again = 0;
    bool marker_seen = false;
    int64_t deadline = tu_now_ms() + 60000;
    while (!(marker_seen && unacked_again == N - N / 2) && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(sub, CF_FIRST_MS);
        if (!m)
            break;
        const char *id = msgbus_msg_id(m);
        if (strcmp(id, marker) == 0)
            marker_seen = true;
        else if (cf_ids_has(&acked, id))
            acked_again++;
        else if (cf_ids_has(&unacked, id) && cf_ids_add(&again, id))
            unacked_again++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_msg_t *m;
    while ((m = tu_receive(sub, 1000)) != NULL) { /* stragglers */
        if (cf_ids_has(&acked, msgbus_msg_id(m)))
            acked_again++;
        msgbus_msg_free(m);
    }
    printf("  after reconnect: %d acked came back (want 0), %d of %d unacked came back, "
           "marker %s\n",
           acked_again, unacked_again, N - N / 2, marker_seen ? "seen" : "MISSING");
    ck_assert_msg(marker_seen, "the marker published after reconnect never arrived");
    ck_assert_msg(acked_again == 0, "%d acked messages were delivered again", acked_again);
    ck_assert_msg(unacked_again == N - N / 2, "only %d of %d unacked messages came back",
                  unacked_again, N - N / 2);
    free(marker);
    cf_ids_free(&acked);
    cf_ids_free(&unacked);
    cf_ids_free(&again);
    msgbus_sub_close(sub);
    msgbus_close(c2);
    msgbus_close(pub);
}
END_TEST

START_TEST(nacked_message_is_delivered_again_with_attempt_raised)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "nack");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, "retry me\0!", 10));
    tu_ck_ok(msgbus_msg_set_key(m, "k", 1));
    tu_ck_ok(msgbus_msg_set_header(m, "h", "v"));
    char *id = strdup(msgbus_msg_id(m));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    cf_flush_ok(bus);

    msgbus_msg_t *first = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(first), id);
    ck_assert_int_eq(msgbus_msg_attempt(first), 1);
    tu_ck_ok(msgbus_nack(first));
    msgbus_msg_free(first);

    msgbus_msg_t *second = cf_receive_one(sub);
    size_t len = 0;
    const void *p = msgbus_msg_payload(second, &len);
    ck_assert_pstr_eq(msgbus_msg_id(second), id);
    ck_assert_msg(len == 10 && memcmp(p, "retry me\0!", 10) == 0, "payload changed on redelivery");
    ck_assert_pstr_eq(msgbus_msg_header(second, "h"), "v");
    ck_assert_int_eq(msgbus_msg_attempt(second), 2);
    tu_ck_ok(msgbus_ack(second));
    msgbus_msg_free(second);

    msgbus_msg_t *third = tu_receive(sub, 2000);
    ck_assert_msg(third == NULL, "an acked message came a third time (attempt %d)",
                  msgbus_msg_attempt(third));
    free(id);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

START_TEST(unacked_messages_go_to_the_remaining_member_when_one_closes)
{
    enum { N = 40 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "handover");
    cf_name(group, sizeof group, "g");
    msgbus_t *pub = cf_open();
    msgbus_t *ca = cf_open(), *cb = cf_open();
    msgbus_sub_t *a = NULL, *b = NULL;
    tu_ck_ok(msgbus_subscribe(ca, topic, group, &a));
    tu_ck_ok(msgbus_subscribe(cb, topic, group, &b));
    cf_publish_numbered(pub, topic, 0, N, true);
    cf_flush_ok(pub);

    /* A holds what it gets without settling; B acks what it gets. */
    struct cf_ids held, acked_by_b;
    cf_ids_init(&held, N);
    cf_ids_init(&acked_by_b, N);
    msgbus_msg_t *held_msgs[N];
    int nheld = 0, nb = 0;
    int64_t deadline = tu_now_ms() + 60000;
    while (nheld + nb < N && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(a, 100);
        if (m) {
            cf_ids_add(&held, msgbus_msg_id(m));
            held_msgs[nheld++] = m;
        }
        if ((m = tu_receive(b, 100)) != NULL) {
            cf_ids_add(&acked_by_b, msgbus_msg_id(m));
            nb++;
            tu_ck_ok(msgbus_ack(m));
            msgbus_msg_free(m);
        }
    }
    printf("  before close: A holds %d unacked, B acked %d (of %d)\n", nheld, nb, N);
    ck_assert_msg(nheld + nb == N, "members received %d of %d", nheld + nb, N);
    ck_assert_msg(nheld > 0, "member A received nothing to hand over");

    for (int i = 0; i < nheld; i++)
        msgbus_msg_free(held_msgs[i]); /* freed unsettled: not an ack */
    msgbus_sub_close(a);
    msgbus_close(ca);

    struct cf_ids handed;
    cf_ids_init(&handed, N);
    int got = 0, acked_again = 0;
    deadline = tu_now_ms() + 60000;
    while (got < nheld && tu_now_ms() < deadline) {
        msgbus_msg_t *m = tu_receive(b, CF_FIRST_MS);
        if (!m)
            break;
        const char *id = msgbus_msg_id(m);
        if (cf_ids_has(&acked_by_b, id))
            acked_again++;
        else if (cf_ids_has(&held, id) && cf_ids_add(&handed, id))
            got++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    printf("  after A closed: B received %d of A's %d, %d of its own acked again\n", got, nheld,
           acked_again);
    ck_assert_msg(got == nheld, "B received %d of the %d messages A left unacked", got, nheld);
    ck_assert_msg(acked_again == 0, "%d messages B had acked came again", acked_again);
    cf_ids_free(&held);
    cf_ids_free(&acked_by_b);
    cf_ids_free(&handed);
    msgbus_sub_close(b);
    msgbus_close(cb);
    msgbus_close(pub);
}
END_TEST

START_TEST(ack_twice_is_a_state_error_and_ack_after_close_is_closed)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "settle");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    /* One key: one partition on Kafka, so "first acked, second not" is a
     * commit point the next member must start from. */
    char *id1 = cf_publish(bus, topic, "same", "one", 3, NULL);
    char *id2 = cf_publish(bus, topic, "same", "two", 3, NULL);
    cf_flush_ok(bus);

    msgbus_msg_t *m1 = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(m1), id1);
    tu_ck_ok(msgbus_ack(m1));
    tu_ck_err(msgbus_ack(m1), MSGBUS_ERR_STATE);
    ck_assert_msg(msgbus_last_error()[0], "ack twice says why");
    tu_ck_err(msgbus_nack(m1), MSGBUS_ERR_STATE);
    msgbus_msg_free(m1);

    msgbus_msg_t *m2 = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(m2), id2);
    msgbus_sub_close(sub);
    ck_assert_pstr_eq(msgbus_msg_id(m2), id2); /* still valid until freed */
    tu_ck_err(msgbus_ack(m2), MSGBUS_ERR_CLOSED);
    ck_assert_msg(msgbus_last_error()[0], "ack after close says why");
    tu_ck_err(msgbus_nack(m2), MSGBUS_ERR_CLOSED);
    msgbus_msg_free(m2);

    /* The refused ack changed nothing: the message is delivered again. */
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    msgbus_msg_t *again = cf_receive_one(sub);
    ck_assert_pstr_eq(msgbus_msg_id(again), id2);
    tu_ck_ok(msgbus_ack(again));
    msgbus_msg_free(again);
    free(id1);
    free(id2);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* ----------------------------------------------------------- declare */

START_TEST(declare_keeps_messages_for_a_group_that_subscribes_later)
{
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "decl");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    tu_ck_ok(msgbus_declare(bus, topic, group));
    tu_ck_ok(msgbus_declare(bus, topic, group)); /* idempotent */
    cf_publish_numbered(bus, topic, 0, 10, true);
    cf_flush_ok(bus);
    msgbus_t *later = cf_open();
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(later, topic, group, &sub));
    cf_receive_range(sub, 0, 10, "group declared before publishing");
    msgbus_sub_close(sub);
    msgbus_close(later);
    msgbus_close(bus);
}
END_TEST

/* ------------------------------------------------------------- flush */

START_TEST(flush_returns_ok_only_after_every_message_is_confirmed)
{
    enum { N = 100 };
    char topic[128], group[128];
    cf_name(topic, sizeof topic, "flush");
    cf_name(group, sizeof group, "g");
    msgbus_t *bus = cf_open();
    tu_ck_ok(msgbus_declare(bus, topic, group)); /* so RabbitMQ routes them */
    struct cf_reports rep;
    cf_reports_init(&rep, topic, N);
    struct cf_ids sent;
    cf_ids_init(&sent, N);
    for (int i = 0; i < N; i++) {
        char payload[32];
        snprintf(payload, sizeof payload, "n=%d", i);
        char *id = cf_publish(bus, topic, NULL, payload, strlen(payload), &rep);
        cf_ids_add(&sent, id);
        free(id);
    }
    /* Callbacks run only inside poll / flush / close, on the caller. */
    ck_assert_int_eq(rep.calls, 0);
    size_t failed = 99;
    msgbus_err_t e = msgbus_flush(bus, 30000, &failed);
    printf("  flush: %s; %d callbacks (%d ok, %d failed), outstanding %zu\n", msgbus_err_name(e),
           rep.calls, rep.ok, rep.failed, msgbus_outstanding(bus));
    ck_assert_msg(e == MSGBUS_OK, "flush: %s (%s)", msgbus_err_name(e), msgbus_last_error());
    ck_assert_uint_eq(failed, 0);
    ck_assert_int_eq(rep.calls, N);
    ck_assert_int_eq(rep.ok, N);
    ck_assert_int_eq(rep.bad_topic, 0);
    ck_assert_int_eq(rep.bad_error_text, 0);
    ck_assert_uint_eq(msgbus_outstanding(bus), 0);
    ck_assert_uint_eq(rep.ids.n, N);
    for (size_t i = 0; i < sent.cap; i++)
        if (sent.slot[i])
            ck_assert_msg(cf_ids_has(&rep.ids, sent.slot[i]), "no report for %s", sent.slot[i]);
    /* Exactly once: nothing more arrives later. */
    int served = -1;
    tu_ck_ok(msgbus_poll(bus, 200, &served));
    ck_assert_int_eq(served, 0);
    ck_assert_int_eq(rep.calls, N);
    /* And what was confirmed is there for the declared group. */
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    cf_receive_range(sub, 0, N, "declared group after flush");
    cf_ids_free(&rep.ids);
    cf_ids_free(&sent);
    msgbus_sub_close(sub);
    msgbus_close(bus);
}
END_TEST

/* -------------------------------------------------------------- main */

static void cf_add(Suite *s, const char *name, const TTest *t, int timeout_s)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, timeout_s);
    tcase_add_test(tc, t);
    suite_add_tcase(s, tc);
}

int main(int argc, char **argv)
{
    if (argc != 2 ||
        (strcmp(argv[1], "mem") && strcmp(argv[1], "kafka") && strcmp(argv[1], "amqp") &&
         strcmp(argv[1], "sqlite"))) {
        fprintf(stderr, "usage: %s mem|kafka|amqp|sqlite\n", argv[0]);
        return 2;
    }
    cf_backend = argv[1];
    /* A failing check ends the test's process at once: line-buffer stdout
     * so the counts it printed are not lost with it. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* CF_DEBUG=1: msgbus's debug lines (with the URL's debug=… librdkafka's) on stderr. */
    if (getenv("CF_DEBUG"))
        msgbus_set_log(NULL, NULL, MSGBUS_LOG_DEBUG);
    if (cf_is("mem")) {
        snprintf(cf_url, sizeof cf_url, "mem://conformance-%d", (int)getpid());
    } else if (cf_is("sqlite")) {
        /* A file of its own per run, in $TMPDIR; retain=1000 so that
         * start positions and resets have a past to go back to (retain=
         * is the file's: every bus on it shares it). */
        const char *tmp = getenv("TMPDIR");
        snprintf(cf_url, sizeof cf_url, "sqlite://%s/msgbus-conformance-%d.db?retain=1000",
                 tmp && *tmp == '/' ? tmp : "/tmp", (int)getpid());
    } else if (cf_is("kafka")) {
        /* A 1 MiB payload is over Kafka's default 1,000,000-byte producer
         * limit and the broker's 1 MiB batch limit: raise the first,
         * compress to pass the second (docs/conformance.md). */
        cf_url_with(cf_url, sizeof cf_url, tu_broker_url("kafka"),
                    "message.max.bytes=2097152&compression.type=lz4");
    } else {
        cf_url_with(cf_url, sizeof cf_url, tu_broker_url("amqp"), NULL);
    }
    char shown[sizeof cf_url];
    msgbus_redact(cf_url, shown, sizeof shown); /* the SASL run's URL has a password */
    printf("conformance: backend %s, URL %s\n", cf_backend, shown);

    Suite *s = suite_create(cf_backend);
    cf_add(s, "round_trip", round_trip_keeps_payload_key_headers_id_timestamp, 90);
    cf_add(s, "round_trip_defaults", round_trip_keeps_default_id_and_timestamp_and_no_key, 90);
    cf_add(s, "position", position_says_where_a_message_came_from, 90);
    cf_add(s, "binary_payload", binary_payload_with_nul_bytes_round_trips, 90);
    cf_add(s, "empty_payload", empty_payload_round_trips, 90);
    cf_add(s, "one_mib_payload", one_mib_payload_round_trips, 90);
    cf_add(s, "two_groups", two_groups_each_receive_every_message, 120);
    cf_add(s, "group_members_share", group_members_share_messages_and_none_reaches_both, 120);
    cf_add(s, "broadcast", broadcast_subscriber_receives_every_message_after_it_subscribed, 120);
    cf_add(s, "per_key_order", per_key_order_holds_for_ten_thousand_messages, 150);
    cf_add(s, "acked_not_again", acked_messages_are_not_delivered_again_after_reconnect, 120);
    cf_add(s, "nack", nacked_message_is_delivered_again_with_attempt_raised, 90);
    cf_add(s, "handover", unacked_messages_go_to_the_remaining_member_when_one_closes, 150);
    cf_add(s, "settle_errors", ack_twice_is_a_state_error_and_ack_after_close_is_closed, 90);
    cf_add(s, "declare", declare_keeps_messages_for_a_group_that_subscribes_later, 90);
    cf_add(s, "flush", flush_returns_ok_only_after_every_message_is_confirmed, 90);
    cf_add(s, "unreachable", unreachable_broker_fails_clearly_within_the_timeout, 60);
    cf_add(s, "bad_input", bad_input_gives_clear_errors_and_changes_nothing, 60);
    cf_add(s, "fd", fd_is_readable_while_work_waits_and_not_after, 90);
    cf_add(s, "retry_dlq", retry_counts_attempts_backs_off_then_dead_letters, 120);
    cf_add(s, "poison_key", poison_message_delays_only_its_own_key, 120);
    cf_add(s, "dlq_replay", dead_letter_at_once_then_replay_moves_it_back, 120);
    cf_add(s, "retry_options", retry_options_are_checked_and_change_nothing_when_wrong, 60);
    cf_add(s, "stats", stats_count_known_traffic_and_lag_drains_to_zero, 120);
    cf_add(s, "start_positions", start_positions_replay_what_the_backend_keeps, 240);
    cf_add(s, "group_reset", group_reset_moves_a_group_without_members, 180);
    cf_add(s, "pause", pause_holds_everything_back_until_resume, 120);
    cf_add(s, "receive_batch", receive_batch_takes_up_to_max_in_key_order, 90);
    cf_add(s, "caps", caps_are_reported_alike_and_enforced_by_require, 120);
    cf_add(s, "caps_key_order", key_order_claimed_holds_across_members, 180);
    cf_add(s, "key_order_killed", key_order_holds_with_three_members_and_one_killed, 240);
    cf_add(s, "caps_where", positions_and_redelivered_flag_as_claimed, 120);
    cf_add(s, "caps_list_lag", list_and_lag_as_claimed, 150);
    cf_add(s, "caps_shared", shared_claimed_reaches_another_process, 120);
    cf_add(s, "caps_max_message", max_message_size_is_enforced, 90);
    int rc = tu_run_suite(s);
    if (cf_is("sqlite")) { /* the run's file, its -wal and -shm */
        const char *q = strchr(cf_url, '?');
        char path[1100];
        snprintf(path, sizeof path, "%.*s", (int)(q - cf_url - 9), cf_url + 9);
        const char *sfx[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
            char f[1200];
            snprintf(f, sizeof f, "%s%s", path, sfx[i]);
            unlink(f);
        }
    }
    return rc;
}
