/*
 * test_cluster.c — msgbus on real 3-node clusters (issue 19): a stream of
 * keyed messages, half published directly with confirms and half through
 * a PostgreSQL outbox and its relay, consumed by a group of three members
 * that apply every message through the inbox, while the test SIGKILLs a
 * broker node leading the busiest partition / the quorum queue, the node
 * the publisher and one member are connected to, one member and the relay.
 * Afterwards every confirmed message must have been applied exactly once,
 * and (Kafka) in per-key order; the recovery time of each fault is
 * measured. See docs/clusters.md.
 *
 *   test_cluster kafka|amqp           the test (cluster from .brokers/env)
 *   test_cluster kafka|amqp smoke     the same against the single brokers,
 *                                     without node faults (a development aid)
 *
 * The binary is also every child process it starts (argv[1] names the
 * role): publisher, writer, relay, member. Children die with the test
 * (PR_SET_PDEATHSIG) and are killed on every exit path. What they share is
 * in PostgreSQL, in tables named after the run:
 *   <run>_effects    one row per APPLIED message, written in the inbox's
 *                    transaction; no unique constraint, so duplicates count
 *   <run>_confirmed  direct messages whose confirm arrived (retried: the
 *                    publisher had to publish it again after a failure)
 *   <run>_written    outbox messages, written in the outbox row's transaction
 *   <run>_events     producers msgbus replaced, buses a child reopened
 *   <run>_outbox, <run>_inbox   msgbus's own tables
 * All are dropped on every way out, failures included; so are the topic
 * (Kafka) or the queue and exchange (RabbitMQ). A node the run killed and
 * had not restarted yet when it failed is restarted.
 *
 * Environment: MSGBUS_TEST_{KAFKA,AMQP}_CLUSTER_URL and MSGBUS_TEST_PG_URL
 * (missing: FAIL); MSGBUS_CLUSTER_MESSAGES (default 50000) and
 * MSGBUS_CLUSTER_SECONDS (default 100: how long the stream is paced to
 * last).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster.h"
#include "msgbus/inbox.h"
#include "msgbus/outbox.h"

static char g_exe[4096];
/* A cluster node this run killed and has not restarted yet: an early exit
 * restarts it, so that the next test finds the whole cluster. */
static char g_down_node[16];

/* What the run created, removed on every way out (after the children are
 * gone): its tables, and its topic or its queue and exchange. */
static struct {
    bool kafka;
    char run[40], topic[64], group[16];
    struct cluster_url u;
    int declared_through; /* the host index the queue was declared through */
} g_made;

static void remove_made(void)
{
    if (!g_made.run[0])
        return;
    PGconn *pg = PQconnectdb(getenv("MSGBUS_TEST_PG_URL"));
    if (PQstatus(pg) == CONNECTION_OK) {
        for (const char *t = "effects confirmed written events outbox inbox"; *t;) {
            size_t l = strcspn(t, " ");
            char sql[256];
            snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s_%.*s", g_made.run, (int)l, t);
            PQclear(PQexec(pg, sql));
            t += l + (t[l] == ' ');
        }
    } else {
        fprintf(stderr, "dropping the tables of %s: %s", g_made.run, PQerrorMessage(pg));
    }
    PQfinish(pg);
    if (g_made.topic[0]) {
#ifdef CLUSTER_WITH_KAFKA
        if (g_made.kafka)
            delete_topic(&g_made.u, g_made.topic);
#endif
#ifdef CLUSTER_WITH_AMQP
        if (!g_made.kafka)
            delete_queue(&g_made.u, g_made.declared_through, g_made.topic, g_made.group);
#endif
    }
    g_made.run[0] = 0;
}

static void restore_node(void)
{
    if (!g_down_node[0])
        return;
    char cmd[1024], node[16];
    snprintf(node, sizeof node, "%s", g_down_node);
    g_down_node[0] = 0;
    snprintf(cmd, sizeof cmd, "%s/scripts/brokers cluster start %s >&2", CLUSTER_REPO, node);
    fprintf(stderr, "restarting %s, killed by this run: %s\n", node, cmd);
    if (system(cmd) != 0)
        fprintf(stderr, "FAIL: could not restart %s\n", node);
}

/* ---- the orchestrator: children -------------------------------------------- */

struct child {
    pid_t pid;
    char role[16];
    char *argv[10];
};

enum { C_PUB, C_WRITER, C_RELAY, C_M0, C_M1, C_M2, NCHILD };
static struct child g_child[NCHILD];

static void spawn(struct child *c)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        /* Never outlive the test, however it ends. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(126);
        execv(g_exe, c->argv);
        _exit(127);
    }
    c->pid = pid;
}

static void kill_children(void)
{
    for (int i = 0; i < NCHILD; i++)
        if (g_child[i].pid > 0) {
            kill(g_child[i].pid, SIGKILL);
            waitpid(g_child[i].pid, NULL, 0);
            g_child[i].pid = 0;
        }
}

static void on_fatal_signal(int sig)
{
    for (int i = 0; i < NCHILD; i++)
        if (g_child[i].pid > 0)
            kill(g_child[i].pid, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* SIGTERM, then SIGKILL after `grace_ms`; returns the exit status. */
static int stop_child(struct child *c, int grace_ms)
{
    if (c->pid <= 0)
        return 0;
    kill(c->pid, SIGTERM);
    int st = 0;
    for (int waited = 0;; waited += 50) {
        pid_t r = waitpid(c->pid, &st, WNOHANG);
        if (r == c->pid)
            break;
        if (waited >= grace_ms) {
            fprintf(stderr, "%s %d did not stop within %d ms: killed\n", c->role, (int)c->pid, grace_ms);
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            break;
        }
        usleep(50000);
    }
    c->pid = 0;
    return st;
}

/* A child that ended on its own: fails the test unless it is the
 * publisher or the writer ending well. */
static void reap(bool *pub_done, bool *writer_done)
{
    for (int i = 0; i < NCHILD; i++) {
        struct child *c = &g_child[i];
        int st = 0;
        if (c->pid <= 0 || waitpid(c->pid, &st, WNOHANG) != c->pid)
            continue;
        c->pid = 0;
        bool ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (ok && i == C_PUB)
            *pub_done = true;
        else if (ok && i == C_WRITER)
            *writer_done = true;
        else
            die("%s ended unexpectedly (%s %d)", c->role, WIFEXITED(st) ? "exit" : "signal",
                WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
}

/* ---- the orchestrator: the run --------------------------------------------- */

struct fault {
    const char *name;
    int at_percent;
    int64_t kill_us;
    char node[16];
    double rejoin_s; /* node faults: what `cluster start` said */
    double recover_s, first_s;
};

/* From the kill until, for EVERY (path, key), the first applied message
 * published after the kill: the time by which the whole stream flows
 * again (a fault that stops one partition would otherwise look recovered
 * at once through the others). Also the first such message of any key. */
static void measure(PGconn *pg, const char *run, struct fault *f)
{
    f->recover_s = pg_num(pg,
                          "SELECT max(t) FROM (SELECT min(extract(epoch FROM applied_at) * 1e6) - %" PRId64
                          " AS t FROM %s_effects WHERE pub_us > %" PRId64 " GROUP BY source, key) x",
                          f->kill_us, run, f->kill_us) /
                   1e6;
    f->first_s = pg_num(pg,
                        "SELECT min(extract(epoch FROM applied_at) * 1e6) - %" PRId64
                        " FROM %s_effects WHERE pub_us > %" PRId64,
                        f->kill_us, run, f->kill_us) /
                 1e6;
    double keys = pg_num(pg, "SELECT count(DISTINCT (source, key)) FROM %s_effects WHERE pub_us > %" PRId64,
                         run, f->kill_us);
    double path[2][2];
    for (int i = 0; i < 2; i++) {
        char src = i ? 'o' : 'd';
        path[i][0] = pg_num(pg,
                            "SELECT min(extract(epoch FROM applied_at) * 1e6) - %" PRId64
                            " FROM %s_effects WHERE pub_us > %" PRId64 " AND source = '%c'",
                            f->kill_us, run, f->kill_us, src) /
                     1e6;
        path[i][1] = pg_num(pg,
                            "SELECT max(t) FROM (SELECT min(extract(epoch FROM applied_at) * 1e6) - %" PRId64
                            " AS t FROM %s_effects WHERE pub_us > %" PRId64 " AND source = '%c' GROUP BY key) x",
                            f->kill_us, run, f->kill_us, src) /
                     1e6;
    }
    fprintf(stderr, "%s%s%s: first applied message published after the kill %.2f s after it, every "
            "path and key %.2f s (%d of %d keys); direct %.2f / %.2f s, outbox %.2f / %.2f s\n",
            f->name, f->node[0] ? " " : "", f->node, f->first_s, f->recover_s, (int)keys, 2 * NKEYS,
            path[0][0], path[0][1], path[1][0], path[1][1]);
    if ((int)keys != 2 * NKEYS)
        die("%s: only %d of %d keys had a message published after the kill: the fault was not "
            "mid-stream (raise MSGBUS_CLUSTER_SECONDS)",
            f->name, (int)keys, 2 * NKEYS);
}

static double run_start(const char *node)
{
    char out[4096];
    int64_t t0 = now_us();
    cluster_cmd(out, sizeof out, "start %s", node);
    /* `cluster start` says "k2: rejoined in 12.3 s"; without that line,
     * the command's own duration stands in. */
    const char *p = strstr(out, "rejoined in ");
    return p ? atof(p + 12) : (double)(now_us() - t0) / 1e6;
}

static int orchestrate(const char *kind, bool smoke)
{
    bool kafka = strcmp(kind, "kafka") == 0;
    char var[64];
    snprintf(var, sizeof var, smoke ? "MSGBUS_TEST_%s_URL" : "MSGBUS_TEST_%s_CLUSTER_URL",
             kafka ? "KAFKA" : "AMQP");
    const char *base = env_or_die(var);
    env_or_die("MSGBUS_TEST_PG_URL");
    int total = env_int("MSGBUS_CLUSTER_MESSAGES", 50000), seconds = env_int("MSGBUS_CLUSTER_SECONDS", 100);
    int ndirect = total / 2, noutbox = total - ndirect;
    struct cluster_url u;
    parse_url(base, &u);
    if (!smoke && u.nhosts != 3)
        die("%s names %d hosts, want 3", var, u.nhosts);

    /* No cluster options: msgbus's defaults for several hosts (Kafka
     * topics with 3 copies and min.insync.replicas=2, quorum group queues)
     * are what is tested. Members get a session that notices a killed
     * member in 15 s instead of librdkafka's 45 — not less: while a
     * SIGKILLed broker is not yet fenced (the cluster's
     * broker.session.timeout.ms, 9 s) commits wait for its replicas, the
     * coordinator answers no heartbeats queued behind them, and a 10 s
     * session expired. */
    const char *member_opts = kafka ? "session.timeout.ms=15000" : "";
    char run[40], topic[64], group[] = "members", rid[32];
    snprintf(rid, sizeof rid, "%d_%06x", (int)getpid(), (unsigned)(now_us() & 0xffffff));
    snprintf(run, sizeof run, "cl_%s", rid);
    snprintf(topic, sizeof topic, "cluster-%s-%s", kind, rid);
    fprintf(stderr, "run %s: %s, %d messages (%d direct, %d outbox) over ~%d s, topic %s%s\n", run,
            kind, total, ndirect, noutbox, seconds, topic, smoke ? ", SMOKE: no node faults" : "");

    g_made.kafka = kafka;
    g_made.u = u;
    snprintf(g_made.run, sizeof g_made.run, "%s", run);
    snprintf(g_made.group, sizeof g_made.group, "%s", group);
    PGconn *pg = pg_connect();
    pg_exec(pg, "SET client_min_messages = warning");
    pg_exec(pg, "CREATE TABLE %s_effects (serial bigserial PRIMARY KEY, id text NOT NULL, source char(1) "
            "NOT NULL, key int NOT NULL, seq int NOT NULL, member int NOT NULL, pub_us bigint NOT NULL, "
            "applied_at timestamptz NOT NULL DEFAULT clock_timestamp())", run);
    pg_exec(pg, "CREATE INDEX ON %s_effects(id)", run);
    pg_exec(pg, "CREATE TABLE %s_confirmed (id text NOT NULL, retried bool NOT NULL)", run);
    pg_exec(pg, "CREATE TABLE %s_written (id text NOT NULL)", run);
    pg_exec(pg, "CREATE TABLE %s_events (who text NOT NULL, what text NOT NULL)", run);
    char table[96];
    /* Created once here, so that the children's opens find them. */
    msgbus_outbox_t *ob = NULL;
    msgbus_inbox_t *ib = NULL;
    snprintf(table, sizeof table, "%s_outbox", run);
    if (msgbus_outbox_open_pg(&ob, pg, table) != MSGBUS_OK)
        die("outbox: %s", msgbus_last_error());
    msgbus_outbox_close(ob);
    snprintf(table, sizeof table, "%s_inbox", run);
    if (msgbus_inbox_open_pg(&ib, pg, group, table) != MSGBUS_OK)
        die("inbox: %s", msgbus_last_error());
    msgbus_inbox_close(ib);

    /* Declared through node 2 (a quorum queue's leader is where it was
     * declared). */
    int conn_node = 0, other = u.nhosts > 1 ? 1 : 0;
    char url_conn[1024], url_conn_m[1024], url_other[1024], url_other_m[1024];
    url_from(url_other, sizeof url_other, &u, other, "");
    msgbus_t *bus = NULL;
    if (msgbus_open(&bus, url_other, NULL) != MSGBUS_OK)
        die("open: %s", msgbus_last_error());
    snprintf(g_made.topic, sizeof g_made.topic, "%s", topic); /* from here on it may exist */
    g_made.declared_through = other;
    /* msgbus_declare waits out a broker that has not heard of the topic it
     * just created (it failed now and then on this cluster before): a
     * failure here is a failure. */
    if (msgbus_declare(bus, topic, group) != MSGBUS_OK)
        die("declaring %s/%s: %s", topic, group, msgbus_last_error());
    msgbus_close(bus);

    /* The publisher and member 0 connect first to a node that fault 1 will
     * not kill — one not leading the busiest partition (known in advance:
     * the keys decide it) or the queue — so the two node faults hit two
     * different nodes; the other processes connect to the next node first. */
    char conn_name[16] = "none", predicted[16] = "none";
    if (!smoke) {
        char q[160], ps[16] = "";
        snprintf(q, sizeof q, "%s.%s", topic, group);
#ifdef CLUSTER_WITH_KAFKA
        if (kafka)
            snprintf(ps, sizeof ps, "%d", predicted_busiest_partition(&u, topic));
#endif
        if (kafka)
            cluster_node(predicted, sizeof predicted, "leader kafka %s %s", topic, ps);
        else
            cluster_node(predicted, sizeof predicted, "leader rabbitmq %s%s", q, "");
        for (conn_node = 0; conn_node < u.nhosts; conn_node++) {
            cluster_node(conn_name, sizeof conn_name, "node-of %s%s", strrchr(u.hosts[conn_node], ':') + 1, "");
            if (strcmp(conn_name, predicted) != 0)
                break;
        }
        other = (conn_node + 1) % u.nhosts;
        fprintf(stderr, "fault 1 should hit %s; the publisher and member 0 connect to %s first\n", predicted,
                conn_name);
    }
    url_from(url_conn, sizeof url_conn, &u, conn_node, "");
    url_from(url_conn_m, sizeof url_conn_m, &u, conn_node, member_opts);
    url_from(url_other, sizeof url_other, &u, other, "");
    url_from(url_other_m, sizeof url_other_m, &u, other, member_opts);

    char sn[16], so[16], smi[3][8];
    snprintf(sn, sizeof sn, "%d", ndirect);
    snprintf(so, sizeof so, "%d", noutbox);
    char ss[16];
    snprintf(ss, sizeof ss, "%d", seconds);
    struct child *c;
    for (int i = 0; i < 3; i++) {
        c = &g_child[C_M0 + i];
        snprintf(c->role, sizeof c->role, "member %d", i);
        snprintf(smi[i], sizeof smi[i], "%d", i);
        char **a = c->argv;
        a[0] = g_exe, a[1] = "member", a[2] = i == 0 ? url_conn_m : url_other_m, a[3] = topic,
        a[4] = group, a[5] = run, a[6] = smi[i], a[7] = NULL;
    }
    c = &g_child[C_PUB];
    snprintf(c->role, sizeof c->role, "publisher");
    c->argv[0] = g_exe, c->argv[1] = "publisher", c->argv[2] = url_conn, c->argv[3] = topic,
    c->argv[4] = run, c->argv[5] = sn, c->argv[6] = ss, c->argv[7] = NULL;
    c = &g_child[C_WRITER];
    snprintf(c->role, sizeof c->role, "writer");
    c->argv[0] = g_exe, c->argv[1] = "writer", c->argv[2] = topic, c->argv[3] = run, c->argv[4] = so,
    c->argv[5] = ss, c->argv[6] = NULL;
    c = &g_child[C_RELAY];
    snprintf(c->role, sizeof c->role, "relay");
    c->argv[0] = g_exe, c->argv[1] = "relay", c->argv[2] = url_other, c->argv[3] = run, c->argv[4] = NULL;

    for (int i = C_M0; i <= C_M2; i++)
        spawn(&g_child[i]);
    /* Let the group form before the stream starts, so that the first
     * seconds do not measure three members joining one after another. */
    sleep(kafka ? 5 : 1);
    spawn(&g_child[C_RELAY]);
    spawn(&g_child[C_WRITER]);
    int64_t t0 = now_us();
    spawn(&g_child[C_PUB]);

    /* The faults are due at points of the paced stream (10 % = when a
     * tenth of the messages is due to be published), not of the messages
     * applied: after a node fault the members may lag by tens of seconds
     * (a session expiring, a rebalance), and faults waiting for the
     * applied count then came after the publishers had finished (a CI run
     * ended after 3 faults of 4). Each fault waits for the one before it
     * (a node fault until the node has rejoined), so the points are early
     * enough for the last to land mid-stream even when a node takes 30 s
     * to come back. */
    struct fault f[4] = {{"leader_kill", 10, 0, "", 0, 0, 0},
                         {"conn_kill", 30, 0, "", 0, 0, 0},
                         {"member_kill", 55, 0, "", 0, 0, 0},
                         {"relay_kill", 70, 0, "", 0, 0, 0}};
    int next_fault = 0;
    bool pub_done = false, writer_done = false;
    int64_t last_print = 0;
    for (;;) {
        reap(&pub_done, &writer_done);
        double applied = pg_num(pg, "SELECT count(*) FROM %s_effects", run);
        if (now_us() - last_print > 5000000) {
            fprintf(stderr, "%5.1f s: %d applied (%.0f %%)\n", (double)(now_us() - t0) / 1e6,
                    (int)applied, 100.0 * applied / total);
            last_print = now_us();
        }
        double streamed = 100.0 * (double)(now_us() - t0) / ((double)seconds * 1e6);
        if (next_fault < 4 && streamed >= f[next_fault].at_percent) {
            struct fault *x = &f[next_fault++];
            if (pub_done || writer_done)
                die("%s: the stream ended before the fault was due (raise MSGBUS_CLUSTER_SECONDS)",
                    x->name);
            fprintf(stderr, "%5.1f s: %s at %.0f %% of the stream, %.0f %% applied\n",
                    (double)(now_us() - t0) / 1e6, x->name, streamed, 100.0 * applied / total);
            if (next_fault <= 2) {
                if (smoke) {
                    fprintf(stderr, "smoke: no node to kill\n");
#ifdef CLUSTER_WITH_KAFKA
                    if (kafka && next_fault == 1) {
                        int64_t hw;
                        int p = busiest_partition(&u, topic, &hw);
                        fprintf(stderr, "busiest partition %d (%" PRId64 ")\n", p, hw);
                    }
#endif
                    x->kill_us = now_us();
                    continue;
                }
                if (next_fault == 1) {
                    if (kafka) {
#ifdef CLUSTER_WITH_KAFKA
                        int64_t hw;
                        int p = busiest_partition(&u, topic, &hw);
                        char ps[16];
                        snprintf(ps, sizeof ps, "%d", p);
                        cluster_node(x->node, sizeof x->node, "leader kafka %s %s", topic, ps);
#endif
                    } else {
                        char q[160];
                        snprintf(q, sizeof q, "%s.%s", topic, group);
                        cluster_node(x->node, sizeof x->node, "leader rabbitmq %s%s", q, "");
                    }
                } else {
                    snprintf(x->node, sizeof x->node, "%s", conn_name);
                    /* Where leadership went after fault 1: when it moved to
                     * this node, fault 2 is a leader's loss too. */
                    char now_leader[16] = "?";
                    if (!kafka) {
                        char q[160];
                        snprintf(q, sizeof q, "%s.%s", topic, group);
                        cluster_node(now_leader, sizeof now_leader, "leader rabbitmq %s%s", q, "");
                    }
#ifdef CLUSTER_WITH_KAFKA
                    if (kafka) {
                        char ps[16];
                        snprintf(ps, sizeof ps, "%d", predicted_busiest_partition(&u, topic));
                        cluster_node(now_leader, sizeof now_leader, "leader kafka %s %s", topic, ps);
                    }
#endif
                    fprintf(stderr, "%s: the busiest partition's / the queue's leader is now %s%s\n",
                            x->name, now_leader,
                            strcmp(now_leader, x->node) == 0 ? ": this fault kills a leader too" : "");
                }
                cluster_cmd(NULL, 0, "kill %s", x->node);
                x->kill_us = now_us();
                snprintf(g_down_node, sizeof g_down_node, "%s", x->node);
                /* The cluster works on two nodes for a while before the
                 * third comes back. */
                sleep(5);
                x->rejoin_s = run_start(x->node);
                g_down_node[0] = 0;
            } else {
                struct child *v = &g_child[next_fault == 3 ? C_M2 : C_RELAY];
                kill(v->pid, SIGKILL);
                x->kill_us = now_us();
                waitpid(v->pid, NULL, 0);
                v->pid = 0;
                sleep(next_fault == 3 ? 3 : 1);
                spawn(v);
            }
            continue;
        }
        if (pub_done && writer_done)
            break;
        usleep(250000);
    }
    if (next_fault < 4)
        die("the stream ended after %d faults of 4 (raise MSGBUS_CLUSTER_SECONDS)", next_fault);

    /* Everything confirmed or committed must be applied; bounded. */
    char missing_sql[512];
    snprintf(missing_sql, sizeof missing_sql,
             "SELECT count(*) FROM (SELECT id FROM %s_confirmed UNION SELECT id FROM %s_written) a "
             "WHERE NOT EXISTS (SELECT 1 FROM %s_effects e WHERE e.id = a.id)",
             run, run, run);
    double lost = 0;
    for (int64_t t = now_us(); (lost = pg_num(pg, "%s", missing_sql)) > 0 && now_us() - t < 180000000;) {
        reap(&pub_done, &writer_done);
        sleep(1);
    }
    double total_s = (double)(now_us() - t0) / 1e6;
    sleep(2); /* late copies, if any, get their chance to show up as duplicates */

    int rc_members = 0;
    for (int i = C_M0; i <= C_M2; i++)
        rc_members |= stop_child(&g_child[i], 20000);
    stop_child(&g_child[C_RELAY], 20000);

    double confirmed = pg_num(pg, "SELECT count(*) FROM %s_confirmed", run);
    double written = pg_num(pg, "SELECT count(*) FROM %s_written", run);
    double dup = pg_num(pg, "SELECT count(*) FROM (SELECT id FROM %s_effects GROUP BY id HAVING count(*) > 1) x",
                        run);
    double stray = pg_num(pg,
                          "SELECT count(*) FROM %s_effects e WHERE NOT EXISTS (SELECT 1 FROM %s_confirmed c "
                          "WHERE c.id = e.id) AND NOT EXISTS (SELECT 1 FROM %s_written w WHERE w.id = e.id)",
                          run, run, run);
    double retried = pg_num(pg, "SELECT count(*) FROM %s_confirmed WHERE retried", run);
    double reopens = pg_num(pg, "SELECT count(*) FROM %s_events WHERE what = 'reopen'", run);
    double replaced = pg_num(pg, "SELECT count(*) FROM %s_events WHERE what = 'producer_replaced'", run);
    /* Per (source, key), in the order applied (serial), each seq must be
     * above the one before; messages published again after a failed
     * confirm are left out (they come after later ones by design). */
    double order = pg_num(pg,
                          "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY source, key ORDER "
                          "BY serial) AS prev FROM %s_effects e WHERE NOT EXISTS (SELECT 1 FROM %s_confirmed "
                          "c WHERE c.id = e.id AND c.retried)) x WHERE prev IS NOT NULL AND seq <= prev",
                          run, run);
    for (int i = 0; i < 4; i++)
        measure(pg, run, &f[i]);
    double leader_recover = f[0].recover_s, conn_recover = f[1].recover_s;
    printf("CLUSTER backend=%s messages=%d direct=%d outbox=%d lost=%d dup=%d stray=%d "
           "order_violations=%d leader_kill=%s leader_recover_s=%.1f leader_rejoin_s=%.1f conn_kill=%s "
           "conn_recover_s=%.1f conn_rejoin_s=%.1f member_recover_s=%.1f relay_recover_s=%.1f "
           "total_s=%.1f republished=%d producers_replaced=%d reopens=%d%s\n",
           kind, total, (int)confirmed, (int)written, (int)lost, (int)dup, (int)stray, (int)order,
           smoke ? "none" : f[0].node, leader_recover, f[0].rejoin_s, smoke ? "none" : f[1].node,
           conn_recover, f[1].rejoin_s, f[2].recover_s, f[3].recover_s, total_s, (int)retried,
           (int)replaced, (int)reopens, smoke ? " smoke=1" : "");
    fflush(stdout);
    fprintf(stderr, "republished: direct messages published again after a failed confirm; "
            "producers_replaced: Kafka producers msgbus replaced after a fatal error (publisher and "
            "relay); reopens: buses the test reopened, left DOWN for good by one\n");

    bool ok = lost == 0 && dup == 0 && stray == 0 && confirmed == ndirect && written == noutbox &&
              rc_members == 0 && (!kafka || order == 0);
    if (!ok)
        fprintf(stderr, "FAIL: lost %d, duplicates %d, stray %d, order violations %d%s, confirmed %d of "
                "%d, written %d of %d, members' exit %d\n",
                (int)lost, (int)dup, (int)stray, (int)order, kafka ? "" : " (counted only)",
                (int)confirmed, ndirect, (int)written, noutbox, rc_members);

    PQfinish(pg);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    ssize_t l = readlink("/proc/self/exe", g_exe, sizeof g_exe - 1);
    if (l <= 0)
        die("readlink /proc/self/exe: %s", strerror(errno));
    g_exe[l] = 0;
    setvbuf(stderr, NULL, _IOLBF, 0);
    if (argc >= 2 && (strcmp(argv[1], "kafka") == 0 || strcmp(argv[1], "amqp") == 0)) {
#ifndef CLUSTER_WITH_KAFKA
        if (strcmp(argv[1], "kafka") == 0)
            die("built without Kafka");
#endif
#ifndef CLUSTER_WITH_AMQP
        if (strcmp(argv[1], "amqp") == 0)
            die("built without AMQP");
#endif
        /* In reverse: children killed, a killed node restarted, what the
         * run made removed. */
        atexit(remove_made);
        atexit(restore_node);
        atexit(kill_children);
        signal(SIGTERM, on_fatal_signal);
        signal(SIGINT, on_fatal_signal);
        return orchestrate(argv[1], argc >= 3 && strcmp(argv[2], "smoke") == 0);
    }
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    if (argc == 7 && strcmp(argv[1], "publisher") == 0)
        return publisher_main(argv[2], argv[3], argv[4], atoi(argv[5]), atoi(argv[6]));
    if (argc == 6 && strcmp(argv[1], "writer") == 0)
        return writer_main(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    if (argc == 4 && strcmp(argv[1], "relay") == 0)
        return relay_main(argv[2], argv[3]);
    if (argc == 7 && strcmp(argv[1], "member") == 0)
        return member_main(argv[2], argv[3], argv[4], argv[5], atoi(argv[6]));
    fprintf(stderr, "usage: %s kafka|amqp [smoke]\n", argv[0]);
    return 2;
}
