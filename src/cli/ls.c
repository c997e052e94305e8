/*
 * ls.c — `msgbus ls [TOPIC [GROUP]]`: what the broker holds (topics, their
 * partitions and retention, groups with their members and lag), from
 * msgbus_inspect_json, as tables or the library's JSON; and `msgbus group
 * reset TOPIC GROUP --to POSITION` (msgbus_group_reset).
 */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char ls_help[] =
    "usage: msgbus ls [options] [TOPIC [GROUP]]\n"
    "\n"
    "Lists what the broker holds: topics (partitions, retention where known)\n"
    "and their groups (members; Kafka: committed offset, end and lag per\n"
    "partition; RabbitMQ: messages ready and unacked in the group's queue).\n"
    "Without TOPIC every topic (Kafka, mem://; RabbitMQ cannot list over AMQP:\n"
    "name the topic, and the group to see its queue).\n"
    "\n"
    "options:\n"
    "  -u, --url URL      broker URL (default: $MSGBUS_URL)\n"
    "  -j, --json         the library's JSON (msgbus_inspect_json) on one line\n"
    "  -t, --timeout MS   time allowed for the broker's answers (default 10000)\n"
    "  -v, --verbose      library log at info level (-vv: debug)\n"
    "  -h, --help         this text\n"
    "\n"
    "exit: 0 listed, 1 usage/config, 2 connect, 5 timed out, 6 the backend\n"
    "      cannot list (name a topic), 7 no such topic or group (see docs/cli.md)\n";

static const char group_help[] =
    "usage: msgbus group reset [options] TOPIC GROUP --to POSITION\n"
    "\n"
    "Moves GROUP's position on TOPIC so that its next member begins there:\n"
    "  earliest      the oldest message the broker still keeps\n"
    "  latest        after the last message (what is waiting is skipped)\n"
    "  TIME          the first message at or after an RFC 3339 time\n"
    "                (2026-12-07T08:00:00Z) or that long ago (-15m, -2h, -1d)\n"
    "The group must have no active member. Kafka commits the offsets of that\n"
    "position in every partition (a group that does not exist yet is made\n"
    "there). RabbitMQ can only go to 'latest', by purging the group's queue:\n"
    "every message waiting in it is dropped. mem:// moves within what it keeps.\n"
    "\n"
    "options:\n"
    "      --to POSITION  where to move the group (required)\n"
    "  -u, --url URL      broker URL (default: $MSGBUS_URL)\n"
    "  -q, --quiet        no status line on stderr\n"
    "  -v, --verbose      library log at info level (-vv: debug)\n"
    "  -h, --help         this text\n"
    "\n"
    "exit: 0 moved, 1 usage/config, 2 connect, 6 not supported by the backend,\n"
    "      7 the group has active members, or no such topic (see docs/cli.md)\n";

/* ------------------------------------------------------------ tables */

/* A table printed with its columns as wide as their widest cell. */
typedef struct table {
    size_t cols, rows, cap;
    char **cells; /* rows × cols, row 0 the header */
} table_t;

static void table_init(table_t *t, const char *const *header, size_t cols)
{
    memset(t, 0, sizeof *t);
    t->cols = cols;
    t->cells = calloc(cols, sizeof *t->cells);
    for (size_t i = 0; t->cells && i < cols; i++)
        t->cells[i] = strdup(header[i]);
    t->rows = 1, t->cap = 1;
}

/* Appends a row of `cols` strings (NULL prints as "-"). */
static void table_add(table_t *t, const char *const *row)
{
    if (!t->cells)
        return;
    if (t->rows == t->cap) {
        size_t cap = t->cap * 2;
        char **c = realloc(t->cells, cap * t->cols * sizeof *c);
        if (!c)
            return;
        t->cells = c, t->cap = cap;
    }
    for (size_t i = 0; i < t->cols; i++)
        t->cells[t->rows * t->cols + i] = strdup(row[i] ? row[i] : "-");
    t->rows++;
}

static void table_print(table_t *t)
{
    if (!t->cells || t->rows < 2)
        return;
    size_t w[16] = {0};
    for (size_t r = 0; r < t->rows; r++)
        for (size_t c = 0; c < t->cols && c < 16; c++) {
            const char *s = t->cells[r * t->cols + c];
            size_t l = s ? strlen(s) : 0;
            if (l > w[c])
                w[c] = l;
        }
    for (size_t r = 0; r < t->rows; r++) {
        for (size_t c = 0; c < t->cols; c++) {
            const char *s = t->cells[r * t->cols + c];
            if (c + 1 == t->cols)
                printf("%s\n", s ? s : "");
            else
                printf("%-*s  ", (int)w[c], s ? s : "");
        }
    }
}

static void table_free(table_t *t)
{
    for (size_t i = 0; t->cells && i < t->rows * t->cols; i++)
        free(t->cells[i]);
    free(t->cells);
}

/* Writes an integer member into buf; NULL when absent or null. */
static const char *int_field(json_t *o, const char *name, char *buf, size_t cap)
{
    json_t *v = json_object_get(o, name);
    if (!json_is_integer(v))
        return NULL;
    snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    return buf;
}

/* retention.ms as a person reads it: "7d", "36h", "90m", "forever". */
static const char *retention(json_t *topic, char *buf, size_t cap)
{
    json_t *v = json_object_get(topic, "retention_ms");
    if (!json_is_integer(v))
        return NULL;
    long long ms = (long long)json_integer_value(v);
    if (ms < 0)
        snprintf(buf, cap, "forever");
    else if (ms && ms % 86400000 == 0)
        snprintf(buf, cap, "%lldd", ms / 86400000);
    else if (ms && ms % 3600000 == 0)
        snprintf(buf, cap, "%lldh", ms / 3600000);
    else if (ms && ms % 60000 == 0)
        snprintf(buf, cap, "%lldm", ms / 60000);
    else if (ms && ms % 1000 == 0)
        snprintf(buf, cap, "%llds", ms / 1000);
    else
        snprintf(buf, cap, "%lldms", ms);
    return buf;
}

/* Three tables: topics; groups (members, lag, ready/unacked); partitions
 * of each group (Kafka). Columns no backend filled are left out. */
static void print_tables(json_t *root)
{
    json_t *topics = json_object_get(root, "topics");
    size_t ti, gi, pi;
    json_t *t, *g, *p;
    int any_retention = 0, any_retained = 0, any_ready = 0, any_parts = 0, any_groups = 0;
    json_array_foreach(topics, ti, t) {
        any_retention |= json_object_get(t, "retention_ms") != NULL;
        any_retained |= json_object_get(t, "retained") != NULL;
        json_array_foreach(json_object_get(t, "groups"), gi, g) {
            any_groups = 1;
            any_ready |= json_object_get(g, "ready") != NULL;
            any_parts |= json_array_size(json_object_get(g, "partitions")) > 0;
        }
    }
    if (!json_array_size(topics)) {
        printf("(no topics)\n");
        return;
    }

    static const char *const th[] = {"TOPIC", "PARTITIONS", "RETENTION", "MESSAGES"};
    const char *hdr[4];
    size_t nc = 0;
    hdr[nc++] = th[0], hdr[nc++] = th[1];
    if (any_retention)
        hdr[nc++] = th[2];
    if (any_retained)
        hdr[nc++] = th[3];
    table_t tt;
    table_init(&tt, hdr, nc);
    json_array_foreach(topics, ti, t) {
        char b1[32], b2[32], b3[32];
        const char *row[4];
        size_t c = 0;
        row[c++] = json_string_value(json_object_get(t, "name"));
        row[c++] = int_field(t, "partitions", b1, sizeof b1);
        if (any_retention)
            row[c++] = retention(t, b2, sizeof b2);
        if (any_retained)
            row[c++] = int_field(t, "retained", b3, sizeof b3);
        table_add(&tt, row);
    }
    table_print(&tt);
    table_free(&tt);
    if (!any_groups)
        return;

    static const char *const gh[] = {"TOPIC", "GROUP", "MEMBERS", "LAG", "READY", "UNACKED"};
    table_t gt;
    table_init(&gt, gh, any_ready ? 6 : 4);
    json_array_foreach(topics, ti, t) {
        json_array_foreach(json_object_get(t, "groups"), gi, g) {
            char b1[32], b2[32], b3[32], b4[32];
            const char *row[6] = {json_string_value(json_object_get(t, "name")),
                                  json_string_value(json_object_get(g, "name")),
                                  int_field(g, "members", b1, sizeof b1),
                                  int_field(g, "lag", b2, sizeof b2),
                                  int_field(g, "ready", b3, sizeof b3),
                                  int_field(g, "unacked", b4, sizeof b4)};
            table_add(&gt, row);
        }
    }
    printf("\n");
    table_print(&gt);
    table_free(&gt);
    if (!any_parts)
        return;

    static const char *const ph[] = {"TOPIC",     "GROUP",          "PARTITION",
                                     "COMMITTED", "HIGH_WATERMARK", "LAG"};
    table_t pt;
    table_init(&pt, ph, 6);
    json_array_foreach(topics, ti, t) {
        json_array_foreach(json_object_get(t, "groups"), gi, g) {
            json_array_foreach(json_object_get(g, "partitions"), pi, p) {
                char b1[32], b2[32], b3[32], b4[32];
                const char *row[6] = {json_string_value(json_object_get(t, "name")),
                                      json_string_value(json_object_get(g, "name")),
                                      int_field(p, "partition", b1, sizeof b1),
                                      int_field(p, "committed", b2, sizeof b2),
                                      int_field(p, "high_watermark", b3, sizeof b3),
                                      int_field(p, "lag", b4, sizeof b4)};
                table_add(&pt, row);
            }
        }
    }
    printf("\n");
    table_print(&pt);
    table_free(&pt);
}

int cli_ls(int argc, char **argv)
{
    static const struct option opts[] = {{"url", required_argument, 0, 'u'},
                                         {"json", no_argument, 0, 'j'},
                                         {"timeout", required_argument, 0, 't'},
                                         {"verbose", no_argument, 0, 'v'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *url = NULL;
    uint64_t timeout = 10000;
    int json = 0, verbose = 0, c;
    while ((c = cli_getopt("ls", argc, argv, "u:jt:vh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'j': json = 1; break;
        case 't':
            if (cli_parse_range("ls", "--timeout", optarg, 1, 3600000, "ms", &timeout))
                return CLI_USAGE;
            break;
        case 'v': verbose++; break;
        case 'h': fputs(ls_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (argc - optind > 2)
        return cli_usage_error("ls", "unexpected argument '%s'", argv[optind + 2]);
    const char *topic = optind < argc ? argv[optind] : NULL;
    const char *group = optind + 1 < argc ? argv[optind + 1] : NULL;
    cli_set_verbosity(verbose);
    msgbus_t *bus;
    int rc = cli_open_bus("ls", url, &bus);
    if (rc)
        return rc;
    char *text = NULL;
    msgbus_err_t e = msgbus_inspect_json(bus, topic, group, (int)timeout, &text);
    if (e) {
        char what[600];
        if (group)
            snprintf(what, sizeof what, "group '%s' on topic '%s'", group, topic);
        else if (topic)
            snprintf(what, sizeof what, "topic '%s'", topic);
        else
            snprintf(what, sizeof what, "list every topic");
        rc = cli_fail("ls", what, e);
    } else if (json) {
        printf("%s\n", text);
    } else {
        json_error_t err;
        json_t *root = json_loads(text, 0, &err);
        if (!root) {
            fprintf(stderr, "msgbus ls: the library's JSON does not parse: %s\n", err.text);
            rc = CLI_FAILED;
        } else {
            print_tables(root);
            json_decref(root);
        }
    }
    msgbus_free(text);
    msgbus_close(bus);
    return rc;
}

int cli_group(int argc, char **argv)
{
    static const char *const subs[] = {"reset"};
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(group_help, stdout);
        return CLI_OK;
    }
    if (argc < 2)
        return cli_usage_error("group", "the only group command is 'reset'");
    if (strcmp(argv[1], "reset") != 0)
        return cli_unknown_word("group", "command", argv[1], subs, 1);
    argc--, argv++;
    enum { OPT_TO = 256 };
    static const struct option opts[] = {{"to", required_argument, 0, OPT_TO},
                                         {"url", required_argument, 0, 'u'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"verbose", no_argument, 0, 'v'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *url = NULL, *to = NULL;
    int quiet = 0, verbose = 0, c;
    while ((c = cli_getopt("group reset", argc, argv, "u:qvh", opts)) != -1) {
        switch (c) {
        case OPT_TO: to = optarg; break;
        case 'u': url = optarg; break;
        case 'q': quiet = 1; break;
        case 'v': verbose++; break;
        case 'h': fputs(group_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (argc - optind != 2)
        return cli_usage_error("group reset", "needs TOPIC and GROUP");
    if (!to)
        return cli_usage_error("group reset", "needs --to earliest|latest|TIME");
    const char *topic = argv[optind], *group = argv[optind + 1];
    cli_set_verbosity(verbose);
    msgbus_t *bus;
    int rc = cli_open_bus("group reset", url, &bus);
    if (rc)
        return rc;
    msgbus_err_t e = msgbus_group_reset(bus, topic, group, to);
    if (e) {
        char what[600];
        snprintf(what, sizeof what, "group '%s' on topic '%s' to '%s'", group, topic, to);
        rc = cli_fail("group reset", what, e);
    } else if (!quiet) {
        fprintf(stderr, "msgbus group reset: group '%s' on topic '%s' moved to %s on %s\n", group,
                topic, to, msgbus_url(bus));
    }
    msgbus_close(bus);
    return rc;
}
