/*
 * amqp_conf.c — the AMQP backend's URL: host list, credentials, vhost and
 * every option it accepts, read before any network I/O so a typo fails
 * fast; plus the topology names (docs/amqp.md) and queue arguments.
 *
 * Options (also as MSGBUS_AMQP_<NAME> variables):
 *   prefetch=200              basic.qos per subscription
 *   heartbeat=10              seconds, 0 turns heartbeats off
 *   connect_timeout_ms=5000   per host, TCP + TLS + login
 *   confirm_window=1000       unconfirmed publishes allowed on the wire
 *   max_message_bytes=134217728  larger bodies fail with TOO_LARGE locally
 *   frame_max=131072
 *   subscribe_timeout_ms=30000   subscribe/declare wait this long for a connection
 *   reconnect_backoff_ms=100, reconnect_backoff_max_ms=5000
 *   message_timeout_ms=0      a message not yet on the wire fails after this (0: never)
 *   rpc_timeout_ms=30000      a broker RPC taking longer drops the connection
 *   queue_type=classic|quorum group queues' type (quorum when several hosts)
 *   x-<anything>=value        passed as a queue argument to group queues
 *   unroutable=error|ok       how a message no queue receives is reported
 *   cacert, cert, key         TLS files (amqps://)
 *   tls_verify_peer=true, tls_verify_hostname=true
 *   partitions=0              N > 0: a group is N single-active-consumer queues
 *                             behind a consistent-hash exchange on the key
 *   rebalance_ms=1000         partitioned: how often a member checks its share
 */
#include "backends/amqp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const mb_amqp_option_names[] = {
    "prefetch",          "heartbeat",           "connect_timeout_ms",
    "confirm_window",    "max_message_bytes",   "frame_max",
    "subscribe_timeout_ms", "reconnect_backoff_ms", "reconnect_backoff_max_ms",
    "message_timeout_ms", "rpc_timeout_ms",     "queue_type",
    "unroutable",        "cacert",              "cert",
    "key",               "tls_verify_peer",     "tls_verify_hostname",
    "partitions",        "rebalance_ms",        NULL};

static msgbus_err_t mb_amqp_opt_str(const struct mb_url *url, const char *key, char **out)
{
    const char *v = mb_url_opt(url, key);
    *out = NULL;
    if (!v)
        return MSGBUS_OK;
    if (!*v) {
        char origin[128];
        mb_url_opt_origin(url, key, origin, sizeof origin);
        return mb_error(MSGBUS_ERR_CONFIG, "%s: empty value", origin);
    }
    *out = mb_strdup(v);
    return *out ? MSGBUS_OK : mb_error(MSGBUS_ERR_NOMEM, "out of memory");
}

static msgbus_err_t mb_amqp_parse_qargs(struct mb_url *url, struct mb_amqp_conf *c)
{
    for (size_t i = 0; i < url->nopts; i++) {
        const char *k = url->opts[i].key;
        if (strncmp(k, "x-", 2) != 0)
            continue;
        if (strlen(k) > 255 || !k[2])
            return mb_error(MSGBUS_ERR_CONFIG, "queue argument option '%s': bad name", k);
        if (strcmp(k, "x-queue-type") == 0)
            return mb_error(MSGBUS_ERR_CONFIG,
                            "option 'x-queue-type': use queue_type=classic|quorum instead");
        const char *v = mb_url_opt(url, k); /* marks it used */
        struct mb_amqp_qarg *q = realloc(c->qargs, (c->nqargs + 1) * sizeof *q);
        if (!q)
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        c->qargs = q;
        q[c->nqargs].name = mb_strdup(k);
        q[c->nqargs].value = mb_strdup(v ? v : "");
        c->nqargs++;
        if (!q[c->nqargs - 1].name || !q[c->nqargs - 1].value)
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    }
    return MSGBUS_OK;
}

msgbus_err_t mb_amqp_conf_parse(struct mb_url *url, struct mb_amqp_conf *c)
{
    msgbus_err_t e;
    memset(c, 0, sizeof *c);
    c->tls = strcmp(url->scheme, "amqps") == 0;

    if (url->nhosts == 0 || !url->hosts[0].host[0])
        return mb_error(MSGBUS_ERR_CONFIG, "URL '%s' names no host", url->redacted);
    c->hosts = calloc(url->nhosts, sizeof *c->hosts);
    if (!c->hosts)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < url->nhosts; i++) {
        if (!url->hosts[i].host[0])
            return mb_error(MSGBUS_ERR_CONFIG, "URL '%s': empty host in the host list",
                            url->redacted);
        c->hosts[i].host = mb_strdup(url->hosts[i].host);
        c->nhosts = i + 1;
        if (!c->hosts[i].host)
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
        c->hosts[i].port = url->hosts[i].port ? url->hosts[i].port : (c->tls ? 5671 : 5672);
    }
    /* AMQP URI spec: no user means guest/guest; empty path means vhost "/"
     * (the path is already percent-decoded, so %2F gives "/"). */
    c->user = mb_strdup(url->user ? url->user : "guest");
    c->password = mb_strdup(url->password ? url->password : (url->user ? "" : "guest"));
    c->vhost = mb_strdup(url->path && url->path[0] ? url->path : "/");
    if (!c->user || !c->password || !c->vhost)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");

    /* A URL naming several hosts is a cluster: a classic queue lives on one
     * node and goes with it, a quorum queue survives the loss of a
     * minority of nodes. So there quorum is the default (docs/clusters.md). */
    const char *qt = mb_url_opt(url, "queue_type");
    c->quorum = !qt && c->nhosts > 1;
    if (qt && strcmp(qt, "quorum") == 0)
        c->quorum = true;
    else if (qt && strcmp(qt, "classic") != 0)
        return mb_error(MSGBUS_ERR_CONFIG, "option 'queue_type': '%s' is not classic or quorum",
                        qt);
    const char *ur = mb_url_opt(url, "unroutable");
    if (ur && strcmp(ur, "ok") == 0)
        c->unroutable_ok = true;
    else if (ur && strcmp(ur, "error") != 0)
        return mb_error(MSGBUS_ERR_CONFIG, "option 'unroutable': '%s' is not error or ok", ur);

    if ((e = mb_url_opt_int(url, "prefetch", 200, 1, 65535, &c->prefetch)) ||
        (e = mb_url_opt_int(url, "heartbeat", 10, 0, 3600, &c->heartbeat_s)) ||
        (e = mb_url_opt_int(url, "connect_timeout_ms", 5000, 1, 600000,
                            &c->connect_timeout_ms)) ||
        (e = mb_url_opt_int(url, "confirm_window", 1000, 1, 1000000, &c->confirm_window)) ||
        (e = mb_url_opt_int(url, "max_message_bytes", 128L * 1024 * 1024, 1,
                            512L * 1024 * 1024, &c->max_message_bytes)) ||
        (e = mb_url_opt_int(url, "frame_max", 131072, 4096, 1048576, &c->frame_max)) ||
        (e = mb_url_opt_int(url, "subscribe_timeout_ms", 30000, 1, 3600000,
                            &c->subscribe_timeout_ms)) ||
        (e = mb_url_opt_int(url, "reconnect_backoff_ms", 100, 1, 600000,
                            &c->reconnect_min_ms)) ||
        (e = mb_url_opt_int(url, "reconnect_backoff_max_ms", 5000, 1, 3600000,
                            &c->reconnect_max_ms)) ||
        (e = mb_url_opt_int(url, "message_timeout_ms", 0, 0, 86400000L * 30,
                            &c->message_timeout_ms)) ||
        (e = mb_url_opt_int(url, "rpc_timeout_ms", 30000, 100, 3600000, &c->rpc_timeout_ms)) ||
        (e = mb_url_opt_int(url, "partitions", 0, 0, 1000, &c->partitions)) ||
        (e = mb_url_opt_int(url, "rebalance_ms", 1000, 50, 600000, &c->rebalance_ms)) ||
        /* The core's option, read here too: closing bounds its waits for
         * the I/O thread by it. */
        (e = mb_url_opt_int(url, "close_timeout_ms", 5000, 0, 3600000, &c->close_timeout_ms)) ||
        (e = mb_url_opt_bool(url, "tls_verify_peer", true, &c->verify_peer)) ||
        (e = mb_url_opt_bool(url, "tls_verify_hostname", true, &c->verify_hostname)) ||
        (e = mb_amqp_opt_str(url, "cacert", &c->cacert)) ||
        (e = mb_amqp_opt_str(url, "cert", &c->cert)) ||
        (e = mb_amqp_opt_str(url, "key", &c->key)) || (e = mb_amqp_parse_qargs(url, c)))
        return e;
    if (c->reconnect_max_ms < c->reconnect_min_ms)
        c->reconnect_max_ms = c->reconnect_min_ms;
    if (!c->tls && (c->cacert || c->cert || c->key))
        return mb_error(MSGBUS_ERR_CONFIG,
                        "options cacert/cert/key need an amqps:// URL, not amqp://");
    if ((c->cert == NULL) != (c->key == NULL))
        return mb_error(MSGBUS_ERR_CONFIG,
                        "options 'cert' and 'key' go together (client certificate and its key)");
    return mb_url_check_unused(url, mb_amqp_option_names);
}

void mb_amqp_conf_free(struct mb_amqp_conf *c)
{
    for (size_t i = 0; i < c->nhosts; i++)
        free(c->hosts[i].host);
    free(c->hosts);
    free(c->user);
    if (c->password) {
        memset(c->password, 0, strlen(c->password));
        free(c->password);
    }
    free(c->vhost);
    for (size_t i = 0; i < c->nqargs; i++) {
        free(c->qargs[i].name);
        free(c->qargs[i].value);
    }
    free(c->qargs);
    free(c->cacert);
    free(c->cert);
    free(c->key);
    memset(c, 0, sizeof *c);
}

msgbus_err_t mb_amqp_group_queue(const char *topic, const char *group, char *buf, size_t n)
{
    int w = snprintf(buf, n, "%s.%s", topic, group);
    if (w < 0 || (size_t)w >= n || w > 255)
        return mb_error(MSGBUS_ERR_INVALID,
                        "queue name '%s.%s' is longer than AMQP's limit of 255 bytes; "
                        "use a shorter topic or group name",
                        topic, group);
    return MSGBUS_OK;
}

msgbus_err_t mb_amqp_part_name(const char *topic, const char *group, long part, char *buf,
                               size_t n)
{
    int w = part == MB_AMQP_PART_MEMBERS ? snprintf(buf, n, "%s.%s~members", topic, group)
            : part < 0                   ? snprintf(buf, n, "%s.%s~hash", topic, group)
                                         : snprintf(buf, n, "%s.%s~%ld", topic, group, part);
    if (w < 0 || (size_t)w >= n || w > 255)
        return mb_error(MSGBUS_ERR_INVALID,
                        "partition name '%s.%s~%s' is longer than AMQP's limit of 255 bytes; "
                        "use a shorter topic or group name",
                        topic, group, part == MB_AMQP_PART_MEMBERS ? "members"
                                      : part < 0                   ? "hash"
                                                                   : "N");
    return MSGBUS_OK;
}

/* Queue argument values are typed the way RabbitMQ wants them: integers as
 * signed 64-bit ("x-max-length"), true/false as booleans, anything else as
 * a string ("x-overflow=reject-publish"). */
size_t mb_amqp_queue_args(const struct mb_amqp_conf *c, amqp_table_entry_t *entries, size_t cap)
{
    size_t n = 0;
    if (c->quorum && n < cap) {
        entries[n].key = amqp_cstring_bytes("x-queue-type");
        entries[n].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[n].value.value.bytes = amqp_cstring_bytes("quorum");
        n++;
    }
    for (size_t i = 0; i < c->nqargs && n < cap; i++, n++) {
        const char *v = c->qargs[i].value;
        entries[n].key = amqp_cstring_bytes(c->qargs[i].name);
        char *end;
        errno = 0;
        long long num = strtoll(v, &end, 10);
        if (*v && !*end && errno == 0) {
            entries[n].value.kind = AMQP_FIELD_KIND_I64;
            entries[n].value.value.i64 = num;
        } else if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0) {
            entries[n].value.kind = AMQP_FIELD_KIND_BOOLEAN;
            entries[n].value.value.boolean = v[0] == 't';
        } else {
            entries[n].value.kind = AMQP_FIELD_KIND_UTF8;
            entries[n].value.value.bytes = amqp_cstring_bytes(v);
        }
    }
    return n;
}

/* ---- capabilities (docs/amqp.md "Capabilities") ----------------------------------- */

static void mb_amqp_why_not(struct mb_caps *out, uint64_t cap, const char *why)
{
    out->why_not[MB_CAP_INDEX(cap)] = why;
}

/* Each claim is exact for the bus as configured: every message msgbus
 * publishes is persistent (delivery_mode 2) and every group queue durable,
 * so a confirmed message survives a restart — unless x-expires lets the
 * broker delete an idle group queue, messages and all. */
void mb_amqp_caps(const struct mb_amqp_conf *c, struct mb_caps *out)
{
    bool expires = false;
    for (size_t i = 0; i < c->nqargs; i++)
        expires |= strcmp(c->qargs[i].name, "x-expires") == 0;
    out->bits = MSGBUS_CAP_SHARED | MSGBUS_CAP_REDELIVERED | MSGBUS_CAP_LAG;
    if (!expires)
        out->bits |= MSGBUS_CAP_DURABLE;
    else
        mb_amqp_why_not(out, MSGBUS_CAP_DURABLE,
                        "the queue argument x-expires lets RabbitMQ delete an idle group queue "
                        "with the messages it holds");
    out->max_message = (size_t)c->max_message_bytes;
    /* Partitioned: a key hashes to one single-active-consumer queue, which
     * one member at a time receives. */
    if (c->partitions > 0)
        out->bits |= MSGBUS_CAP_KEY_ORDER;
    else
        mb_amqp_why_not(out, MSGBUS_CAP_KEY_ORDER,
                        "a RabbitMQ queue round-robins its messages over its consumers, so one "
                        "key's messages can be processed by two members at once (with one "
                        "member order holds; partitions=N makes groups keep it)");
    mb_amqp_why_not(out, MSGBUS_CAP_REPLAY, MB_AMQP_WHY_NO_REPLAY);
    mb_amqp_why_not(out, MSGBUS_CAP_POSITIONS,
                    "AMQP 0-9-1 has no partitions or offsets");
    mb_amqp_why_not(out, MSGBUS_CAP_NO_DUPLICATE_PUBLISH,
                    "a publish retried after a lost confirm is stored twice by RabbitMQ (the "
                    "inbox absorbs the copy)");
    mb_amqp_why_not(out, MSGBUS_CAP_LIST, MB_AMQP_WHY_NO_LIST);
    mb_amqp_why_not(out, MSGBUS_CAP_DELAYED,
                    "RabbitMQ needs the delayed-message plugin for that, which it does not "
                    "ship");
}
