/*
 * cluster.h — what the parts of test_cluster share (see test_cluster.c):
 * helpers (cluster_common.c), the child roles (cluster_roles.c) and the
 * cluster's administration (cluster_admin.c).
 */
#ifndef MSGBUS_TEST_CLUSTER_H
#define MSGBUS_TEST_CLUSTER_H

#include <libpq-fe.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "msgbus/msgbus.h"

/* Keys of each path's stream: "k0" … "k63". */
enum { NKEYS = 64 };

/* Set by SIGTERM in a child (on_term): finish and exit 0. */
extern volatile sig_atomic_t g_stop;
void on_term(int sig);

/* Prints "FAIL: …" and exits 1 (the orchestrator's atexit kills its children). */
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* Wall-clock µs (compared across processes and with PostgreSQL's clock). */
int64_t now_us(void);
/* The variable's value; missing or empty is a failure, never a skip. */
const char *env_or_die(const char *name);
int env_int(const char *name, int def);

/* PostgreSQL on MSGBUS_TEST_PG_URL; every failure dies. */
PGconn *pg_connect(void);
void pg_run(PGconn *c, const char *sql);
void pg_exec(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
double pg_num(PGconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Message i of source 'd' (direct) or 'o' (outbox). */
msgbus_msg_t *make_msg(char src, int i, int64_t pub_us);

/* The child roles: each returns the process's exit code. */
int publisher_main(const char *url, const char *topic, const char *run, int n, int seconds);
int writer_main(const char *topic, const char *run, int n, int seconds);
int relay_main(const char *url, const char *run);
int member_main(const char *url, const char *topic, const char *group, const char *run, int idx);

/* The cluster URL's hosts, in order; node i is <prefix><i+1> (k1…k3 for
 * Kafka, r1…r3 for RabbitMQ: scripts/brokers writes them in node order). */
struct cluster_url {
    char scheme_auth[256]; /* "kafka://" or "amqp://user:pass@" */
    char hosts[3][64];
    int nhosts;
    char rest[512]; /* "/vhost?…" or "?…" or "" */
};

void parse_url(const char *url, struct cluster_url *u);
void url_from(char *buf, size_t n, const struct cluster_url *u, int first, const char *extra);
/* `scripts/brokers cluster <args>`: its output into `out` (may be NULL). */
void cluster_cmd(char *out, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The first word of such a command's output: a node name. */
void cluster_node(char *node, size_t n, const char *fmt, const char *a, const char *b);
#ifdef CLUSTER_WITH_KAFKA
/* The partition of `topic` with the highest high watermark (*hw). */
int busiest_partition(const struct cluster_url *u, const char *topic, int64_t *hw);
/* The partition that gets the most of the stream's keys, computed as
 * librdkafka's default partitioner (consistent_random: CRC-32 of the key
 * modulo the partition count) places them: the busiest one, known before
 * the stream starts. */
int predicted_busiest_partition(const struct cluster_url *u, const char *topic);
void delete_topic(const struct cluster_url *u, const char *topic);
#endif
#ifdef CLUSTER_WITH_AMQP
void delete_queue(const struct cluster_url *u, int h, const char *topic, const char *group);
#endif

#endif
