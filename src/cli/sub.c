/*
 * sub.c — `msgbus sub TOPIC [-g GROUP]`: prints received messages, raw or
 * as JSON lines, and settles them (ack by default).
 */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char sub_help[] =
    "usage: msgbus sub [options] TOPIC\n"
    "\n"
    "Subscribes to TOPIC (as a member of GROUP with -g; without it as a\n"
    "broadcast subscriber that sees what is published from now on) and prints\n"
    "each message: its payload and a newline, or with --json one JSON object\n"
    "per line. A message is acked after it was written to stdout.\n"
    "\n"
    "options:\n"
    "  -u, --url URL        broker URL (default: $MSGBUS_URL)\n"
    "  -g, --group GROUP    consume as a member of GROUP (shared, kept while away)\n"
    "  -n, --count N        exit after N messages (default: until SIGINT/SIGTERM)\n"
    "  -t, --timeout MS     exit when no message came for MS (with --count and\n"
    "                       fewer than N received: exit code 5)\n"
    "  -j, --json           JSON lines: topic, group, id, key, attempt, timestamp,\n"
    "                       headers, payload (base64 when not UTF-8, see docs/cli.md)\n"
    "      --no-ack         leave messages unsettled (the broker delivers them\n"
    "                       again after this subscription closes)\n"
    "      --nack[=REASON]  nack each message: it is delivered again, attempt + 1\n"
    "      --dead-letter[=REASON]  send each message to the dead-letter topic\n"
    "  -o, --options OPTS   subscription options, e.g. 'retry_max_attempts=3'\n"
    "                       (see msgbus_subscribe_ex in msgbus.h)\n"
    "      --metrics ADDR:PORT  serve Prometheus metrics (the bus and this\n"
    "                       subscription: received, acked, lag, ...) at\n"
    "                       http://ADDR:PORT/metrics (port 0: any free port)\n"
    "  -q, --quiet          no status lines on stderr\n"
    "  -v, --verbose        library log at info level (-vv: debug)\n"
    "  -h, --help           this text\n"
    "\n"
    "exit: 0 done, 1 usage/config, 2 connect, 5 fewer than --count before\n"
    "      --timeout (see docs/cli.md)\n";

enum settle { SETTLE_ACK, SETTLE_NONE, SETTLE_NACK, SETTLE_DEAD };

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *base64(const unsigned char *p, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        *o++ = b64[(v >> 18) & 63];
        *o++ = b64[(v >> 12) & 63];
        *o++ = i + 1 < len ? b64[(v >> 6) & 63] : '=';
        *o++ = i + 2 < len ? b64[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Sets obj[name] to the bytes as a string when they are UTF-8, else to
 * their base64 and obj[name_encoding] = "base64". */
static void set_bytes(json_t *obj, const char *name, const void *p, size_t len)
{
    json_t *s = json_stringn(p, len); /* NULL when not valid UTF-8 */
    if (!s) {
        char *enc = base64(p, len);
        s = json_string(enc ? enc : "");
        free(enc);
        char field[64];
        snprintf(field, sizeof field, "%s_encoding", name);
        json_object_set_new(obj, field, json_string("base64"));
    }
    json_object_set_new(obj, name, s);
}

static char *to_json(const msgbus_msg_t *m)
{
    json_t *o = json_object();
    const char *group = msgbus_msg_group(m), *id = msgbus_msg_id(m);
    json_object_set_new(o, "topic", json_string(msgbus_msg_topic(m)));
    json_object_set_new(o, "group", group ? json_string(group) : json_null());
    json_object_set_new(o, "id", id ? json_string(id) : json_null());
    size_t klen;
    const void *key = msgbus_msg_key(m, &klen);
    if (key)
        set_bytes(o, "key", key, klen);
    else
        json_object_set_new(o, "key", json_null());
    json_object_set_new(o, "attempt", json_integer(msgbus_msg_attempt(m)));
    /* Where it came from: Kafka's partition and offset, null elsewhere. */
    int32_t part = msgbus_msg_partition(m);
    json_object_set_new(o, "partition", part >= 0 ? json_integer(part) : json_null());
    int64_t off = msgbus_msg_offset(m);
    json_object_set_new(o, "offset", off >= 0 ? json_integer(off) : json_null());
    json_object_set_new(o, "redelivered", json_boolean(msgbus_msg_redelivered(m)));
    json_object_set_new(o, "timestamp", json_integer(msgbus_msg_timestamp(m)));
    json_t *h = json_object(), *h64 = NULL;
    size_t n = msgbus_msg_header_count(m);
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        if (msgbus_msg_header_at(m, i, &name, &value) != MSGBUS_OK)
            continue;
        json_t *v = json_string(value);
        if (!v) { /* not UTF-8 (a producer that is not msgbus): base64, and say so */
            char *enc = base64((const unsigned char *)value, strlen(value));
            v = json_string(enc ? enc : "");
            free(enc);
            if (!h64)
                h64 = json_array();
            json_array_append_new(h64, json_string(name));
        }
        json_object_set_new(h, name, v);
    }
    json_object_set_new(o, "headers", h);
    if (h64)
        json_object_set_new(o, "headers_base64", h64);
    size_t plen;
    const void *p = msgbus_msg_payload(m, &plen);
    set_bytes(o, "payload", p, plen);
    char *text = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return text;
}

struct sub_metrics {
    msgbus_t *bus;
    cli_prom_state_t *ps;
};

static int render_sub(void *opaque, FILE *f)
{
    struct sub_metrics *sm = opaque;
    msgbus_err_t e = cli_prom_bus(f, sm->bus, sm->ps);
    if (e) {
        cli_fail("sub", "--metrics: bus stats", e);
        return -1;
    }
    return 0;
}

int cli_sub(int argc, char **argv)
{
    enum { OPT_NO_ACK = 256, OPT_NACK, OPT_DEAD, OPT_METRICS };
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},   {"group", required_argument, 0, 'g'},
        {"count", required_argument, 0, 'n'}, {"timeout", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},        {"no-ack", no_argument, 0, OPT_NO_ACK},
        {"nack", optional_argument, 0, OPT_NACK}, {"dead-letter", optional_argument, 0, OPT_DEAD},
        {"options", required_argument, 0, 'o'}, {"quiet", no_argument, 0, 'q'},
        {"metrics", required_argument, 0, OPT_METRICS},
        {"verbose", no_argument, 0, 'v'},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *url = NULL, *group = NULL, *sub_opts = NULL, *reason = NULL, *metrics = NULL;
    uint64_t count = 0, timeout = 0;
    int have_timeout = 0, json = 0, quiet = 0, verbose = 0, c, settles = 0;
    enum settle how = SETTLE_ACK;
    while ((c = getopt_long(argc, argv, "u:g:n:t:jo:qvh", opts, NULL)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'g': group = optarg; break;
        case 'n':
            if (cli_parse_u64("sub", "--count", optarg, &count))
                return CLI_USAGE;
            break;
        case 't':
            if (cli_parse_u64("sub", "--timeout", optarg, &timeout) || timeout > 86400000)
                return cli_usage_error("sub", "--timeout must be 0..86400000 ms");
            have_timeout = 1;
            break;
        case 'j': json = 1; break;
        case OPT_NO_ACK: how = SETTLE_NONE; settles++; break;
        case OPT_NACK: how = SETTLE_NACK; reason = optarg; settles++; break;
        case OPT_DEAD: how = SETTLE_DEAD; reason = optarg; settles++; break;
        case 'o': sub_opts = optarg; break;
        case OPT_METRICS: {
            char h[256], port[8];
            if (cli_metrics_addr("sub", optarg, h, sizeof h, port))
                return CLI_USAGE;
            metrics = optarg;
            break;
        }
        case 'q': quiet = 1; break;
        case 'v': verbose++; break;
        case 'h': fputs(sub_help, stdout); return CLI_OK;
        default: return cli_usage_error("sub", "unknown option");
        }
    }
    if (optind >= argc)
        return cli_usage_error("sub", "missing TOPIC");
    if (optind + 1 < argc)
        return cli_usage_error("sub", "unexpected argument '%s'", argv[optind + 1]);
    if (settles > 1)
        return cli_usage_error("sub", "--no-ack, --nack and --dead-letter exclude each other");
    const char *topic = argv[optind];
    cli_set_verbosity(verbose);
    cli_catch_signals();

    msgbus_t *bus;
    int rc = cli_open_bus("sub", url, &bus);
    if (rc)
        return rc;
    msgbus_sub_t *sub;
    msgbus_err_t e = sub_opts ? msgbus_subscribe_ex(bus, topic, group, sub_opts, &sub)
                              : msgbus_subscribe(bus, topic, group, &sub);
    if (e) {
        rc = cli_fail("sub", "subscribe", e);
        msgbus_close(bus);
        return rc;
    }
    struct sub_metrics sm = {bus, NULL};
    cli_metrics_t *server = NULL;
    if (metrics) {
        if (!(sm.ps = cli_prom_state_new()))
            rc = CLI_FAILED;
        else
            rc = cli_metrics_start("sub", metrics, quiet, render_sub, &sm, &server);
        if (rc) {
            cli_prom_state_free(sm.ps);
            msgbus_sub_close(sub);
            msgbus_close(bus);
            return rc;
        }
    }
    if (!quiet)
        fprintf(stderr, "msgbus sub: subscribed to '%s' %s%s on %s\n", topic,
                group ? "as group " : "as a broadcast subscriber", group ? group : "",
                msgbus_url(bus));

    uint64_t got = 0;
    int64_t idle_since = cli_now_us();
    while (!cli_stop && (count == 0 || got < count)) {
        msgbus_msg_t *m;
        e = msgbus_receive(sub, 200, &m);
        /* State changes (-v) are served by msgbus_poll: when idle, and
         * every 1024 messages while busy. */
        if (cli_verbosity >= 1 && (e == MSGBUS_ERR_TIMEOUT || (got & 1023) == 0))
            msgbus_poll(bus, 0, NULL);
        if (e == MSGBUS_ERR_TIMEOUT) {
            if (have_timeout && cli_now_us() - idle_since >= (int64_t)timeout * 1000)
                break;
            continue;
        }
        if (e) {
            rc = cli_fail("sub", "receive", e);
            break;
        }
        idle_since = cli_now_us();
        int wrote;
        if (json) {
            char *text = to_json(m);
            wrote = text && fputs(text, stdout) >= 0 && putchar('\n') != EOF;
            free(text);
        } else {
            size_t len;
            const void *p = msgbus_msg_payload(m, &len);
            wrote = fwrite(p, 1, len, stdout) == len && putchar('\n') != EOF;
        }
        /* Settle only what reached stdout: a closed pipe leaves the message
         * to be delivered again. */
        if (!wrote || fflush(stdout) != 0) {
            msgbus_msg_free(m);
            fprintf(stderr, "msgbus sub: cannot write to stdout; message left unsettled\n");
            rc = CLI_FAILED;
            break;
        }
        got++;
        switch (how) {
        case SETTLE_ACK: e = msgbus_ack(m); break;
        case SETTLE_NACK: e = reason ? msgbus_nack_reason(m, reason) : msgbus_nack(m); break;
        case SETTLE_DEAD: e = msgbus_dead_letter(m, reason ? reason : "msgbus sub --dead-letter"); break;
        case SETTLE_NONE: e = MSGBUS_OK; break;
        }
        msgbus_msg_free(m);
        if (e) {
            rc = cli_fail("sub", "settle", e);
            break;
        }
    }
    if (!rc && count && got < count) {
        if (!quiet)
            fprintf(stderr, "msgbus sub: %llu of %llu messages received before %s\n",
                    (unsigned long long)got, (unsigned long long)count,
                    cli_stop ? "the signal" : "the timeout");
        if (!cli_stop)
            rc = CLI_TIMEOUT;
    }
    /* Dead letters are publishes, and their originals are acked once they
     * are confirmed: wait for that before the subscription closes. */
    if (how == SETTLE_DEAD && (e = msgbus_flush(bus, 30000, NULL)) && !rc)
        rc = cli_fail("sub", "flush dead letters", e);
    cli_metrics_stop(server); /* before the subscription and bus it reads */
    cli_prom_state_free(sm.ps);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    if (!quiet)
        fprintf(stderr, "msgbus sub: %llu messages received\n", (unsigned long long)got);
    return rc;
}
