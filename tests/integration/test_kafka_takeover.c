/*
 * test_kafka_takeover.c — a group member is killed with SIGKILL halfway
 * through 100,000 messages on the real Kafka broker, and another member of
 * the group takes over.
 *
 * Promise: every message is consumed at least once, and the only messages
 * delivered twice are those at or after the last committed acked prefix of
 * their partition (msgbus commits only the contiguous prefix of acked
 * offsets, so a crash repeats nothing before it).
 *
 * The consumer that dies is this same binary run with argv[1] = "child"
 * (fork + exec). It appends one record per message it handled — written
 * with write(2) before the ack, so a SIGKILL can lose no acked record — to
 * a file the parent reads.
 */
#include <errno.h>
#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/msg.h" /* partition and offset of received messages */
#include "testutil.h"

#define TOTAL 100000
#define KILL_AT (TOTAL / 2)
#define MAXPART 64

struct rec {
    int32_t partition;
    int32_t index; /* the payload's message number */
    int64_t offset;
};

static char self_exe[4096];

/* The message number in a payload (not NUL-terminated). */
static int payload_index(const msgbus_msg_t *m)
{
    size_t len;
    const char *p = msgbus_msg_payload(m, &len);
    char buf[32];
    if (len >= sizeof buf)
        len = sizeof buf - 1;
    memcpy(buf, p, len);
    buf[len] = 0;
    return atoi(buf);
}

/* The URL both members use: short session timeout so the group notices the
 * dead member quickly, and a short commit interval. */
static void member_url(char *buf, size_t n)
{
    snprintf(buf, n, "%s?partitions=3&session.timeout.ms=6000&heartbeat.interval.ms=500",
             tu_broker_url("kafka"));
}

static int run_child(const char *topic, const char *group, const char *path)
{
    char url[1024];
    member_url(url, sizeof url);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd < 0)
        return 2;
    msgbus_t *bus = NULL;
    msgbus_sub_t *sub = NULL;
    if (msgbus_open(&bus, url, NULL) || msgbus_subscribe(bus, topic, group, &sub)) {
        fprintf(stderr, "child: %s\n", msgbus_last_error());
        return 3;
    }
    for (;;) { /* until killed */
        msgbus_msg_t *m = NULL;
        if (msgbus_receive(sub, 1000, &m) != MSGBUS_OK)
            continue;
        struct rec r = {m->partition, payload_index(m), m->offset};
        if (write(fd, &r, sizeof r) != (ssize_t)sizeof r)
            return 4;
        msgbus_ack(m);
        msgbus_msg_free(m);
    }
}

static size_t file_records(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (size_t)st.st_size / sizeof(struct rec) : 0;
}

/* The group's committed offsets, read straight from the broker. */
static void read_committed(const char *topic, const char *group, int64_t *committed, int64_t *ends,
                           int *nparts)
{
    char errstr[512];
    const char *url = tu_broker_url("kafka");
    const char *hosts = strstr(url, "://") + 3;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    ck_assert_int_eq(rd_kafka_conf_set(conf, "bootstrap.servers", hosts, errstr, sizeof errstr), 0);
    ck_assert_int_eq(rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof errstr), 0);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    ck_assert_ptr_nonnull(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(*nparts);
    for (int i = 0; i < *nparts; i++)
        rd_kafka_topic_partition_list_add(l, topic, i);
    ck_assert_int_eq(rd_kafka_committed(rk, l, 10000), 0);
    for (int i = 0; i < l->cnt; i++) {
        committed[l->elems[i].partition] = l->elems[i].offset;
        int64_t lo = 0, hi = 0;
        ck_assert_int_eq(rd_kafka_query_watermark_offsets(rk, topic, l->elems[i].partition, &lo,
                                                          &hi, 10000), 0);
        ends[l->elems[i].partition] = hi;
    }
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

START_TEST(killed_member_successor_repeats_only_unacked_suffix)
{
    char url[1024], topic[128], group[128], path[256];
    member_url(url, sizeof url);
    tu_unique(topic, sizeof topic, "takeover");
    tu_unique(group, sizeof group, "takeover-g");
    snprintf(path, sizeof path, "/tmp/msgbus-%s.rec", topic);
    unlink(path);

    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, group));
    for (int i = 0; i < TOTAL; i++) {
        char payload[32], key[16];
        snprintf(payload, sizeof payload, "%d", i);
        snprintf(key, sizeof key, "k%d", i % 97);
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
        tu_ck_ok(msgbus_msg_set_key(m, key, strlen(key)));
        msgbus_err_t e;
        while ((e = msgbus_publish(bus, topic, m, NULL, NULL)) == MSGBUS_ERR_QUEUE_FULL)
            msgbus_poll(bus, 10, NULL);
        tu_ck_ok(e);
        msgbus_msg_free(m);
    }
    tu_ck_ok(msgbus_flush(bus, 60000, NULL));
    printf("published %d messages to %s\n", TOTAL, topic);

    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        execl(self_exe, self_exe, "child", topic, group, path, (char *)NULL);
        _exit(127);
    }
    int64_t t0 = tu_now_ms();
    while (file_records(path) < KILL_AT) {
        int st;
        ck_assert_msg(waitpid(child, &st, WNOHANG) == 0, "child exited early (status %d)", st);
        ck_assert_msg(tu_now_ms() - t0 < 120000, "child consumed only %zu in 120 s",
                      file_records(path));
        usleep(2000);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    sleep(1); /* let a commit already on the wire land */

    int nparts = 3;
    int64_t committed[MAXPART], ends[MAXPART];
    for (int i = 0; i < MAXPART; i++)
        committed[i] = ends[i] = -1;
    read_committed(topic, group, committed, ends, &nparts);
    int64_t stored = 0;
    for (int p = 0; p < nparts; p++)
        stored += ends[p];

    /* Read what the child handled. */
    size_t nchild = file_records(path);
    struct rec *crecs = malloc(nchild * sizeof *crecs + 1);
    int fd = open(path, O_RDONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(read(fd, crecs, nchild * sizeof *crecs), (ssize_t)(nchild * sizeof *crecs));
    close(fd);
    unlink(path);

    unsigned char *seen = calloc(TOTAL, 1);
    int64_t *off_of = calloc(TOTAL, sizeof *off_of);
    int32_t *part_of = calloc(TOTAL, sizeof *part_of);
    size_t dups = 0, bad_dups = 0;
    for (size_t i = 0; i < nchild; i++) {
        ck_assert_int_lt(crecs[i].index, TOTAL);
        seen[crecs[i].index]++;
        off_of[crecs[i].index] = crecs[i].offset;
        part_of[crecs[i].index] = crecs[i].partition;
    }

    /* The successor: a new member of the same group, in this process. */
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe(bus, topic, group, &sub));
    size_t ntake = 0, below_commit = 0;
    size_t covered = 0;
    for (int i = 0; i < TOTAL; i++)
        covered += seen[i] ? 1 : 0;
    int64_t last = tu_now_ms();
    while (tu_now_ms() - last < (covered == TOTAL ? 3000 : 60000)) {
        msgbus_msg_t *m = tu_receive(sub, 200);
        if (!m)
            continue;
        last = tu_now_ms();
        int idx = payload_index(m);
        ck_assert_int_lt(idx, TOTAL);
        ntake++;
        if (m->offset < committed[m->partition])
            below_commit++;
        if (seen[idx]) {
            dups++;
            if (off_of[idx] < committed[part_of[idx]])
                bad_dups++;
        } else {
            covered++;
        }
        seen[idx]++;
        tu_ck_ok(msgbus_ack(m));
        msgbus_msg_free(m);
    }
    msgbus_sub_close(sub);
    msgbus_close(bus);

    size_t missing = 0;
    for (int i = 0; i < TOTAL; i++)
        missing += seen[i] ? 0 : 1;
    printf("consumed: child=%zu successor=%zu total=%zu distinct=%zu missing=%zu\n", nchild,
           ntake, nchild + ntake, covered, missing);
    printf("duplicates=%zu (before the committed prefix: %zu; successor deliveries below the "
           "commit point: %zu)\n", dups, bad_dups, below_commit);
    printf("committed offsets at the kill:");
    for (int p = 0; p < nparts; p++)
        printf(" p%d=%lld/%lld", p, (long long)committed[p], (long long)ends[p]);
    printf(" (committed/end; the topic holds %lld messages)\n", (long long)stored);
    ck_assert_int_eq(stored, TOTAL);
    ck_assert_uint_eq(missing, 0);
    ck_assert_uint_eq(covered, TOTAL);
    ck_assert_uint_eq(bad_dups, 0);
    ck_assert_uint_eq(below_commit, 0);
    ck_assert_uint_ge(nchild, KILL_AT);
    free(seen);
    free(off_of);
    free(part_of);
    free(crecs);
}
END_TEST

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "child") == 0)
        return run_child(argv[2], argv[3], argv[4]);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0)
        return 1;
    self_exe[n] = 0;
    Suite *s = suite_create("kafka_takeover");
    TCase *tc = tcase_create("takeover");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, killed_member_successor_repeats_only_unacked_suffix);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
