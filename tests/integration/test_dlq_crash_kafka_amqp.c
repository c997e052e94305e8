/*
 * test_dlq_crash_kafka_amqp.c — a consumer is killed with SIGKILL between
 * the broker confirming a dead letter and the ack of the original.
 *
 * The child process subscribes with retry_max_attempts=1, nacks the one
 * message it receives, and kills itself from its log hook at the line the
 * retry worker writes when the dead letter is confirmed and the ack of the
 * original is next ("dead letter of message … confirmed … acking the
 * original"). So the kill lands exactly in the window the issue names, on
 * the real broker, without any test hook in the library.
 *
 * Afterwards the parent (same group) must receive the original again — it
 * was never acked, so it is not lost — dead-letters it in turn, and then
 * finds the message on <topic>.dlq at least once, payload byte for byte.
 * Run once on Kafka and once on RabbitMQ.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static const char payload[] = "crash\0in the\xff window";
#define PAYLOAD_LEN (sizeof payload - 1)

static char self_exe[4096];

static void kill_on_confirm(void *opaque, msgbus_log_level_t level, const char *line)
{
    (void)opaque;
    (void)level;
    if (strstr(line, "dead letter of message") && strstr(line, "acking the original")) {
        fprintf(stderr, "child: %s\nchild: SIGKILL now, before the ack\n", line);
        raise(SIGKILL);
    }
}

/* child URL TOPIC GROUP: nack the message, die at the confirm. */
static int child_main(const char *url, const char *topic, const char *group)
{
    msgbus_set_log(kill_on_confirm, NULL, MSGBUS_LOG_INFO);
    msgbus_t *bus;
    msgbus_sub_t *sub;
    msgbus_msg_t *m;
    if (msgbus_open(&bus, url, NULL) ||
        msgbus_subscribe_ex(bus, topic, group, "retry_max_attempts=1", &sub) ||
        msgbus_receive(sub, 60000, &m)) {
        fprintf(stderr, "child: %s\n", msgbus_last_error());
        return 2;
    }
    fprintf(stderr, "child: received %s attempt %d; nacking (last attempt)\n", msgbus_msg_id(m),
            msgbus_msg_attempt(m));
    if (msgbus_nack_reason(m, "crash test")) {
        fprintf(stderr, "child: nack: %s\n", msgbus_last_error());
        return 2;
    }
    msgbus_msg_free(m);
    sleep(60); /* the log hook kills us long before */
    fprintf(stderr, "child: no dead-letter confirm within 60 s\n");
    return 3;
}

static void run(const char *kind)
{
    char url[1024], topic[128], group[128], dlq[160];
    if (strcmp(kind, "kafka") == 0)
        snprintf(url, sizeof url, "%s?session.timeout.ms=6000&heartbeat.interval.ms=500",
                 tu_broker_url("kafka"));
    else
        snprintf(url, sizeof url, "%s", tu_broker_url("amqp"));
    tu_unique(topic, sizeof topic, "dlqcrash");
    tu_unique(group, sizeof group, "g");
    snprintf(dlq, sizeof dlq, "%s.dlq", topic);

    msgbus_t *bus = NULL;
    tu_ck_ok(msgbus_open(&bus, url, NULL));
    tu_ck_ok(msgbus_declare(bus, topic, group));
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, PAYLOAD_LEN));
    tu_ck_ok(msgbus_msg_set_key(m, "crash-key", 9));
    char *id = strdup(msgbus_msg_id(m));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
    tu_ck_ok(msgbus_flush(bus, 30000, NULL));

    pid_t child = fork();
    ck_assert_int_ge(child, 0);
    if (child == 0) {
        execl(self_exe, self_exe, "child", url, topic, group, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    ck_assert_int_eq(waitpid(child, &st, 0), child);
    ck_assert_msg(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
                  "the child was not killed at the dead-letter confirm (status %d)", st);

    /* The original was never acked: the group gets it again. */
    msgbus_sub_t *sub = NULL;
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group, "retry_max_attempts=1", &sub));
    msgbus_msg_t *again = tu_receive(sub, 60000);
    ck_assert_msg(again != NULL, "the message was lost: not delivered again after the crash");
    ck_assert_pstr_eq(msgbus_msg_id(again), id);
    int attempt = msgbus_msg_attempt(again);
    tu_ck_ok(msgbus_nack_reason(again, "crash test, parent"));
    msgbus_msg_free(again);
    msgbus_sub_close(sub); /* waits for the dead letter in flight */

    /* Nothing more on the original group. */
    tu_ck_ok(msgbus_subscribe_ex(bus, topic, group, "retry_max_attempts=1", &sub));
    msgbus_msg_t *extra = tu_receive(sub, 3000);
    ck_assert_msg(extra == NULL, "the original came back after it was dead-lettered and acked");
    msgbus_sub_close(sub);

    /* On the dead-letter topic: at least once (the child's letter and the
     * parent's), each the original byte for byte. */
    msgbus_sub_t *ds = NULL;
    tu_ck_ok(msgbus_subscribe(bus, dlq, "dlq", &ds));
    int letters = 0;
    msgbus_msg_t *d;
    while ((d = tu_receive(ds, letters == 0 ? 30000 : 3000)) != NULL) {
        size_t len = 0;
        const void *p = msgbus_msg_payload(d, &len);
        ck_assert_pstr_eq(msgbus_msg_id(d), id);
        ck_assert_msg(len == PAYLOAD_LEN && memcmp(p, payload, len) == 0,
                      "dead letter payload differs");
        ck_assert_pstr_eq(msgbus_msg_header(d, "msgbus-dlq-topic"), topic);
        letters++;
        tu_ck_ok(msgbus_ack(d));
        msgbus_msg_free(d);
    }
    printf("dlq-crash[%s]: child killed between the dead-letter confirm and the ack; original "
           "delivered again (attempt %d); dead letters with its id: %d\n",
           kind, attempt, letters);
    ck_assert_int_ge(letters, 1);
    msgbus_sub_close(ds);
    free(id);
    msgbus_close(bus);
}

START_TEST(kafka_consumer_killed_between_dead_letter_and_ack)
{
    run("kafka");
}
END_TEST

START_TEST(amqp_consumer_killed_between_dead_letter_and_ack)
{
    run("amqp");
}
END_TEST

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "child") == 0)
        return child_main(argv[2], argv[3], argv[4]);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) {
        perror("readlink /proc/self/exe");
        return 1;
    }
    self_exe[n] = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    Suite *s = suite_create("dlq_crash");
    TCase *tc = tcase_create("crash");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, kafka_consumer_killed_between_dead_letter_and_ack);
    tcase_add_test(tc, amqp_consumer_killed_between_dead_letter_and_ack);
    suite_add_tcase(s, tc);
    return tu_run_suite(s);
}
