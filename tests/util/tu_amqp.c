/*
 * tu_amqp.c — RabbitMQ chores for tests (tu_amqp.h).
 */
#include "tu_amqp.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

bool tu_amqp_delete(const char *base_url, const char *queue, const char *exchange)
{
    char url[1024];
    snprintf(url, sizeof url, "%s", base_url ? base_url : tu_broker_url("amqp"));
    char *query = strchr(url, '?');
    if (query)
        *query = '\0';
    struct amqp_connection_info ci;
    if (amqp_parse_url(url, &ci) != AMQP_STATUS_OK)
        return false;
    bool ok = false;
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (s && amqp_socket_open(s, ci.host, ci.port) == AMQP_STATUS_OK &&
        amqp_login(c, ci.vhost && *ci.vhost ? ci.vhost : "/", 0, 131072, 0,
                   AMQP_SASL_METHOD_PLAIN, ci.user, ci.password)
                .reply_type == AMQP_RESPONSE_NORMAL &&
        amqp_channel_open(c, 1)) {
        ok = true;
        if (queue) {
            amqp_queue_delete(c, 1, amqp_cstring_bytes(queue), 0, 0);
            ok = amqp_get_rpc_reply(c).reply_type == AMQP_RESPONSE_NORMAL;
        }
        if (ok && exchange) {
            amqp_exchange_delete(c, 1, amqp_cstring_bytes(exchange), 0);
            amqp_get_rpc_reply(c);
        }
        amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c);
    return ok;
}

void tu_amqp_drop(const char *topic, const char *group)
{
    char q[600];
    if (group)
        snprintf(q, sizeof q, "%s.%s", topic, group);
    tu_amqp_delete(NULL, group ? q : NULL, topic);
}

struct tu_node tu_node;

int tu_node_run(const char *fmt, ...)
{
    char args[3000], cmd[4400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "bash '%s' %s", tu_node.script, args);
    return system(cmd);
}

bool tu_node_start(const char *name, int slot, const char *mode)
{
    /* The repository from this file's path (CMake passes absolute paths). */
    char root[1024];
    snprintf(root, sizeof root, "%s", __FILE__);
    char *cut = strstr(root, "/tests/util/");
    if (!cut) {
        fprintf(stderr, "FAIL: cannot find the repository from %s\n", __FILE__);
        return false;
    }
    *cut = '\0';
    tu_node.port = 21000 + (50 * slot + (int)(getpid() % 50)) * 20;
    const char *p = getenv("MSGBUS_TEST_AMQPS_PORT");
    if (p && *p)
        tu_node.port = atoi(p);
    snprintf(tu_node.dir, sizeof tu_node.dir, "%s/.brokers/%s-%d", root, name, (int)getpid());
    snprintf(tu_node.script, sizeof tu_node.script, "%s/tests/integration/amqp_private_node.sh",
             root);
    int64_t t0 = tu_now_ms();
    if (tu_node_run("start '%s' %d %s", tu_node.dir, tu_node.port, mode) != 0) {
        fprintf(stderr, "FAIL: could not start the private RabbitMQ node (%s)\n", tu_node.dir);
        tu_node_run("stop '%s'", tu_node.dir);
        return false;
    }
    printf("private %s node on 127.0.0.1:%d started in %lld ms\n", mode, tu_node.port,
           (long long)(tu_now_ms() - t0));
    return true;
}

void tu_node_stop(void)
{
    tu_node_run("pid '%s' | xargs -r kill -CONT 2>/dev/null; true", tu_node.dir);
    if (tu_node_run("stop '%s' && rm -rf '%s'", tu_node.dir, tu_node.dir) != 0)
        fprintf(stderr, "warning: stopping the private node failed\n");
}
