/*
 * kafka_conf.c — the Kafka backend's configuration: URL options and
 * librdkafka properties (with the ones msgbus cannot honour refused by
 * name), credentials as SASL, the bootstrap list, the debug-level dump
 * of the effective configuration, and librdkafka's log and error lines
 * with every secret scrubbed before they leave msgbus. The error callback
 * that lets msgbus_open fail fast on a SASL or TLS refusal lives here too.
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
    {"enable.partition.eof", "msgbus delivers messages only and has no end-of-partition event"},
    {"group.instance.id",
     "msgbus makes one consumer per subscription (and one for declare), and one static "
     "member id shared by several consumers makes the group fence them"},
    {"delivery.report.only.error",
     "msgbus confirms each message from its delivery report; without reports for successes "
     "no publish would ever be confirmed"},
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
void mb_kafka_scrub_props(const struct mb_backend *be, char *text, size_t cap)
{
    for (size_t i = 0; i < be->nprops; i++)
        if (mb_secret_name(be->props[i].key))
            mb_kafka_scrub(text, cap, be->props[i].value);
}

/* Scrubs the secrets of rk's configuration from text. */
void mb_kafka_scrub_conf(const rd_kafka_t *rk, char *text, size_t cap)
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
void mb_kafka_producer_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct mb_backend *be = opaque;
    mb_kafka_error_cb(rk, err, reason, opaque);
    char detail[512];
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        rd_kafka_fatal_error(rk, detail, sizeof detail);
    else
        snprintf(detail, sizeof detail, "%s", reason ? reason : rd_kafka_err2str(err));
    mb_kafka_scrub_conf(rk, detail, sizeof detail);
    mb_kafka_conn_error(be, err, detail);
    /* "1/1 brokers are down" says less than the error before it. */
    if (!be->opening || be->open_code != MSGBUS_OK || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        return;
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
    for (size_t i = 0; i < be->nprops; i++) {
        /* librdkafka's statistics are served from the producer only
         * (detail.librdkafka); a consumer would build them for nobody. */
        if (type != RD_KAFKA_PRODUCER && strcmp(be->props[i].key, "statistics.interval.ms") == 0)
            continue;
        if (mb_kafka_conf_set(conf, be->props[i].key, be->props[i].value) != MSGBUS_OK)
            goto fail;
    }
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

/* An integer option that may also be `auto` (stored as 0, the default). */
static msgbus_err_t mb_kafka_opt_auto(const struct mb_url *url, const char *key, long max,
                                      long *out)
{
    char buf[64];
    const char *k = mb_kafka_opt_key(url, key, buf, sizeof buf);
    const char *v = mb_url_opt(url, k);
    if (v && strcmp(v, "auto") == 0) {
        *out = 0;
        return MSGBUS_OK;
    }
    msgbus_err_t e = mb_url_opt_int(url, k, 0, 1, max, out);
    if (e == MSGBUS_ERR_CONFIG) {
        char why[256]; /* (mb_error formats into the buffer last_error reads) */
        snprintf(why, sizeof why, "%s", msgbus_last_error());
        return mb_error(e, "%s (or 'auto')", why);
    }
    return e;
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

/* auto.offset.reset, as a Kafka user writes it, names where a group with
 * no position starts: msgbus takes it as the default of the subscription
 * option start= (be->default_start; start= given wins) and never hands it
 * to librdkafka, whose consumers keep auto.offset.reset=earliest for a
 * committed offset that retention deleted (never skip). librdkafka's
 * spellings are accepted; "error" (fail the partition instead) is refused,
 * since msgbus always has a position to start from. */
static msgbus_err_t mb_kafka_offset_reset(struct mb_backend *be, const struct mb_url *url)
{
    be->default_start = MB_START_LATEST;
    const char *key = "auto.offset.reset";
    if (!mb_url_opt(url, key))
        return MSGBUS_OK;
    char origin[160];
    mb_url_opt_origin(url, key, origin, sizeof origin);
    const char *v = mb_url_opt(url, key); /* marks it used */
    static const char *const earliest[] = {"earliest", "smallest", "beginning", NULL};
    static const char *const latest[] = {"latest", "largest", "end", NULL};
    for (size_t i = 0; earliest[i]; i++)
        if (strcasecmp(v, earliest[i]) == 0) {
            be->default_start = MB_START_EARLIEST;
            return MSGBUS_OK;
        }
    for (size_t i = 0; latest[i]; i++)
        if (strcasecmp(v, latest[i]) == 0)
            return MSGBUS_OK;
    return mb_error(MSGBUS_ERR_CONFIG, "%s: auto.offset.reset=%s is not taken: msgbus reads it "
                    "as where a group with no position starts (earliest, smallest or beginning: "
                    "start=earliest; latest, largest or end: start=latest)%s", origin, v,
                    strcasecmp(v, "error") == 0
                        ? "; 'error' (fail instead of starting) has no msgbus equivalent: a "
                          "group always starts somewhere (start= says where)"
                        : "");
}

/* Reads msgbus's own options, then passes every other option through to
 * librdkafka, validating each on a scratch configuration so that a refusal
 * names the option as the user wrote it. */
msgbus_err_t mb_kafka_parse_options(struct mb_backend *be, struct mb_url *url)
{
    msgbus_err_t e;
    if ((e = mb_kafka_opt_int(url, "partitions", 3, 1, 100000, &be->partitions)) ||
        (e = mb_kafka_opt_auto(url, "replication_factor", 100, &be->replication_factor)) ||
        (e = mb_kafka_opt_auto(url, "min_insync_replicas", 100, &be->min_insync_replicas)) ||
        (e = mb_kafka_opt_int(url, "connect_timeout_ms", 10000, 1, 3600000,
                              &be->connect_timeout_ms)) ||
        (e = mb_kafka_opt_int(url, "subscribe_timeout_ms", 60000, 1, 3600000,
                              &be->subscribe_timeout_ms)) ||
        (e = mb_kafka_opt_int(url, "commit_interval_ms", 100, 0, 3600000,
                              &be->commit_interval_ms)) ||
        (e = mb_kafka_opt_int(url, "max_unacked", 100000, 1, 100000000, &be->max_unacked)) ||
        (e = mb_kafka_opt_bool(url, "create_topics", true, &be->create_topics)))
        return e;

    if ((e = mb_kafka_offset_reset(be, url)))
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

msgbus_err_t mb_kafka_topic_size(long brokers, long rf_opt, long isr_opt, long *rf, long *min_isr)
{
    *rf = rf_opt ? rf_opt : brokers >= 3 ? 3 : brokers > 0 ? brokers : 1;
    *min_isr = isr_opt ? isr_opt : *rf >= 3 ? 2 : 0; /* 0: the broker's own default */
    if (*min_isr > *rf)
        return mb_error(MSGBUS_ERR_CONFIG, "option 'min_insync_replicas': %ld is more than the "
                        "replication factor %ld (no write could ever be acknowledged)",
                        *min_isr, *rf);
    return MSGBUS_OK;
}

/* The value of the user's property `key` (after parsing), or NULL. */
const char *mb_kafka_prop(const struct mb_backend *be, const char *key)
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
msgbus_err_t mb_kafka_credentials(struct mb_backend *be, const struct mb_url *url)
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

msgbus_err_t mb_kafka_bootstrap(struct mb_backend *be, const struct mb_url *url)
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

