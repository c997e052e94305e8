/*
 * sub.c — `msgbus sub TOPIC [-g GROUP]`: prints received messages, raw,
 * as JSON lines or by a kcat-style --format, and settles them (ack by
 * default); where a new group or a broadcast subscriber starts
 * (--from-beginning, --since), and -e: stop at the end of what the topic
 * held when sub started.
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
    "each message: its payload and a newline, with --json one JSON object per\n"
    "line, or by --format. A message is acked after it was written to stdout.\n"
    "TOPIC must exist (on Kafka and RabbitMQ; a mistyped name is not created):\n"
    "make it with 'msgbus declare' or give --create.\n"
    "\n"
    "options:\n"
    "  -u, --url URL        broker URL (default: $MSGBUS_URL)\n"
    "  -g, --group GROUP    consume as a member of GROUP (shared, kept while away)\n"
    "      --from-beginning a new group or a broadcast subscriber starts at the\n"
    "                       oldest message kept (start=earliest; Kafka, mem://,\n"
    "                       sqlite://)\n"
    "      --since TIME     ... at the first message at or after TIME: RFC 3339\n"
    "                       (2026-12-07T08:00:00Z) or that long ago (-15m, -2h)\n"
    "                       (a group that has a position keeps it: see\n"
    "                       'msgbus group reset')\n"
    "  -e, --exit-at-end    exit when everything the topic held at start was read:\n"
    "                       Kafka, the end of every partition as of start; other\n"
    "                       backends, when no message came for 1000 ms (-t MS)\n"
    "  -n, --count N        exit after N messages (default: until SIGINT/SIGTERM)\n"
    "  -t, --timeout MS     exit when no message came for MS (with --count and\n"
    "                       fewer than N received: exit code 5)\n"
    "  -j, --json           JSON lines: topic, group, id, key, attempt, partition,\n"
    "                       offset, redelivered, timestamp, type, source, subject,\n"
    "                       headers, payload (base64 when not UTF-8, see\n"
    "                       docs/cli.md)\n"
    "  -f, --format FMT     print each message by FMT, as kcat -f: %t topic,\n"
    "                       %k key, %s payload, %h headers (n=v,...), %p partition,\n"
    "                       %o offset (-1 without), %T timestamp (ms), %i id,\n"
    "                       %S payload bytes, %K key bytes (-1: none), %g group,\n"
    "                       %a attempt, CloudEvents %y type, %u source, %j subject,\n"
    "                       %% and \\n \\t \\r \\\\ \\0; no newline is added\n"
    "      --create         subscribe even if TOPIC does not exist (creates it)\n"
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
    "exit: 0 done (also when -e reached the end), 1 usage/config or no such\n"
    "      topic, 2 connect, 5 fewer than --count before --timeout, 6 not\n"
    "      supported by the backend (--from-beginning, --since on RabbitMQ)\n"
    "      (see docs/cli.md)\n";

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
    /* The CloudEvents attributes (docs/interop.md); null when the message
     * arrived without one (a bare message, cloudevents=off). */
    const char *ce[3] = {msgbus_msg_type(m), msgbus_msg_source(m), msgbus_msg_subject(m)};
    static const char *const ce_names[3] = {"type", "source", "subject"};
    for (int i = 0; i < 3; i++)
        json_object_set_new(o, ce_names[i], ce[i] ? json_string(ce[i]) : json_null());
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

/* ------------------------------------------------------------ -e */

/* Where -e stops. With positions (Kafka), each partition's end is its
 * high watermark when sub started: a partition is done once a message at
 * end - 1 was printed, or from the start when the group's committed offset
 * is already there. Messages past that end are neither printed nor acked
 * (the group reads them next time). A partition with nothing left to read
 * from a start position the tool cannot see (--since after its last
 * message, earliest with everything expired) never delivers that message,
 * so an idle time ends the run there too. Without positions the queue is
 * drained when no message came for the idle time. */
enum end_mode { END_OFF, END_POSITIONS, END_IDLE };
#define END_IDLE_MS 1000        /* drained: RabbitMQ, mem:// */
#define END_IDLE_POSITIONS_MS 5000 /* the fallback where positions are known */

typedef struct end_state {
    enum end_mode mode;
    size_t parts;
    int64_t *end;        /* per partition: the high watermark at start */
    unsigned char *done; /* per partition: reached */
    size_t pending;      /* partitions not done */
    int64_t idle_ms;
} end_state_t;

/* The topic's object in an inspect answer for one topic. */
static json_t *inspect_topic(json_t *root)
{
    return json_array_get(json_object_get(root, "topics"), 0);
}

/* Fills end->end[p] (and, when `committed` is given, committed[p]) from the
 * partitions of a group entry. */
static void take_partitions(end_state_t *end, json_t *group, int64_t *committed)
{
    size_t i;
    json_t *p;
    json_array_foreach(json_object_get(group, "partitions"), i, p) {
        json_t *pn = json_object_get(p, "partition"), *hw = json_object_get(p, "high_watermark");
        if (!json_is_integer(pn) || json_integer_value(pn) < 0 ||
            (size_t)json_integer_value(pn) >= end->parts)
            continue;
        size_t k = (size_t)json_integer_value(pn);
        if (json_is_integer(hw) && end->end[k] < 0)
            end->end[k] = json_integer_value(hw);
        json_t *c = json_object_get(p, "committed");
        if (committed && json_is_integer(c))
            committed[k] = json_integer_value(c);
    }
}

/* Decides how -e stops, before subscribing. `topic_json`: the answer of
 * msgbus_inspect_json(bus, topic, NULL) (NULL when there is none). Prints
 * errors itself; returns a CLI_* code. */
static int end_prepare(end_state_t *end, msgbus_t *bus, const char *topic, const char *group,
                       json_t *topic_json, int have_start, int64_t idle_given)
{
    memset(end, 0, sizeof *end);
    end->mode = END_IDLE;
    end->idle_ms = idle_given >= 0 ? idle_given : END_IDLE_MS;
    if (!(msgbus_caps(bus) & MSGBUS_CAP_POSITIONS))
        return CLI_OK;
    end->idle_ms = idle_given >= 0 ? idle_given : END_IDLE_POSITIONS_MS;
    json_t *t = inspect_topic(topic_json);
    json_t *np = json_object_get(t, "partitions");
    if (!json_is_integer(np) || json_integer_value(np) <= 0 || json_integer_value(np) > 100000)
        return CLI_OK; /* no partition count: the idle rule alone */
    end->parts = (size_t)json_integer_value(np);
    end->end = malloc(end->parts * sizeof *end->end);
    end->done = calloc(end->parts, 1);
    int64_t *committed = malloc(2 * end->parts * sizeof *committed); /* and low */
    if (!end->end || !end->done || !committed) {
        free(committed);
        fprintf(stderr, "msgbus sub: out of memory\n");
        return CLI_FAILED;
    }
    for (size_t i = 0; i < end->parts; i++)
        end->end[i] = -1, committed[i] = -1;
    /* The group's own committed offsets and ends, when it has a position. */
    if (group) {
        char *text = NULL;
        msgbus_err_t e = msgbus_inspect_json(bus, topic, group, 10000, &text);
        if (e == MSGBUS_OK) {
            json_t *root = json_loads(text, 0, NULL);
            json_t *g = json_array_get(json_object_get(inspect_topic(root), "groups"), 0);
            take_partitions(end, g, committed);
            json_decref(root);
        } else if (e != MSGBUS_ERR_NOT_FOUND) { /* NOT_FOUND: a new group */
            free(committed);
            return cli_fail("sub", "-e: the group's position", e);
        }
        msgbus_free(text);
    }
    /* Every partition's end: from the topic's own "watermarks" where the
     * backend gives them ({partition, low, high}), else from any group of
     * the topic (they share them). A partition whose low watermark is its
     * end holds nothing to read from any start. */
    int64_t *low = committed + end->parts;
    for (size_t i = 0; i < end->parts; i++)
        low[i] = -1;
    size_t gi;
    json_t *g;
    json_array_foreach(json_object_get(t, "watermarks"), gi, g) {
        json_t *pn = json_object_get(g, "partition"), *hi = json_object_get(g, "high"),
               *lo = json_object_get(g, "low");
        if (!json_is_integer(pn) || json_integer_value(pn) < 0 ||
            (size_t)json_integer_value(pn) >= end->parts)
            continue;
        size_t k = (size_t)json_integer_value(pn);
        if (json_is_integer(hi))
            end->end[k] = json_integer_value(hi);
        if (json_is_integer(lo))
            low[k] = json_integer_value(lo);
    }
    json_array_foreach(json_object_get(t, "groups"), gi, g)
        take_partitions(end, g, NULL);
    for (size_t i = 0; i < end->parts; i++)
        if (end->end[i] < 0) { /* an end unknown: the idle rule alone */
            free(committed);
            free(end->end), free(end->done);
            end->end = NULL, end->done = NULL, end->parts = 0;
            return CLI_OK;
        }
    end->mode = END_POSITIONS;
    for (size_t i = 0; i < end->parts; i++) {
        /* With no position of its own the subscription begins at the end
         * (the default start) or somewhere before it (--from-beginning,
         * --since). */
        int reached = committed[i] >= 0 ? committed[i] >= end->end[i]
                                         : !have_start || end->end[i] == 0 ||
                                               (low[i] >= 0 && low[i] >= end->end[i]);
        end->done[i] = (unsigned char)reached;
        end->pending += !reached;
    }
    free(committed);
    return CLI_OK;
}

/* For a received message: 1 to print it, 0 when it lies past the end of
 * its partition as of start (leave it unsettled). Marks partitions done. */
static int end_take(end_state_t *end, const msgbus_msg_t *m)
{
    if (end->mode != END_POSITIONS)
        return 1;
    int32_t p = msgbus_msg_partition(m);
    int64_t o = msgbus_msg_offset(m);
    if (p < 0 || (size_t)p >= end->parts || o < 0)
        return 0; /* a partition added since start */
    if (end->done[p] || o >= end->end[p])
        return 0;
    if (o >= end->end[p] - 1) {
        end->done[p] = 1;
        end->pending--;
    }
    return 1;
}

static void end_free(end_state_t *end)
{
    free(end->end);
    free(end->done);
}

/* ------------------------------------------------------------ the command */

/* "15m" is taken as "-15m": kcat users write --since 15m for "the last 15
 * minutes", and a time in the future is never what they mean. */
static const char *since_value(const char *text, char *buf, size_t cap)
{
    size_t digits = strspn(text, "0123456789");
    const char *unit = text + digits;
    if (digits && (!strcmp(unit, "ms") || !strcmp(unit, "s") || !strcmp(unit, "m") ||
                   !strcmp(unit, "h") || !strcmp(unit, "d"))) {
        snprintf(buf, cap, "-%s", text);
        return buf;
    }
    return text;
}

/* Whether the subscription options already name start=. */
static int options_have_start(const char *o)
{
    return o && (!strncmp(o, "start=", 6) || strstr(o, "&start="));
}

int cli_sub(int argc, char **argv)
{
    enum {
        OPT_NO_ACK = 256,
        OPT_NACK,
        OPT_DEAD,
        OPT_METRICS,
        OPT_FROM_BEGINNING,
        OPT_SINCE,
        OPT_CREATE
    };
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},
        {"group", required_argument, 0, 'g'},
        {"count", required_argument, 0, 'n'},
        {"timeout", required_argument, 0, 't'},
        {"json", no_argument, 0, 'j'},
        {"format", required_argument, 0, 'f'},
        {"from-beginning", no_argument, 0, OPT_FROM_BEGINNING},
        {"since", required_argument, 0, OPT_SINCE},
        {"exit-at-end", no_argument, 0, 'e'},
        {"create", no_argument, 0, OPT_CREATE},
        {"no-ack", no_argument, 0, OPT_NO_ACK},
        {"nack", optional_argument, 0, OPT_NACK},
        {"dead-letter", optional_argument, 0, OPT_DEAD},
        {"options", required_argument, 0, 'o'},
        {"quiet", no_argument, 0, 'q'},
        {"metrics", required_argument, 0, OPT_METRICS},
        {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *url = NULL, *group = NULL, *sub_opts = NULL, *reason = NULL, *metrics = NULL;
    const char *format = NULL, *start = NULL, *start_flag = NULL;
    char since_buf[64];
    uint64_t count = 0, timeout = 0;
    int have_timeout = 0, json = 0, quiet = 0, verbose = 0, c, settles = 0;
    int exit_at_end = 0, create = 0;
    enum settle how = SETTLE_ACK;
    while ((c = cli_getopt("sub", argc, argv, "u:g:n:t:jf:eo:qvh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'g': group = optarg; break;
        case 'n':
            if (cli_parse_u64("sub", "--count", optarg, &count))
                return CLI_USAGE;
            break;
        case 't':
            if (cli_parse_range("sub", "--timeout", optarg, 0, 86400000, "ms", &timeout))
                return CLI_USAGE;
            have_timeout = 1;
            break;
        case 'j': json = 1; break;
        case 'f': format = optarg; break;
        case 'e': exit_at_end = 1; break;
        case OPT_FROM_BEGINNING:
            if (start_flag && strcmp(start_flag, "--from-beginning"))
                return cli_usage_error("sub", "--from-beginning and --since exclude each other");
            start = "earliest", start_flag = "--from-beginning";
            break;
        case OPT_SINCE:
            if (start_flag && strcmp(start_flag, "--since"))
                return cli_usage_error("sub", "--from-beginning and --since exclude each other");
            start = since_value(optarg, since_buf, sizeof since_buf), start_flag = "--since";
            break;
        case OPT_CREATE: create = 1; break;
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
        default: return CLI_USAGE;
        }
    }
    if (optind >= argc)
        return cli_usage_error("sub", "missing TOPIC");
    if (optind + 1 < argc)
        return cli_usage_error("sub", "unexpected argument '%s'", argv[optind + 1]);
    if (settles > 1)
        return cli_usage_error("sub", "--no-ack, --nack and --dead-letter exclude each other");
    if (json && format)
        return cli_usage_error("sub", "--json and --format exclude each other");
    if (format && cli_format_check("sub", format))
        return CLI_USAGE;
    if (start && options_have_start(sub_opts))
        return cli_usage_error("sub", "%s and start= in --options exclude each other", start_flag);
    const char *topic = argv[optind];
    /* The subscription options: the user's, then the start position. */
    char *all_opts = NULL;
    if (start) {
        size_t n = (sub_opts ? strlen(sub_opts) : 0) + strlen(start) + 16;
        if (!(all_opts = malloc(n)))
            return CLI_FAILED;
        snprintf(all_opts, n, "%s%sstart=%s", sub_opts ? sub_opts : "",
                 sub_opts && *sub_opts ? "&" : "", start);
        sub_opts = all_opts;
    }
    cli_set_verbosity(verbose);
    cli_catch_signals();

    msgbus_t *bus;
    int rc = cli_open_bus("sub", url, &bus);
    if (rc) {
        free(all_opts);
        return rc;
    }
    /* A mistyped topic must not be created by subscribing to it (Kafka
     * creates what a consumer names; RabbitMQ would declare the exchange):
     * look first. mem:// is skipped: its topics live in one process, so a
     * fresh `msgbus sub` never sees one, and nothing it makes outlives it. */
    json_t *topic_json = NULL;
    int is_mem = !strcmp(msgbus_backend(bus), "mem");
    if ((!create && !is_mem) || (exit_at_end && !is_mem)) {
        char *text = NULL;
        msgbus_err_t e = msgbus_inspect_json(bus, topic, NULL, 10000, &text);
        if (e == MSGBUS_ERR_NOT_FOUND && !create) {
            fprintf(stderr,
                    "msgbus sub: topic '%s' does not exist on %s; use --create or 'msgbus "
                    "declare %s GROUP'\n",
                    topic, msgbus_url(bus), topic);
            rc = CLI_USAGE;
        } else if (e && e != MSGBUS_ERR_NOT_FOUND && e != MSGBUS_ERR_UNSUPPORTED) {
            char what[400];
            snprintf(what, sizeof what, "cannot look up topic '%s'", topic);
            rc = cli_fail("sub", what, e);
        } else if (e == MSGBUS_OK) {
            topic_json = json_loads(text, 0, NULL);
        }
        msgbus_free(text);
        if (rc) {
            msgbus_close(bus);
            free(all_opts);
            return rc;
        }
    }
    end_state_t end = {0};
    if (exit_at_end) {
        rc = end_prepare(&end, bus, topic, group, topic_json, start != NULL,
                         have_timeout ? (int64_t)timeout : -1);
        if (rc) {
            json_decref(topic_json);
            msgbus_close(bus);
            free(all_opts);
            return rc;
        }
    }
    json_decref(topic_json);
    msgbus_sub_t *sub;
    msgbus_err_t e = sub_opts ? msgbus_subscribe_ex(bus, topic, group, sub_opts, &sub)
                              : msgbus_subscribe(bus, topic, group, &sub);
    free(all_opts);
    if (e) {
        /* The flag the user gave, when that is what the backend refuses. */
        rc = cli_fail("sub", e == MSGBUS_ERR_UNSUPPORTED && start_flag ? start_flag : "subscribe",
                      e);
        end_free(&end);
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
            end_free(&end);
            msgbus_close(bus);
            return rc;
        }
    }
    if (!quiet) {
        fprintf(stderr, "msgbus sub: subscribed to '%s' %s%s on %s\n", topic,
                group ? "as group " : "as a broadcast subscriber", group ? group : "",
                msgbus_url(bus));
        if (end.mode == END_POSITIONS)
            fprintf(stderr, "msgbus sub: -e: %zu of %zu partitions to read to their end\n",
                    end.pending, end.parts);
    }

    uint64_t got = 0, past_end = 0;
    int64_t idle_since = cli_now_us();
    int at_end = end.mode == END_POSITIONS && end.pending == 0;
    while (!cli_stop && !at_end && (count == 0 || got < count)) {
        msgbus_msg_t *m;
        e = msgbus_receive(sub, 200, &m);
        /* State changes (-v) are served by msgbus_poll: when idle, and
         * every 1024 messages while busy. */
        if (cli_verbosity >= 1 && (e == MSGBUS_ERR_TIMEOUT || (got & 1023) == 0))
            msgbus_poll(bus, 0, NULL);
        if (e == MSGBUS_ERR_TIMEOUT) {
            int64_t idle_us = cli_now_us() - idle_since;
            if (exit_at_end && idle_us >= end.idle_ms * 1000) {
                at_end = 1;
                if (!quiet && end.mode == END_POSITIONS)
                    fprintf(stderr,
                            "msgbus sub: -e: no message for %lld ms; %zu partitions had "
                            "nothing more to read from the start position\n",
                            (long long)end.idle_ms, end.pending);
                break;
            }
            if (have_timeout && idle_us >= (int64_t)timeout * 1000)
                break;
            continue;
        }
        if (e) {
            rc = cli_fail("sub", "receive", e);
            break;
        }
        idle_since = cli_now_us();
        if (exit_at_end && !end_take(&end, m)) {
            /* Past the end as of start: not ours to print or settle. */
            msgbus_msg_free(m);
            past_end++;
            continue;
        }
        int wrote;
        if (json) {
            char *text = to_json(m);
            wrote = text && fputs(text, stdout) >= 0 && putchar('\n') != EOF;
            free(text);
        } else if (format) {
            wrote = cli_format_write(stdout, format, m) == 0;
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
        if (end.mode == END_POSITIONS && end.pending == 0)
            at_end = 1;
    }
    if (at_end && !rc && !quiet)
        fprintf(stderr, "msgbus sub: reached the end of '%s'%s\n", topic,
                past_end ? " (later messages left for the next run)" : "");
    if (!rc && !at_end && count && got < count) {
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
    end_free(&end);
    msgbus_close(bus);
    if (!quiet)
        fprintf(stderr, "msgbus sub: %llu messages received\n", (unsigned long long)got);
    return rc;
}
