/*
 * kafka.c — the Kafka backend over librdkafka: URL and configuration,
 * the producer (idempotent, acks=all, one delivery report per message),
 * topic creation through the Admin API, and the ops table.
 *
 * The consumer half (subscriptions, acked-prefix commits, rebalances,
 * declare's group positions) lives in kafka_consumer.c.
 *
 * Threads: librdkafka does the network I/O on its own threads; delivery
 * reports are served by one poll thread of ours, which wakes once per
 * batch of reports (librdkafka enqueues a whole produce response's reports
 * as one event), never once per message.
 */
#include "backends/kafka.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* librdkafka properties msgbus cannot honour: ones it sets itself (the
 * acked-prefix commit model depends on them), ones that would break how it
 * works, and ones it accepted before and then silently ignored. Each is
 * refused at open with the msgbus way to get the effect (docs/kafka.md,
 * "Refused properties"). */
#define MB_KAFKA_COMMITS "msgbus commits what the application acked (msgbus_ack; the acked prefix " \
                         "is committed every commit_interval_ms)"
#define MB_KAFKA_HOSTS "the hosts come from the URL (kafka://host1:9092,host2:9092)"
#define MB_KAFKA_NO_TX                                                                         \
    "msgbus's producer is idempotent, not transactional (with a transactional.id every "      \
    "publish failed with 'Erroneous state'); to publish exactly what a database transaction " \
    "committed, use the outbox (msgbus/outbox.h)"
#define MB_KAFKA_LEGACY_OFFSETS "msgbus commits offsets to the group on the brokers"
static const struct {
    const char *name;
    const char *why;
} mb_kafka_refused[] = {
    {"group.id", "the group comes from msgbus_subscribe(bus, topic, group, ...)"},
    {"enable.auto.commit", MB_KAFKA_COMMITS},
    {"enable.auto.offset.store", MB_KAFKA_COMMITS},
    {"auto.commit.enable", MB_KAFKA_COMMITS},
    {"auto.commit.interval.ms", "set msgbus's commit_interval_ms instead: " MB_KAFKA_COMMITS},
    {"bootstrap.servers", MB_KAFKA_HOSTS},
    {"metadata.broker.list", MB_KAFKA_HOSTS},
    {"transactional.id", MB_KAFKA_NO_TX},
    {"transaction.timeout.ms", MB_KAFKA_NO_TX},
    {"auto.offset.reset",
     "msgbus starts a new group at the end of each partition as of its first assignment "
     "(msgbus_declare fixes that point before any consumer runs); a configurable start "
     "position is not supported yet"},
    {"enable.partition.eof", "msgbus delivers messages only and has no end-of-partition event"},
    {"group.instance.id",
     "msgbus makes one consumer per subscription (and one for declare), and one static "
     "member id shared by several consumers makes the group fence them"},
    {"delivery.report.only.error",
     "msgbus confirms each message from its delivery report; without reports for successes "
     "no publish would ever be confirmed"},
    {"statistics.interval.ms", "msgbus does not serve librdkafka's statistics"},
    {"enabled_events", "msgbus serves librdkafka through callbacks"},
    {"log.queue", "msgbus forwards librdkafka's log lines itself (see msgbus_set_log)"},
    {"consume.callback.max.messages", "msgbus does not use librdkafka's consume callback"},
    {"offset.store.method", MB_KAFKA_LEGACY_OFFSETS},
    {"offset.store.path", MB_KAFKA_LEGACY_OFFSETS},
    {"offset.store.sync.interval.ms", MB_KAFKA_LEGACY_OFFSETS},
    {NULL, NULL}};

/* librdkafka's properties that hold secrets, whose values are scrubbed
 * from librdkafka's own log lines before msgbus forwards them (msgbus's
 * own output redacts by mb_secret_name). */
static const char *const mb_kafka_secret_props[] = {
    "sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config", "ssl.key.pem", NULL};

/* msgbus's own options (not librdkafka properties), for suggestions. */
static const char *const mb_kafka_options[] = {
    "partitions",     "replication_factor", "connect_timeout_ms", "subscribe_timeout_ms",
    "commit_interval_ms", "create_topics", "max_unacked", NULL};

msgbus_err_t mb_kafka_err(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return MSGBUS_OK;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
        return MSGBUS_ERR_TOO_LARGE;
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        return MSGBUS_ERR_QUEUE_FULL;
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
        return MSGBUS_ERR_TIMEOUT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
        return MSGBUS_ERR_CONNECT;
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
        return MSGBUS_ERR_AUTH;
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
        return MSGBUS_ERR_NOT_FOUND;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__DESTROY:
        return MSGBUS_ERR_CLOSED;
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
        return MSGBUS_ERR_INVALID;
    default:
        return MSGBUS_ERR_BROKER;
    }
}

/* ---- configuration ---------------------------------------------------- */

/* Replaces every occurrence of `secret` in text (NUL-terminated, in a
 * buffer of `cap` bytes) by "***", truncating to fit. */
static void mb_kafka_scrub(char *text, size_t cap, const char *secret)
{
    size_t sl = secret ? strlen(secret) : 0;
    if (!sl || !strstr(text, secret))
        return;
    size_t tl = strlen(text);
    char *out = malloc(tl * 3 + 1);
    if (!out) { /* cannot scrub: say nothing rather than the secret */
        snprintf(text, cap, "(text withheld: it held a secret)");
        return;
    }
    size_t o = 0;
    for (const char *p = text; *p;) {
        if (strncmp(p, secret, sl) == 0) {
            memcpy(out + o, "***", 3);
            o += 3;
            p += sl;
        } else {
            out[o++] = *p++;
        }
    }
    out[o] = '\0';
    snprintf(text, cap, "%s", out);
    free(out);
}

/* Scrubs the values of the backend's secret properties (by name:
 * mb_secret_name) from text: for librdkafka's error strings, which may
 * quote the value they refused. */
static void mb_kafka_scrub_props(const struct mb_backend *be, char *text, size_t cap)
{
    for (size_t i = 0; i < be->nprops; i++)
        if (mb_secret_name(be->props[i].key))
            mb_kafka_scrub(text, cap, be->props[i].value);
}

/* Scrubs the secrets of rk's configuration from text. */
static void mb_kafka_scrub_conf(const rd_kafka_t *rk, char *text, size_t cap)
{
    const rd_kafka_conf_t *conf = rd_kafka_conf((rd_kafka_t *)rk);
    if (!conf)
        return;
    for (size_t i = 0; mb_kafka_secret_props[i]; i++) {
        size_t n = 0;
        if (rd_kafka_conf_get(conf, mb_kafka_secret_props[i], NULL, &n) != RD_KAFKA_CONF_OK ||
            n <= 1)
            continue;
        char *v = malloc(n);
        if (v && rd_kafka_conf_get(conf, mb_kafka_secret_props[i], v, &n) == RD_KAFKA_CONF_OK)
            mb_kafka_scrub(text, cap, v);
        free(v);
    }
}

static void mb_kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* librdkafka logs every failed connection attempt at LOG_ERR (3) and
     * retries it; msgbus reports what it cannot recover from as errors
     * itself, so librdkafka's 3 becomes a warning here. */
    msgbus_log_level_t l = level <= 2   ? MSGBUS_LOG_ERROR
                           : level <= 4 ? MSGBUS_LOG_WARN
                           : level <= 6 ? MSGBUS_LOG_INFO
                                        : MSGBUS_LOG_DEBUG;
    /* One set of user properties goes to the producer and the consumers;
     * librdkafka warns on each handle about the other side's properties. */
    if (strcmp(fac, "CONFWARN") == 0 && strstr(buf, " property and will be ignored by this "))
        l = MSGBUS_LOG_DEBUG;
    if (!mb_log_enabled(l))
        return;
    /* librdkafka redacts its configuration dumps, but other lines (with
     * debug=...) may quote a property; nothing secret leaves msgbus. */
    char line[2048];
    snprintf(line, sizeof line, "%s", buf);
    mb_kafka_scrub_conf(rk, line, sizeof line);
    mb_log(l, "kafka %s: %s: %s", rd_kafka_name(rk), fac, line);
}

void mb_kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)opaque;
    char detail[512];
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, detail, sizeof detail);
        mb_kafka_scrub_conf(rk, detail, sizeof detail);
        mb_log(MSGBUS_LOG_ERROR, "kafka %s: fatal error %s: %s; messages now fail",
               rd_kafka_name(rk), rd_kafka_err2name(orig), detail);
        return;
    }
    snprintf(detail, sizeof detail, "%s", reason ? reason : "");
    mb_kafka_scrub_conf(rk, detail, sizeof detail);
    /* Transport errors are retried by librdkafka and already logged by it
     * (log_cb); other errors are worth a warning. */
    bool transport = err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN;
    mb_log(transport ? MSGBUS_LOG_INFO : MSGBUS_LOG_WARN, "kafka %s: %s: %s", rd_kafka_name(rk),
           rd_kafka_err2name((rd_kafka_resp_err_t)err), detail);
}

/* What an error librdkafka reports while open waits for the cluster
 * means: MSGBUS_OK for one a retry may cure (connection refused: the
 * broker may be starting), else the code open fails with at once. A
 * failed SASL login, a failed TLS handshake (untrusted certificate, or a
 * listener that does not speak TLS) and a listener that hangs up on the
 * very first request (ApiVersion: a TLS or SASL listener hearing
 * plaintext) come back the same way however often librdkafka retries
 * them, within half a second where connect_timeout_ms is 10 s. */
static msgbus_err_t mb_kafka_open_verdict(int err, const char *reason)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        return MSGBUS_ERR_AUTH;
    case RD_KAFKA_RESP_ERR__SSL:
        return MSGBUS_ERR_CONNECT;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
        return strstr(reason, "while requesting ApiVersion") ? MSGBUS_ERR_CONNECT : MSGBUS_OK;
    default:
        return MSGBUS_OK;
    }
}

/* The producer's error_cb: mb_kafka_error_cb, and while open waits for
 * the cluster, keeps what open reports (open_code in kafka.h). Only the
 * opening thread serves the producer then (the poll thread starts after). */
static void mb_kafka_producer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct mb_backend *be = opaque;
    mb_kafka_error_cb(rk, err, reason, opaque);
    /* "1/1 brokers are down" says less than the error before it. */
    if (!be->opening || be->open_code != MSGBUS_OK || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        return;
    char detail[512];
    snprintf(detail, sizeof detail, "%s", reason ? reason : rd_kafka_err2str(err));
    mb_kafka_scrub_conf(rk, detail, sizeof detail);
    snprintf(be->open_last, sizeof be->open_last, "%s", detail);
    msgbus_err_t code = mb_kafka_open_verdict(err, detail);
    /* A broker shutting down also hangs up on a request in flight: the
     * hang-up on ApiVersion counts from its second time. */
    if (code != MSGBUS_OK && err == RD_KAFKA_RESP_ERR__TRANSPORT && be->open_hangups++ == 0)
        code = MSGBUS_OK;
    if (code != MSGBUS_OK) {
        be->open_code = code;
        snprintf(be->open_reason, sizeof be->open_reason, "%s", detail);
    }
}

/* rd_kafka_conf_set, with a refusal as msgbus's error; librdkafka's text
 * may quote the value, which for a secret is scrubbed. */
static msgbus_err_t mb_kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *value)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        if (mb_secret_name(key))
            mb_kafka_scrub(errstr, sizeof errstr, value);
        return mb_error(MSGBUS_ERR_CONFIG, "librdkafka refused property '%s': %s", key, errstr);
    }
    return MSGBUS_OK;
}

/* Appends " key=value" to line[*off..cap) for each pair of `kv` whose value
 * differs from the same key's in `dkv` (librdkafka's defaults), callbacks
 * and pointers left out. */
static void mb_kafka_conf_diff(const char **kv, size_t n, const char **dkv, size_t dn,
                               char *line, size_t cap, size_t *off)
{
    for (size_t i = 0; i + 1 < n && *off < cap; i += 2) {
        size_t kl = strlen(kv[i]);
        if ((kl > 3 && strcmp(kv[i] + kl - 3, "_cb") == 0) || strcmp(kv[i], "opaque") == 0 ||
            strcmp(kv[i], "default_topic_conf") == 0)
            continue;
        const char *dv = NULL;
        for (size_t k = 0; k + 1 < dn; k += 2)
            if (strcmp(dkv[k], kv[i]) == 0)
                dv = dkv[k + 1];
        if (dv && strcmp(dv, kv[i + 1]) == 0)
            continue;
        /* Secrets (sasl.password, also from user:password@ in the URL)
         * never leave msgbus, not even at debug level. */
        *off += (size_t)snprintf(line + *off, cap - *off, " %s=%s", kv[i],
                                 mb_secret_name(kv[i]) ? "***" : kv[i + 1]);
    }
}

/* Logs (debug level) every property of `conf` whose value differs from
 * librdkafka's default: "kafka producer config: enable.idempotence=true
 * ...". For comparing msgbus's settings with a raw client's (bench_kafka
 * prints both). */
static void mb_kafka_conf_log(const char *what, rd_kafka_conf_t *conf)
{
    char line[4096] = "";
    size_t off = 0, n = 0, dn = 0;
    rd_kafka_conf_t *def = rd_kafka_conf_new();
    if (def) {
        const char **kv = rd_kafka_conf_dump(conf, &n), **dkv = rd_kafka_conf_dump(def, &dn);
        mb_kafka_conf_diff(kv, n, dkv, dn, line, sizeof line, &off);
        rd_kafka_conf_dump_free(kv, n);
        rd_kafka_conf_dump_free(dkv, dn);
        rd_kafka_conf_destroy(def);
    }
    /* Topic-level properties (acks, auto.offset.reset) live apart. */
    rd_kafka_topic_conf_t *tc = rd_kafka_conf_get_default_topic_conf(conf);
    rd_kafka_topic_conf_t *dtc = rd_kafka_topic_conf_new();
    if (tc && dtc) {
        const char **kv = rd_kafka_topic_conf_dump(tc, &n);
        const char **dkv = rd_kafka_topic_conf_dump(dtc, &dn);
        mb_kafka_conf_diff(kv, n, dkv, dn, line, sizeof line, &off);
        rd_kafka_conf_dump_free(kv, n);
        rd_kafka_conf_dump_free(dkv, dn);
    }
    if (dtc)
        rd_kafka_topic_conf_destroy(dtc);
    mb_log(MSGBUS_LOG_DEBUG, "kafka %s config:%s", what, line);
}

rd_kafka_conf_t *mb_kafka_conf_new(struct mb_backend *be, rd_kafka_type_t type,
                                   const char *const *defaults)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (!conf) {
        mb_error(MSGBUS_ERR_NOMEM, "out of memory creating a librdkafka configuration");
        return NULL;
    }
    if (mb_kafka_conf_set(conf, "bootstrap.servers", be->bootstrap) != MSGBUS_OK)
        goto fail;
    /* The client id shows up in broker logs; name the library. */
    if (mb_kafka_conf_set(conf, "client.id", type == RD_KAFKA_PRODUCER ? "msgbus-producer"
                                                                       : "msgbus-consumer") !=
        MSGBUS_OK)
        goto fail;
    for (size_t i = 0; defaults && defaults[i]; i += 2)
        if (mb_kafka_conf_set(conf, defaults[i], defaults[i + 1]) != MSGBUS_OK)
            goto fail;
    for (size_t i = 0; i < be->nprops; i++)
        if (mb_kafka_conf_set(conf, be->props[i].key, be->props[i].value) != MSGBUS_OK)
            goto fail;
    rd_kafka_conf_set_log_cb(conf, mb_kafka_log_cb);
    rd_kafka_conf_set_error_cb(conf, mb_kafka_error_cb);
    if (mb_log_enabled(MSGBUS_LOG_DEBUG))
        mb_kafka_conf_log(type == RD_KAFKA_PRODUCER ? "producer" : "consumer", conf);
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    return NULL;
}

/* Looks up an option under its msgbus spelling (`subscribe_timeout_ms`) and
 * the one MSGBUS_KAFKA_* variables produce (`subscribe.timeout.ms`, since
 * this backend turns '_' into '.' for librdkafka's sake). No dotted form of
 * msgbus's option names is a librdkafka property (checked against 2.0.2:
 * that is why the unacked limit is not called max_in_flight, whose dotted
 * form is librdkafka's `max.in.flight`). */
static const char *mb_kafka_opt_key(const struct mb_url *url, const char *key, char *buf,
                                    size_t n)
{
    snprintf(buf, n, "%s", key);
    for (char *p = buf; *p; p++)
        if (*p == '_')
            *p = '.';
    if (strcmp(buf, key) != 0 && mb_url_opt(url, buf) && !mb_url_opt(url, key))
        return buf;
    return key;
}

static msgbus_err_t mb_kafka_opt_int(const struct mb_url *url, const char *key, long def,
                                     long min, long max, long *out)
{
    char buf[64];
    return mb_url_opt_int(url, mb_kafka_opt_key(url, key, buf, sizeof buf), def, min, max, out);
}

static msgbus_err_t mb_kafka_opt_bool(const struct mb_url *url, const char *key, bool def,
                                      bool *out)
{
    char buf[64];
    return mb_url_opt_bool(url, mb_kafka_opt_key(url, key, buf, sizeof buf), def, out);
}

static msgbus_err_t mb_kafka_add_prop(struct mb_backend *be, const char *key, const char *value)
{
    struct mb_kafka_prop *p = realloc(be->props, (be->nprops + 1) * sizeof *p);
    if (!p)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    be->props = p;
    p[be->nprops].key = mb_strdup(key);
    p[be->nprops].value = mb_strdup(value);
    if (!p[be->nprops].key || !p[be->nprops].value) {
        free(p[be->nprops].key);
        free(p[be->nprops].value);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    }
    be->nprops++;
    return MSGBUS_OK;
}

/* Reads msgbus's own options, then passes every other option through to
 * librdkafka, validating each on a scratch configuration so that a refusal
 * names the option as the user wrote it. */
static msgbus_err_t mb_kafka_parse_options(struct mb_backend *be, struct mb_url *url)
{
    msgbus_err_t e;
    if ((e = mb_kafka_opt_int(url, "partitions", 3, 1, 100000, &be->partitions)) ||
        (e = mb_kafka_opt_int(url, "replication_factor", 1, 1, 100, &be->replication_factor)) ||
        (e = mb_kafka_opt_int(url, "connect_timeout_ms", 10000, 1, 3600000,
                              &be->connect_timeout_ms)) ||
        (e = mb_kafka_opt_int(url, "subscribe_timeout_ms", 60000, 1, 3600000,
                              &be->subscribe_timeout_ms)) ||
        (e = mb_kafka_opt_int(url, "commit_interval_ms", 100, 0, 3600000,
                              &be->commit_interval_ms)) ||
        (e = mb_kafka_opt_int(url, "max_unacked", 100000, 1, 100000000, &be->max_unacked)) ||
        (e = mb_kafka_opt_bool(url, "create_topics", true, &be->create_topics)))
        return e;

    rd_kafka_conf_t *scratch = rd_kafka_conf_new();
    if (!scratch)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    e = MSGBUS_OK;
    for (size_t i = 0; i < url->nopts && e == MSGBUS_OK; i++) {
        const struct mb_url_opt *o = &url->opts[i];
        if (o->used)
            continue;
        char origin[160];
        mb_url_opt_origin(url, o->key, origin, sizeof origin);
        const char *value = mb_url_opt(url, o->key); /* marks it used */
        for (size_t k = 0; mb_kafka_refused[k].name; k++)
            if (strcmp(o->key, mb_kafka_refused[k].name) == 0)
                e = mb_error(MSGBUS_ERR_CONFIG, "%s: msgbus does not take the Kafka property "
                             "'%s': %s", origin, o->key, mb_kafka_refused[k].why);
        if (e)
            break;
        char errstr[512];
        if (rd_kafka_conf_set(scratch, o->key, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            if (mb_secret_name(o->key))
                mb_kafka_scrub(errstr, sizeof errstr, value);
            e = mb_error(MSGBUS_ERR_CONFIG, "%s: librdkafka refused property '%s': %s", origin,
                         o->key, errstr);
            break;
        }
        e = mb_kafka_add_prop(be, o->key, value);
    }
    if (e == MSGBUS_OK) {
        char v[64];
        size_t n = sizeof v;
        if (rd_kafka_conf_get(scratch, "message.max.bytes", v, &n) == RD_KAFKA_CONF_OK)
            be->max_message_bytes = strtol(v, NULL, 10);
    }
    rd_kafka_conf_destroy(scratch);
    return e;
}

/* The value of the user's property `key` (after parsing), or NULL. */
static const char *mb_kafka_prop(const struct mb_backend *be, const char *key)
{
    for (size_t i = 0; i < be->nprops; i++)
        if (strcmp(be->props[i].key, key) == 0)
            return be->props[i].value;
    return NULL;
}

/* Credentials mean SASL, wherever they come from (user:password@ in the
 * URL, or sasl.username / sasl.password options): librdkafka's defaults
 * (security.protocol=plaintext, sasl.mechanism=GSSAPI) would connect
 * without sending them, silently. So: the URL's user and password become
 * sasl.username / sasl.password (given both ways is ambiguous and
 * refused); then, with a user name or password, security.protocol
 * defaults to SASL_SSL and sasl.mechanism to SCRAM-SHA-512, and settings
 * under which the credentials would go unused are refused. */
static msgbus_err_t mb_kafka_credentials(struct mb_backend *be, const struct mb_url *url)
{
    msgbus_err_t e;
    if (url->user && mb_kafka_prop(be, "sasl.username"))
        return mb_error(MSGBUS_ERR_CONFIG, "%s: the SASL user name is given twice, in the URL "
                        "(user@) and as option sasl.username: keep one", url->redacted);
    if (url->password && mb_kafka_prop(be, "sasl.password"))
        return mb_error(MSGBUS_ERR_CONFIG, "%s: the SASL password is given twice, in the URL "
                        "(user:password@) and as option sasl.password: keep one",
                        url->redacted);
    if (url->user && (e = mb_kafka_add_prop(be, "sasl.username", url->user)))
        return e;
    if (url->password && (e = mb_kafka_add_prop(be, "sasl.password", url->password)))
        return e;
    if (!mb_kafka_prop(be, "sasl.username") && !mb_kafka_prop(be, "sasl.password"))
        return MSGBUS_OK;
    const char *proto = mb_kafka_prop(be, "security.protocol");
    if (!proto)
        e = mb_kafka_add_prop(be, "security.protocol", "SASL_SSL");
    else if (strncasecmp(proto, "sasl_", 5) != 0)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: a SASL user name or password is given, but "
                        "security.protocol=%s sends none: use security.protocol=SASL_SSL (the "
                        "default with credentials) or SASL_PLAINTEXT, or drop the credentials",
                        url->redacted, proto);
    else
        e = MSGBUS_OK;
    if (e)
        return e;
    const char *mech = mb_kafka_prop(be, "sasl.mechanism");
    if (!mech)
        mech = mb_kafka_prop(be, "sasl.mechanisms"); /* librdkafka's alias */
    if (!mech)
        return mb_kafka_add_prop(be, "sasl.mechanism", "SCRAM-SHA-512");
    if (strcasecmp(mech, "GSSAPI") == 0 || strcasecmp(mech, "OAUTHBEARER") == 0)
        return mb_error(MSGBUS_ERR_CONFIG, "%s: sasl.mechanism=%s takes no user name or "
                        "password, so they would go unused: use PLAIN or SCRAM-SHA-256/512 "
                        "(SCRAM-SHA-512 is the default with credentials), or drop them",
                        url->redacted, mech);
    return MSGBUS_OK;
}

static msgbus_err_t mb_kafka_bootstrap(struct mb_backend *be, const struct mb_url *url)
{
    if (url->nhosts == 0 || !url->hosts[0].host[0])
        return mb_error(MSGBUS_ERR_CONFIG, "%s: a kafka URL needs at least one host "
                        "(kafka://host:9092[,host2:9092])", url->redacted);
    if (url->has_path && url->path[0])
        return mb_error(MSGBUS_ERR_CONFIG, "%s: a kafka URL has no path (got '/%s')",
                        url->redacted, url->path);
    size_t cap = 1;
    for (size_t i = 0; i < url->nhosts; i++)
        cap += strlen(url->hosts[i].host) + 16;
    be->bootstrap = malloc(cap);
    if (!be->bootstrap)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    size_t off = 0;
    for (size_t i = 0; i < url->nhosts; i++) {
        const char *h = url->hosts[i].host;
        bool v6 = strchr(h, ':') != NULL;
        off += (size_t)snprintf(be->bootstrap + off, cap - off, "%s%s%s%s:%d", i ? "," : "",
                                v6 ? "[" : "", h, v6 ? "]" : "",
                                url->hosts[i].port ? url->hosts[i].port : 9092);
    }
    return MSGBUS_OK;
}

/* ---- producer ------------------------------------------------------------ */

/* Topic handles for publishing. Naming the topic in rd_kafka_producev
 * (RD_KAFKA_V_TOPIC) makes librdkafka take its client lock and search its
 * topic list by name on every message (~290 instructions per message in
 * bench_kafka produce_64); a handle kept here skips that. The first
 * MB_KAFKA_TOPICS topics published to get a handle, held until close;
 * further topics are named per message as before. */
struct mb_kafka_topic {
    rd_kafka_topic_t *rkt;
    size_t len;
    char name[]; /* len + 1 bytes */
};

/* The producer's handle for `topic` (len bytes), made on first use; NULL
 * when the cache is full or librdkafka refused: the caller then names the
 * topic per message, so errors are the same as without the cache. */
static rd_kafka_topic_t *mb_kafka_topic(struct mb_backend *be, const char *topic, size_t len)
{
    size_t n = atomic_load_explicit(&be->ntopics, memory_order_acquire);
    for (size_t i = 0; i < n; i++) {
        const struct mb_kafka_topic *t = be->topics[i];
        if (t->len == len && memcmp(t->name, topic, len) == 0)
            return t->rkt;
    }
    if (n == MB_KAFKA_TOPICS)
        return NULL;
    rd_kafka_topic_t *rkt = NULL;
    pthread_mutex_lock(&be->topics_mu);
    size_t now = atomic_load_explicit(&be->ntopics, memory_order_relaxed);
    for (size_t i = n; i < now && !rkt; i++) /* added meanwhile */
        if (be->topics[i]->len == len && memcmp(be->topics[i]->name, topic, len) == 0)
            rkt = be->topics[i]->rkt;
    if (!rkt && now < MB_KAFKA_TOPICS) {
        struct mb_kafka_topic *t = malloc(sizeof *t + len + 1);
        if (t && (t->rkt = rd_kafka_topic_new(be->producer, topic, NULL))) {
            t->len = len;
            memcpy(t->name, topic, len + 1);
            be->topics[now] = t;
            atomic_store_explicit(&be->ntopics, now + 1, memory_order_release);
            rkt = t->rkt;
        } else {
            free(t);
        }
    }
    pthread_mutex_unlock(&be->topics_mu);
    return rkt;
}

/* Before rd_kafka_destroy: nobody publishes any more. */
static void mb_kafka_topics_release(struct mb_backend *be)
{
    size_t n = atomic_load(&be->ntopics);
    for (size_t i = 0; i < n; i++) {
        rd_kafka_topic_destroy(be->topics[i]->rkt);
        free(be->topics[i]);
    }
    atomic_store(&be->ntopics, 0);
}

/* Hands the gathered successful reports to the core. */
static void mb_kafka_dr_flush(struct mb_backend *be)
{
    mb_bus_confirm_batch(be->bus, be->dr_batch, be->dr_n);
    be->dr_n = 0;
}

static void mb_kafka_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    (void)rk;
    struct mb_backend *be = opaque;
    struct mb_confirm *token = rkm->_private;
    if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* Confirms per message cost a lock and maybe an eventfd write
         * each; gather them and push once per rd_kafka_poll. */
        be->dr_batch[be->dr_n++] = token;
        if (be->dr_n == sizeof be->dr_batch / sizeof be->dr_batch[0])
            mb_kafka_dr_flush(be);
        return;
    }
    /* Keep reports in delivery order: earlier successes go first. */
    mb_kafka_dr_flush(be);
    char detail[600];
    const char *topic = rkm->rkt ? rd_kafka_topic_name(rkm->rkt)
                        : token     ? mb_confirm_topic(token)
                                    : "?";
    if (rkm->err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
        rkm->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        snprintf(detail, sizeof detail,
                 "topic '%s' does not exist and the broker did not create it (automatic topic "
                 "creation is off?): create it with msgbus_declare (%s)",
                 topic, rd_kafka_err2str(rkm->err));
    else
        snprintf(detail, sizeof detail, "kafka: %s (%s)", rd_kafka_err2str(rkm->err),
                 rd_kafka_err2name(rkm->err));
    mb_bus_confirm(be->bus, token, mb_kafka_err(rkm->err), detail);
}

/* Serves the delivery reports already queued, unless another thread is
 * serving them right now. */
static void mb_kafka_serve_now(struct mb_backend *be)
{
    if (pthread_mutex_trylock(&be->dr_mu) != 0)
        return;
    rd_kafka_poll(be->producer, 0);
    mb_kafka_dr_flush(be);
    atomic_fetch_add(&be->served, 1);
    pthread_mutex_unlock(&be->dr_mu);
}

/* Serves delivery reports while the application does not publish: then
 * rd_kafka_poll returns as soon as a batch of reports arrives, so confirms
 * reach the core without added latency. While publishes keep coming, the
 * publishing threads serve them (mb_kafka_publish, every
 * MB_KAFKA_SERVE_EVERY publishes) and this thread naps: when nobody served
 * during a nap (publishing stopped, or goes on too slowly to reach the
 * next serve), it serves them itself and naps 1 ms next; when a publisher
 * served, it doubles the nap, up to MB_KAFKA_NAP_MAX_MS. A fast publisher
 * thus costs ~125 wake-ups a second, not 1,000 (each was a context switch
 * on the publisher's cores). A report reaches the core at most about
 * MB_KAFKA_NAP_MAX_MS after the broker's answer while publishing goes on,
 * and so do the last reports of a burst, unless a msgbus_flush
 * (mb_kafka_flush wakes this thread) asks for them. */
#define MB_KAFKA_NAP_MAX_MS 8
static void *mb_kafka_poll_main(void *arg)
{
    mb_thread_name("msgbus-kpoll");
    struct mb_backend *be = arg;
    unsigned long seen = atomic_load(&be->published);
    int nap_ms = 1;
    while (!atomic_load(&be->stopping)) {
        unsigned long now = atomic_load(&be->published);
        pthread_mutex_lock(&be->nap_mu);
        bool woken = be->wake;
        be->wake = false;
        if (now != seen && !woken) {
            seen = now;
            unsigned long served = atomic_load(&be->served);
            struct timespec dl;
            mb_deadline(&dl, nap_ms);
            while (!be->wake && pthread_cond_timedwait(&be->nap_cv, &be->nap_mu, &dl) == 0)
                ;
            pthread_mutex_unlock(&be->nap_mu);
            if (atomic_load(&be->served) == served) {
                mb_kafka_serve_now(be);
                nap_ms = 1;
            } else if (nap_ms < MB_KAFKA_NAP_MAX_MS) {
                nap_ms *= 2;
            }
            continue;
        }
        pthread_mutex_unlock(&be->nap_mu);
        nap_ms = 1;
        seen = now;
        pthread_mutex_lock(&be->dr_mu);
        rd_kafka_poll(be->producer, 100);
        mb_kafka_dr_flush(be);
        pthread_mutex_unlock(&be->dr_mu);
    }
    return NULL;
}

/* A publishing thread serves the reports every this many publishes
 * (power of two): as often as a raw librdkafka loop typically polls. Every
 * 64, the publishing thread took librdkafka's report-queue lock 16 times
 * as often while its broker thread filled that queue. */
#define MB_KAFKA_SERVE_EVERY 1024

/* ops->flush: librdkafka sends on its own; what a flush changes is who
 * waits for the reports. The core then waits for the confirms itself. */
static msgbus_err_t mb_kafka_flush(struct mb_backend *be, int timeout_ms)
{
    (void)timeout_ms;
    mb_kafka_serve_now(be);
    pthread_mutex_lock(&be->nap_mu);
    be->wake = true;
    pthread_cond_signal(&be->nap_cv);
    pthread_mutex_unlock(&be->nap_mu);
    return MSGBUS_OK;
}

static msgbus_err_t mb_kafka_publish(struct mb_backend *be, const char *topic,
                                     const msgbus_msg_t *m, struct mb_confirm *token)
{
    size_t size = mb_msg_wire_size(m);
    if (be->max_message_bytes > 0 && size > (size_t)be->max_message_bytes)
        return mb_error(MSGBUS_ERR_TOO_LARGE,
                        "message of %zu bytes exceeds the Kafka producer's message.max.bytes "
                        "(%ld)", size, be->max_message_bytes);
    /* CloudEvents Kafka binding: the id travels as header ce_id. */
    rd_kafka_headers_t *hdrs = mb_kafka_encode_headers(m);
    if (!hdrs)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    rd_kafka_topic_t *rkt = mb_kafka_topic(be, topic, strlen(topic));
    rd_kafka_resp_err_t err;
    if (rkt)
        err = rd_kafka_producev(
            be->producer, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_VALUE((void *)m->payload, m->len),
            RD_KAFKA_V_KEY((void *)m->key, m->key_len), RD_KAFKA_V_HEADERS(hdrs),
            RD_KAFKA_V_TIMESTAMP(m->timestamp), RD_KAFKA_V_OPAQUE(token), RD_KAFKA_V_END);
    else
        err = rd_kafka_producev(
            be->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_VALUE((void *)m->payload, m->len),
            RD_KAFKA_V_KEY((void *)m->key, m->key_len), RD_KAFKA_V_HEADERS(hdrs),
            RD_KAFKA_V_TIMESTAMP(m->timestamp), RD_KAFKA_V_OPAQUE(token), RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) { /* librdkafka owns hdrs now */
        if ((atomic_fetch_add(&be->published, 1) & (MB_KAFKA_SERVE_EVERY - 1)) == 0)
            mb_kafka_serve_now(be);
        return MSGBUS_OK;
    }
    rd_kafka_headers_destroy(hdrs);
    switch (err) {
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
        /* Make room: the queue empties as reports are served. */
        mb_kafka_serve_now(be);
        return mb_error(MSGBUS_ERR_QUEUE_FULL, "librdkafka's local queue is full "
                        "(queue.buffering.max.messages/kbytes): poll, then retry");
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
        return mb_error(MSGBUS_ERR_TOO_LARGE, "message of %zu bytes is too large for Kafka: %s",
                        size, rd_kafka_err2str(err));
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
        return mb_error(MSGBUS_ERR_NOT_FOUND,
                        "topic '%s' does not exist and the broker does not create topics "
                        "automatically: create it with msgbus_declare", topic);
    default:
        return mb_error(mb_kafka_err(err), "kafka: cannot publish to '%s': %s", topic,
                        rd_kafka_err2str(err));
    }
}

/* ---- topics --------------------------------------------------------------- */

msgbus_err_t mb_kafka_topic_partitions(struct mb_backend *be, rd_kafka_t *rk, const char *topic,
                                       bool just_created, int *out)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt)
        return mb_error(MSGBUS_ERR_INVALID, "kafka: bad topic '%s': %s", topic,
                        rd_kafka_err2str(rd_kafka_last_error()));
    int64_t deadline = mb_mono_ms() + be->connect_timeout_ms;
    msgbus_err_t e = MSGBUS_OK;
    for (;;) {
        const struct rd_kafka_metadata *md = NULL;
        int64_t left = deadline - mb_mono_ms();
        rd_kafka_resp_err_t err =
            rd_kafka_metadata(rk, 0, rkt, &md, (int)(left > 0 ? left : 1));
        rd_kafka_resp_err_t terr = err;
        int n = 0;
        bool leaders = true;
        if (!err) {
            terr = md->topic_cnt == 1 ? md->topics[0].err : RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
            if (!terr) {
                n = md->topics[0].partition_cnt;
                for (int i = 0; i < n; i++)
                    if (md->topics[0].partitions[i].leader < 0 || md->topics[0].partitions[i].err)
                        leaders = false;
            }
            rd_kafka_metadata_destroy(md);
        }
        if (!terr && n > 0 && leaders) {
            *out = n;
            break;
        }
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR && terr == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
            !just_created) {
            e = mb_error(MSGBUS_ERR_NOT_FOUND,
                         "topic '%s' does not exist on %s: create it with msgbus_declare (or "
                         "let subscribe create it: create_topics=true)",
                         topic, mb_bus_url(be->bus));
            break;
        }
        if (mb_mono_ms() >= deadline) {
            e = mb_error(err ? mb_kafka_err(err) : MSGBUS_ERR_TIMEOUT,
                         "kafka: no metadata with partition leaders for topic '%s' within %ld ms: %s",
                         topic, be->connect_timeout_ms, rd_kafka_err2str(terr ? terr : err));
            if (e == MSGBUS_ERR_NOT_FOUND)
                e = MSGBUS_ERR_TIMEOUT;
            break;
        }
        struct timespec ts = {0, 50 * 1000000};
        nanosleep(&ts, NULL);
    }
    rd_kafka_topic_destroy(rkt);
    return e;
}

msgbus_err_t mb_kafka_ensure_topic(struct mb_backend *be, const char *topic)
{
    char errstr[512];
    rd_kafka_t *rk = be->producer;
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(topic, (int)be->partitions,
                                                    (int)be->replication_factor, errstr,
                                                    sizeof errstr);
    if (!nt)
        return mb_error(MSGBUS_ERR_INVALID, "kafka: cannot create topic '%s': %s", topic, errstr);
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(ao, (int)be->connect_timeout_ms, errstr,
                                              sizeof errstr);
    /* Let the controller wait until the topic exists everywhere. */
    rd_kafka_AdminOptions_set_operation_timeout(ao, (int)be->connect_timeout_ms, errstr,
                                                sizeof errstr);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, &nt, 1, ao, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, (int)be->connect_timeout_ms * 2 + 1000);
    msgbus_err_t e = MSGBUS_OK;
    if (!ev) {
        e = mb_error(MSGBUS_ERR_TIMEOUT, "kafka: creating topic '%s': no answer within %ld ms",
                     topic, be->connect_timeout_ms * 2);
    } else if (rd_kafka_event_error(ev)) {
        rd_kafka_resp_err_t err = rd_kafka_event_error(ev);
        e = mb_error(mb_kafka_err(err), "kafka: creating topic '%s': %s", topic,
                     rd_kafka_event_error_string(ev));
    } else {
        size_t cnt = 0;
        const rd_kafka_topic_result_t **res =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
        rd_kafka_resp_err_t terr = cnt ? rd_kafka_topic_result_error(res[0])
                                       : RD_KAFKA_RESP_ERR_NO_ERROR;
        if (terr && terr != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            const char *s = rd_kafka_topic_result_error_string(res[0]);
            e = mb_error(mb_kafka_err(terr), "kafka: creating topic '%s' (%ld partitions, "
                         "replication factor %ld): %s", topic, be->partitions,
                         be->replication_factor, s ? s : rd_kafka_err2str(terr));
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_NewTopic_destroy(nt);
    if (e)
        return e;
    int n;
    return mb_kafka_topic_partitions(be, be->producer, topic, true, &n);
}

static msgbus_err_t mb_kafka_declare(struct mb_backend *be, const char *topic, const char *group)
{
    msgbus_err_t e = mb_kafka_ensure_topic(be, topic);
    if (e || !group)
        return e;
    return mb_kafka_declare_group(be, topic, group);
}

/* ---- lifecycle -------------------------------------------------------- */

static void mb_kafka_free(struct mb_backend *be)
{
    for (size_t i = 0; i < be->nprops; i++) {
        free(be->props[i].key);
        free(be->props[i].value);
    }
    free(be->props);
    free(be->bootstrap);
    pthread_mutex_destroy(&be->dr_mu);
    pthread_mutex_destroy(&be->nap_mu);
    pthread_cond_destroy(&be->nap_cv);
    pthread_mutex_destroy(&be->topics_mu);
    free(be);
}

/* The error open fails with: what the error_cb kept (open_code), said
 * in words that name the likely cause, or the connect timeout with
 * librdkafka's latest complaint. `url` is redacted. */
static msgbus_err_t mb_kafka_open_error(const struct mb_backend *be, const char *url,
                                        rd_kafka_resp_err_t err)
{
    const char *why = be->open_reason;
    const char *proto = mb_kafka_prop(be, "security.protocol");
    if (!proto)
        proto = "PLAINTEXT";
    if (be->open_code == MSGBUS_ERR_AUTH) {
        const char *mech = mb_kafka_prop(be, "sasl.mechanism");
        if (!mech)
            mech = mb_kafka_prop(be, "sasl.mechanisms");
        return mb_error(MSGBUS_ERR_AUTH, "kafka: the cluster at %s refused the SASL login "
                        "(sasl.mechanism=%s, user '%s'): check the user name and password: %s",
                        url, mech ? mech : "GSSAPI",
                        mb_kafka_prop(be, "sasl.username") ? mb_kafka_prop(be, "sasl.username")
                                                           : "",
                        why);
    }
    if (be->open_code != MSGBUS_OK && strstr(why, "SSL handshake failed") &&
        strstr(why, "certificate verify failed"))
        return mb_error(MSGBUS_ERR_CONNECT, "kafka: TLS certificate verification of the broker "
                        "at %s failed: its certificate is not signed by a CA in "
                        "ssl.ca.location (or the system's), or does not name the host "
                        "connected to: %s", url, why);
    if (be->open_code != MSGBUS_OK && strstr(why, "SSL handshake failed"))
        return mb_error(MSGBUS_ERR_CONNECT, "kafka: TLS handshake failed with the broker at %s "
                        "(security.protocol=%s): maybe that listener is not TLS (a PLAINTEXT "
                        "or SASL_PLAINTEXT one fails this way): %s", url, proto, why);
    if (be->open_code != MSGBUS_OK)
        return mb_error(MSGBUS_ERR_CONNECT, "kafka: the broker at %s hung up on the first "
                        "request (ApiVersion) from a security.protocol=%s client: the listener "
                        "may require TLS or SASL (security.protocol=SSL or SASL_SSL; "
                        "user:password@ in the URL means SASL_SSL): %s", url, proto, why);
    return mb_error(MSGBUS_ERR_CONNECT, "kafka: cannot reach the cluster at %s within %ld ms "
                    "(connect_timeout_ms): %s%s%s", url, be->connect_timeout_ms,
                    err ? rd_kafka_err2str(err) : "no brokers in metadata",
                    be->open_last[0] ? "; last error: " : "", be->open_last);
}

static msgbus_err_t mb_kafka_open(msgbus_t *bus, struct mb_url *url, struct mb_backend **out)
{
    struct mb_backend *be = calloc(1, sizeof *be);
    if (!be)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory");
    pthread_mutex_init(&be->topics_mu, NULL);
    atomic_init(&be->ntopics, 0);
    be->bus = bus;
    be->max_message_bytes = 1000000;
    pthread_mutex_init(&be->dr_mu, NULL);
    pthread_mutex_init(&be->nap_mu, NULL);
    mb_cond_init(&be->nap_cv);
    msgbus_err_t e = mb_kafka_bootstrap(be, url);
    /* The core's own option, read here too: it bounds each subscription's
     * close (kafka_consumer.c), same default and range as the core's. */
    if (!e)
        e = mb_url_opt_int(url, "close_timeout_ms", 5000, 0, 3600000, &be->close_timeout_ms);
    if (!e)
        e = mb_kafka_parse_options(be, url);
    if (!e)
        e = mb_kafka_credentials(be, url);
    if (!e)
        e = mb_url_check_unused(url, mb_kafka_options);
    if (e) {
        mb_kafka_free(be);
        return e;
    }

    static const char *const producer_defaults[] = {"enable.idempotence", "true", "acks", "all",
                                                    NULL};
    rd_kafka_conf_t *conf = mb_kafka_conf_new(be, RD_KAFKA_PRODUCER, producer_defaults);
    if (!conf) {
        mb_kafka_free(be);
        return MSGBUS_ERR_CONFIG;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, mb_kafka_dr_cb);
    rd_kafka_conf_set_error_cb(conf, mb_kafka_producer_error_cb);
    rd_kafka_conf_set_opaque(conf, be);
    char errstr[512];
    be->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!be->producer) {
        mb_kafka_scrub_props(be, errstr, sizeof errstr);
        rd_kafka_conf_destroy(conf);
        mb_kafka_free(be);
        return mb_error(MSGBUS_ERR_CONFIG, "kafka: cannot create the producer: %s", errstr);
    }

    /* Prove the cluster answers before saying the bus is open: a metadata
     * request for no topic in particular, bounded by connect_timeout_ms,
     * asked in short slices so that between them the error_cb can end the
     * wait as soon as librdkafka reports an error no retry cures. */
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
    int64_t deadline = mb_mono_ms() + be->connect_timeout_ms;
    be->opening = true;
    for (;;) {
        int64_t left = deadline - mb_mono_ms();
        if (left <= 0)
            break;
        err = rd_kafka_metadata(be->producer, 0, NULL, &md, (int)(left < 100 ? left : 100));
        if (!err && md->broker_cnt > 0)
            break;
        if (md)
            rd_kafka_metadata_destroy(md);
        md = NULL;
        rd_kafka_poll(be->producer, 0); /* serves the error_cb */
        if (be->open_code != MSGBUS_OK)
            break;
    }
    be->opening = false;
    if (!md) {
        e = mb_kafka_open_error(be, mb_bus_url(bus), err);
        rd_kafka_destroy(be->producer);
        mb_kafka_free(be);
        return e;
    }
    rd_kafka_metadata_destroy(md);

    if (pthread_create(&be->poll_thread, NULL, mb_kafka_poll_main, be) != 0) {
        rd_kafka_destroy(be->producer);
        mb_kafka_free(be);
        return mb_error(MSGBUS_ERR_INTERNAL, "kafka: cannot start the delivery thread");
    }
    *out = be;
    return MSGBUS_OK;
}

static void mb_kafka_close(struct mb_backend *be)
{
    atomic_store(&be->stopping, true);
    pthread_join(be->poll_thread, NULL);
    /* Held to the end: a late publisher's try-lock then leaves the
     * reports to us. */
    pthread_mutex_lock(&be->dr_mu);
    /* The core already waited for confirms. Whatever is left is failed
     * with a report each (librdkafka reports purged messages as
     * __PURGE_QUEUE / __PURGE_INFLIGHT, which map to MSGBUS_ERR_CLOSED). */
    if (rd_kafka_outq_len(be->producer) > 0) {
        rd_kafka_purge(be->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        /* Purged messages are reported at once; the wait is bounded (the
         * core already spent close_timeout_ms), rd_kafka_destroy reports
         * whatever is left. */
        rd_kafka_flush(be->producer, 500);
    }
    rd_kafka_poll(be->producer, 0);
    mb_kafka_dr_flush(be);
    mb_kafka_topics_release(be);
    rd_kafka_destroy(be->producer);
    mb_kafka_dr_flush(be); /* destroy may serve the last reports */
    pthread_mutex_unlock(&be->dr_mu);
    mb_kafka_free(be);
}

static const char *const mb_kafka_schemes[] = {"kafka", NULL};

MB_HIDDEN const struct mb_backend_ops mb_kafka_ops = {
    .version = MB_BACKEND_VERSION,
    .scheme = "kafka",
    .schemes = mb_kafka_schemes,
    .caps = MB_CAP_PASSTHROUGH_OPTIONS,
    .options = mb_kafka_options,
    .env_prefix = "KAFKA",
    .env_separator = '.',
    .open = mb_kafka_open,
    .close = mb_kafka_close,
    .publish = mb_kafka_publish,
    .flush = mb_kafka_flush,
    .declare = mb_kafka_declare,
    .subscribe = mb_kafka_subscribe,
    .unsubscribe = mb_kafka_unsubscribe,
    .settle = mb_kafka_settle,
    .release = mb_kafka_release,
};
