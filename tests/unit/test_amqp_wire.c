/*
 * test_amqp_wire.c — the frames msgbus encodes itself (amqp_wire.c) are the
 * bytes rabbitmq-c 0.11 writes for the same amqp_basic_publish /
 * amqp_basic_ack, without a broker: rabbitmq-c writes into one end of a
 * socketpair (amqp_tcp_socket_set_sockfd), msgbus's batch into another, and
 * the bytes read back are compared — a message as msgbus builds it (headers
 * table, id, timestamp, persistent), every basic property, an empty body,
 * bodies split over several frames (copied and referenced), many publishes
 * and acks in one write, a write through a full socket (partial writes and
 * EAGAIN), a write that cannot wait and is finished later, a broken
 * socket, and what cannot be encoded.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backends/amqp.h"
#include "testutil.h"

/* Reads one end of a socketpair on a thread of its own until the other end
 * closes (socket buffers are ~200 KiB: the writers need a reader). A slow
 * one reads 3000 bytes at a time with pauses, so the writer meets a full
 * socket. */
struct collector {
    int fd;
    bool slow;
    unsigned char *got;
    size_t len, cap;
    pthread_t t;
};

static void *collect(void *arg)
{
    struct collector *c = arg;
    for (;;) {
        if (c->len == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 1 << 16;
            c->got = realloc(c->got, c->cap);
            if (!c->got)
                abort();
        }
        size_t want = c->cap - c->len;
        if (c->slow) {
            usleep(100);
            if (want > 3000)
                want = 3000;
        }
        ssize_t r = recv(c->fd, c->got + c->len, want, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        c->len += (size_t)r;
    }
    return NULL;
}

/* A socketpair: sv[0] to write (non-blocking when `nonblock`, as
 * rabbitmq-c's own sockets are), sv[1] read by `c`. */
static int collector_start(struct collector *c, bool nonblock, bool slow)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    if (slow) {
        int small = 4096;
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    }
    if (nonblock)
        fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    memset(c, 0, sizeof *c);
    c->fd = sv[1];
    c->slow = slow;
    ck_assert_int_eq(pthread_create(&c->t, NULL, collect, c), 0);
    return sv[0];
}

/* After the writing end is closed: everything that was written. */
static void collector_join(struct collector *c)
{
    pthread_join(c->t, NULL);
    close(c->fd);
}

/* A rabbitmq-c connection writing into a socketpair. */
struct raw {
    amqp_connection_state_t conn;
    struct collector c;
};

static void raw_open(struct raw *r, int frame_max)
{
    r->conn = amqp_new_connection();
    /* rabbitmq-c tunes only between frames: the protocol header a broker
     * sends first takes a new connection there, as a login would. */
    unsigned char hdr[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};
    amqp_frame_t f;
    ck_assert_int_eq(amqp_handle_input(r->conn, (amqp_bytes_t){8, hdr}, &f), 8);
    ck_assert_int_eq(amqp_tune_connection(r->conn, 0, frame_max, 0), AMQP_STATUS_OK);
    amqp_socket_t *s = amqp_tcp_socket_new(r->conn);
    ck_assert_ptr_nonnull(s);
    amqp_tcp_socket_set_sockfd(s, collector_start(&r->c, false, false));
    ck_assert_int_eq(amqp_get_frame_max(r->conn), frame_max);
}

/* Closes the connection (and its socket): r->c holds the bytes. */
static void raw_close(struct raw *r)
{
    amqp_destroy_connection(r->conn);
    collector_join(&r->c);
}

/* msgbus's batch written through a socketpair: the bytes in *c. */
static void wire_out(struct mb_amqp_wire *w, struct collector *c, bool slow)
{
    int fd = collector_start(c, true, slow);
    ck_assert_int_eq(mb_amqp_wire_write(w, fd), 0);
    ck_assert_uint_eq(w->count, 0);
    ck_assert_uint_eq(mb_amqp_wire_bytes(w), 0);
    close(fd);
    collector_join(c);
}

static void ck_same(const unsigned char *a, size_t an, const unsigned char *b, size_t bn)
{
    ck_assert_uint_eq(an, bn);
    for (size_t i = 0; i < an; i++)
        if (a[i] != b[i])
            ck_abort_msg("byte %zu of %zu differs: msgbus 0x%02x, rabbitmq-c 0x%02x", i, an,
                         a[i], b[i]);
}

struct pub {
    const char *exchange, *rk;
    bool mandatory;
    const amqp_basic_properties_t *props;
    amqp_bytes_t body;
};

/* Publishes `n` messages both ways (and an ack after each when `acks`)
 * and compares the bytes; `slow`: msgbus writes into a full socket. */
static void compare_ex(const struct pub *p, size_t n, int frame_max, bool acks, bool slow)
{
    struct raw r;
    raw_open(&r, frame_max);
    struct mb_amqp_wire w = {0};
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_eq(amqp_basic_publish(r.conn, 1, amqp_cstring_bytes(p[i].exchange),
                                            amqp_cstring_bytes(p[i].rk), p[i].mandatory, 0,
                                            p[i].props, p[i].body),
                         AMQP_STATUS_OK);
        ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes(p[i].exchange),
                                              amqp_cstring_bytes(p[i].rk), p[i].mandatory, 0,
                                              p[i].props, p[i].body, (size_t)frame_max),
                         AMQP_STATUS_OK);
        if (acks) {
            ck_assert_int_eq(amqp_basic_ack(r.conn, 3, 1000 + i, i % 2), AMQP_STATUS_OK);
            ck_assert_int_eq(mb_amqp_wire_ack(&w, 3, 1000 + i, i % 2), AMQP_STATUS_OK);
        }
    }
    ck_assert_uint_eq(w.count, acks ? 2 * n : n);
    raw_close(&r);
    ck_assert_uint_eq(mb_amqp_wire_bytes(&w), r.c.len);
    struct collector c;
    wire_out(&w, &c, slow);
    ck_same(c.got, c.len, r.c.got, r.c.len);
    free(c.got);
    free(r.c.got);
    mb_amqp_wire_free(&w);
}

static void compare(const struct pub *p, size_t n, int frame_max, bool acks)
{
    compare_ex(p, n, frame_max, acks, false);
}

/* A message as msgbus publishes it: persistent, id, timestamp, headers. */
static struct mb_amqp_out *msgbus_out(size_t body_len)
{
    char *payload = malloc(body_len + 1);
    for (size_t i = 0; i < body_len; i++)
        payload[i] = (char)('a' + i % 26);
    msgbus_msg_t *m;
    tu_ck_ok(msgbus_msg_new(&m, payload, body_len));
    tu_ck_ok(msgbus_msg_set_id(m, "wire-1"));
    tu_ck_ok(msgbus_msg_set_key(m, "k-1", 3));
    tu_ck_ok(msgbus_msg_set_header(m, "trace", "abc"));
    tu_ck_ok(msgbus_msg_set_timestamp(m, 1700000000123LL));
    struct mb_amqp_out *o = NULL;
    tu_ck_ok(mb_amqp_out_new(&o, "orders", NULL, 0, m, 2, false, 131072));
    msgbus_msg_free(m);
    free(payload);
    return o;
}

START_TEST(a_msgbus_publish_is_rabbitmq_c_s_bytes)
{
    struct mb_amqp_out *o = msgbus_out(64);
    ck_assert(o->props._flags & AMQP_BASIC_HEADERS_FLAG);
    ck_assert_int_gt(o->props.headers.num_entries, 2);
    struct pub p = {"orders", "k-1", true, &o->props, o->body};
    compare(&p, 1, 131072, false);
    mb_amqp_out_free(o);
}
END_TEST

START_TEST(every_basic_property_and_table_kind)
{
    amqp_table_entry_t inner[1] = {{amqp_cstring_bytes("n"), {AMQP_FIELD_KIND_I32, {.i32 = 7}}}};
    amqp_field_value_t arr[2] = {{AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}},
                                 {AMQP_FIELD_KIND_F64, {.f64 = 2.5}}};
    amqp_table_entry_t e[5] = {
        {amqp_cstring_bytes("s"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("v")}}},
        {amqp_cstring_bytes("i"), {AMQP_FIELD_KIND_I64, {.i64 = -5}}},
        {amqp_cstring_bytes("t"), {AMQP_FIELD_KIND_TABLE, {.table = {1, inner}}}},
        {amqp_cstring_bytes("a"), {AMQP_FIELD_KIND_ARRAY, {.array = {2, arr}}}},
        {amqp_cstring_bytes("ts"), {AMQP_FIELD_KIND_TIMESTAMP, {.u64 = 1700000000}}},
    };
    amqp_basic_properties_t pr = {0};
    pr._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                AMQP_BASIC_PRIORITY_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
                AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_EXPIRATION_FLAG |
                AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
                AMQP_BASIC_USER_ID_FLAG | AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_CLUSTER_ID_FLAG;
    pr.content_type = amqp_cstring_bytes("application/json");
    pr.content_encoding = amqp_cstring_bytes("gzip");
    pr.headers = (amqp_table_t){5, e};
    pr.delivery_mode = 2;
    pr.priority = 9;
    pr.correlation_id = amqp_cstring_bytes("corr");
    pr.reply_to = amqp_cstring_bytes("replies");
    pr.expiration = amqp_cstring_bytes("60000");
    pr.message_id = amqp_cstring_bytes("id-1");
    pr.timestamp = 1700000000;
    pr.type = amqp_cstring_bytes("order.created");
    pr.user_id = amqp_cstring_bytes("guest");
    pr.app_id = amqp_cstring_bytes("app");
    pr.cluster_id = amqp_cstring_bytes("c1");
    struct pub p[3] = {{"ex", "rk", false, &pr, amqp_cstring_bytes("body")},
                       /* no properties at all: one zero flag word */
                       {"", "queue-name", true, NULL, amqp_cstring_bytes("x")},
                       /* only a few, unrelated in flag order */
                       {"ex", "", false, &(amqp_basic_properties_t){
                            ._flags = AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_PRIORITY_FLAG,
                            .priority = 1, .app_id = amqp_cstring_bytes("z")},
                        amqp_cstring_bytes("y")}};
    compare(p, 3, 131072, false);
}
END_TEST

START_TEST(an_empty_body_has_no_body_frame)
{
    struct mb_amqp_out *o = msgbus_out(0);
    struct pub p = {"orders", "k", true, &o->props, o->body};
    compare(&p, 1, 131072, false);
    struct mb_amqp_wire w = {0};
    ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes("orders"),
                                          amqp_cstring_bytes("k"), true, 0, &o->props,
                                          o->body, 131072),
                     AMQP_STATUS_OK);
    /* method frame, header frame: the last frame is type 2 (header). */
    size_t first = 7 + ((size_t)w.buf[3] << 24 | (size_t)w.buf[4] << 16 |
                        (size_t)w.buf[5] << 8 | w.buf[6]) + 1;
    ck_assert_uint_eq(w.buf[first], AMQP_FRAME_HEADER);
    size_t second = 7 + ((size_t)w.buf[first + 3] << 24 | (size_t)w.buf[first + 4] << 16 |
                         (size_t)w.buf[first + 5] << 8 | w.buf[first + 6]) + 1;
    ck_assert_uint_eq(first + second, mb_amqp_wire_bytes(&w));
    mb_amqp_wire_free(&w);
    mb_amqp_out_free(o);
}
END_TEST

START_TEST(bodies_split_over_frames_as_rabbitmq_c_splits_them)
{
    /* frame_max 4096: 4088 bytes per body frame. 4088 exactly, one more,
     * 10000 (three frames, the last copied), 3000 in one referenced frame
     * at 128 KiB, 300000 over three frames of 128 KiB - 8. */
    size_t sizes[] = {4088, 4089, 10000, 1, 2048, 2049};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct mb_amqp_out *o = msgbus_out(sizes[i]);
        struct pub p = {"orders", "k-1", true, &o->props, o->body};
        compare(&p, 1, 4096, false);
        mb_amqp_out_free(o);
    }
    struct mb_amqp_out *a = msgbus_out(3000), *b = msgbus_out(300000);
    struct pub p[3] = {{"orders", "k", true, &a->props, a->body},
                       {"orders", "k", true, &b->props, b->body},
                       {"orders", "k", true, &a->props, a->body}};
    compare(p, 3, 131072, false);
    mb_amqp_out_free(a);
    mb_amqp_out_free(b);
}
END_TEST

START_TEST(many_publishes_and_acks_in_one_write)
{
    struct mb_amqp_out *o[4] = {msgbus_out(64), msgbus_out(0), msgbus_out(5000),
                                msgbus_out(1024)};
    struct pub p[200];
    for (size_t i = 0; i < 200; i++)
        p[i] = (struct pub){"orders", i % 3 ? "k-1" : "", i % 2 == 0, &o[i % 4]->props,
                            o[i % 4]->body};
    compare(p, 200, 131072, true);
    compare(p, 200, 4096, true);
    for (int i = 0; i < 4; i++)
        mb_amqp_out_free(o[i]);
}
END_TEST

START_TEST(a_full_socket_is_waited_for_and_nothing_is_lost)
{
    struct mb_amqp_out *o[2] = {msgbus_out(64), msgbus_out(70000)};
    struct pub p[60];
    for (size_t i = 0; i < 60; i++)
        p[i] = (struct pub){"orders", "k-1", true, &o[i % 2]->props, o[i % 2]->body};
    compare_ex(p, 60, 131072, true, true);
    mb_amqp_out_free(o[0]);
    mb_amqp_out_free(o[1]);
}
END_TEST

START_TEST(a_write_that_cannot_wait_goes_on_where_it_stopped)
{
    /* mb_amqp_wire_write_now on a socket nobody reads yet: it writes what fits
     * and says -EAGAIN; more publishes are appended behind (as the I/O
     * thread does after a publishing thread's short write); the waiting
     * write then sends the rest once, in order — rabbitmq-c's bytes. */
    struct mb_amqp_out *o[2] = {msgbus_out(70000), msgbus_out(64)};
    struct pub p[4];
    for (size_t i = 0; i < 4; i++)
        p[i] = (struct pub){"orders", "k-1", true, &o[i == 3]->props, o[i == 3]->body};
    struct raw r;
    raw_open(&r, 131072);
    for (size_t i = 0; i < 4; i++)
        ck_assert_int_eq(amqp_basic_publish(r.conn, 1, amqp_cstring_bytes(p[i].exchange),
                                            amqp_cstring_bytes(p[i].rk), p[i].mandatory, 0,
                                            p[i].props, p[i].body),
                         AMQP_STATUS_OK);
    raw_close(&r);

    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    struct mb_amqp_wire w = {0};
    for (size_t i = 0; i < 3; i++)
        ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes(p[i].exchange),
                                              amqp_cstring_bytes(p[i].rk), true, 0, p[i].props,
                                              p[i].body, 131072),
                         AMQP_STATUS_OK);
    size_t all = mb_amqp_wire_bytes(&w);
    ck_assert_int_eq(mb_amqp_wire_write_now(&w, sv[0]), -EAGAIN);
    size_t left = mb_amqp_wire_bytes(&w);
    ck_assert_uint_gt(left, 0);
    ck_assert_uint_lt(left, all); /* some of it went */
    ck_assert_uint_eq(w.count, 3);
    ck_assert_int_eq(mb_amqp_wire_write_now(&w, sv[0]), -EAGAIN);
    ck_assert_uint_eq(mb_amqp_wire_bytes(&w), left); /* still full: nothing lost */
    ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes(p[3].exchange),
                                          amqp_cstring_bytes(p[3].rk), true, 0, p[3].props,
                                          p[3].body, 131072),
                     AMQP_STATUS_OK);
    struct collector c;
    memset(&c, 0, sizeof c);
    c.fd = sv[1];
    ck_assert_int_eq(pthread_create(&c.t, NULL, collect, &c), 0);
    ck_assert_int_eq(mb_amqp_wire_write(&w, sv[0]), 0);
    ck_assert_uint_eq(w.count, 0);
    ck_assert_uint_eq(mb_amqp_wire_bytes(&w), 0);
    close(sv[0]);
    collector_join(&c);
    ck_same(c.got, c.len, r.c.got, r.c.len);
    free(c.got);
    free(r.c.got);
    mb_amqp_wire_free(&w);
    mb_amqp_out_free(o[0]);
    mb_amqp_out_free(o[1]);
}
END_TEST

START_TEST(a_broken_socket_is_an_error_not_a_signal)
{
    struct mb_amqp_out *o = msgbus_out(64);
    struct mb_amqp_wire w = {0};
    ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes("orders"),
                                          amqp_cstring_bytes("k"), true, 0, &o->props, o->body,
                                          131072),
                     AMQP_STATUS_OK);
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    close(sv[1]);
    /* MSG_NOSIGNAL: EPIPE comes back instead of SIGPIPE killing us. */
    ck_assert_int_eq(mb_amqp_wire_write(&w, sv[0]), -EPIPE);
    close(sv[0]);
    mb_amqp_wire_free(&w);
    mb_amqp_out_free(o);
}
END_TEST

START_TEST(what_cannot_be_encoded_leaves_the_batch_as_it_was)
{
    struct mb_amqp_out *o = msgbus_out(64);
    struct mb_amqp_wire w = {0};
    ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes("orders"),
                                          amqp_cstring_bytes("k"), true, 0, &o->props, o->body,
                                          131072),
                     AMQP_STATUS_OK);
    size_t before = mb_amqp_wire_bytes(&w);
    char long_rk[300];
    memset(long_rk, 'r', sizeof long_rk - 1);
    long_rk[sizeof long_rk - 1] = '\0';
    ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes("orders"),
                                          amqp_cstring_bytes(long_rk), true, 0, &o->props,
                                          o->body, 131072),
                     AMQP_STATUS_BAD_AMQP_DATA);
    /* A headers table bigger than the frame. */
    static char big[6000];
    memset(big, 'h', sizeof big - 1);
    amqp_table_entry_t e = {amqp_cstring_bytes("h"),
                            {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes(big)}}};
    amqp_basic_properties_t pr = {._flags = AMQP_BASIC_HEADERS_FLAG, .headers = {1, &e}};
    ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes("orders"),
                                          amqp_cstring_bytes("k"), true, 0, &pr, o->body, 4096),
                     AMQP_STATUS_TABLE_TOO_BIG);
    /* rabbitmq-c refuses it too. */
    struct raw r;
    raw_open(&r, 4096);
    ck_assert_int_lt(amqp_basic_publish(r.conn, 1, amqp_cstring_bytes("orders"),
                                        amqp_cstring_bytes("k"), 1, 0, &pr, o->body),
                     0);
    raw_close(&r);
    free(r.c.got);
    /* A message id over 255 bytes. */
    char long_id[300];
    memcpy(long_id, long_rk, sizeof long_id);
    amqp_basic_properties_t pi = {._flags = AMQP_BASIC_MESSAGE_ID_FLAG,
                                  .message_id = amqp_cstring_bytes(long_id)};
    ck_assert_int_eq(mb_amqp_wire_publish(&w, 1, amqp_cstring_bytes("orders"),
                                          amqp_cstring_bytes("k"), true, 0, &pi, o->body,
                                          131072),
                     AMQP_STATUS_BAD_AMQP_DATA);
    ck_assert_uint_eq(mb_amqp_wire_bytes(&w), before);
    ck_assert_uint_eq(w.count, 1);
    mb_amqp_wire_free(&w);
    mb_amqp_out_free(o);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_wire");
    TCase *tc = tcase_create("wire");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, a_msgbus_publish_is_rabbitmq_c_s_bytes);
    tcase_add_test(tc, every_basic_property_and_table_kind);
    tcase_add_test(tc, an_empty_body_has_no_body_frame);
    tcase_add_test(tc, bodies_split_over_frames_as_rabbitmq_c_splits_them);
    tcase_add_test(tc, many_publishes_and_acks_in_one_write);
    tcase_add_test(tc, a_full_socket_is_waited_for_and_nothing_is_lost);
    tcase_add_test(tc, a_write_that_cannot_wait_goes_on_where_it_stopped);
    tcase_add_test(tc, a_broken_socket_is_an_error_not_a_signal);
    tcase_add_test(tc, what_cannot_be_encoded_leaves_the_batch_as_it_was);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
