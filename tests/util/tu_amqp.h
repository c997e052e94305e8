/*
 * tu_amqp.h — RabbitMQ chores for tests, done with rabbitmq-c directly
 * (msgbus has no delete): removing what a test declared, so tests do not
 * litter the shared broker.
 */
#ifndef TU_AMQP_H
#define TU_AMQP_H

#include <stdbool.h>

/* Deletes queue `queue` and exchange `exchange` (either may be NULL) on the
 * RabbitMQ of `url` (NULL: the test broker, MSGBUS_TEST_AMQP_URL). True
 * when the broker was reached and the queue delete went through (deleting
 * a queue that does not exist goes through too). */
bool tu_amqp_delete(const char *url, const char *queue, const char *exchange);

/* Deletes a test's topology on the test broker: the group's queue
 * "<topic>.<group>" (none when `group` is NULL) and the topic's exchange. */
void tu_amqp_drop(const char *topic, const char *group);

/* A private RabbitMQ node for one test process, for tests that stop,
 * freeze or reconfigure their broker (the shared one is never touched):
 * tests/integration/amqp_private_node.sh runs it with its own node name,
 * epmd and data under <repo>/.brokers/<name>-<pid>. Each test program
 * takes its own `slot` so that programs running at once never share a
 * port: 21000 + 20 * (50 * slot + pid % 50) (test_amqp_tls 0,
 * test_amqp_node_faults 1, test_observe_amqp 2, test_amqp_partitions 3). */
struct tu_node {
    char dir[1200], script[1200];
    int port;
};
extern struct tu_node tu_node;

/* Starts the node ("tls" or "plain", as the script takes). False, with a
 * message on stderr, when it did not start (the test program must fail). A
 * MSGBUS_TEST_AMQPS_PORT variable chooses the port instead. */
bool tu_node_start(const char *name, int slot, const char *mode);
/* Runs the script with `fmt`… as arguments (a shell word list; the node's
 * directory is tu_node.dir): its exit status. */
int tu_node_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Wakes the node if a test left it frozen (SIGSTOP), stops it and removes
 * its directory. */
void tu_node_stop(void);

#endif
