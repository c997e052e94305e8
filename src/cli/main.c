/*
 * main.c — the msgbus command-line tool: dispatch to the commands, the
 * top-level help, and the two small commands (declare, dlq replay).
 */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char main_help[] =
    "usage: msgbus COMMAND [options] [arguments]\n"
    "\n"
    "One tool for every msgbus backend; the broker is chosen by --url or\n"
    "$MSGBUS_URL (kafka://host:9092, amqp://user:pass@host:5672/vhost,\n"
    "sqlite:///path/bus.db, mem://).\n"
    "\n"
    "commands:\n"
    "  pub TOPIC [MESSAGE...]     publish arguments, files or stdin lines\n"
    "  sub TOPIC [-g GROUP]       print received messages (raw or --json)\n"
    "  declare TOPIC GROUP        create a group's storage before its consumers\n"
    "  ls [TOPIC [GROUP]]         topics, partitions, groups and their lag\n"
    "  group reset TOPIC GROUP    move a group to earliest, latest or a time\n"
    "  outbox relay STORE         publish committed outbox rows until SIGTERM\n"
    "  outbox put STORE TOPIC ... write messages into an outbox table\n"
    "  outbox stats STORE         pending / failed / sent rows as JSON\n"
    "  dlq replay DLQ_TOPIC       move dead letters back to their topics\n"
    "  bench                      publish/consume throughput and latency\n"
    "  doctor                     check the broker; what the backend guarantees\n"
    "  version                    print the library version\n"
    "\n"
    "'msgbus COMMAND --help' describes a command. Exit codes:\n"
    "  0 ok, 1 usage or configuration, 2 broker/database unreachable,\n"
    "  3 message not delivered, 4 outbox store error, 5 timed out,\n"
    "  6 not supported, 7 other failure (see docs/cli.md)\n";

static const char declare_help[] =
    "usage: msgbus declare [options] TOPIC GROUP\n"
    "\n"
    "Creates the storage GROUP needs on TOPIC (and the topic), so messages\n"
    "published from now on are kept until a member of GROUP reads them.\n"
    "\n"
    "options:\n"
    "  -u, --url URL    broker URL (default: $MSGBUS_URL)\n"
    "  -v, --verbose    library log at info level (-vv: debug)\n"
    "  -h, --help       this text\n"
    "\n"
    "exit: 0 declared, 1 usage/config, 2 connect, 3 refused by the broker\n";

static const char dlq_help[] =
    "usage: msgbus dlq replay [options] DLQ_TOPIC\n"
    "\n"
    "Moves dead letters on DLQ_TOPIC (e.g. 'orders.dlq') back to the topics\n"
    "they came from (their msgbus-dlq-topic header), with payload, key, id and\n"
    "application headers, the attempt count starting again at 1. A dead letter\n"
    "is acked on DLQ_TOPIC only after its republish was confirmed.\n"
    "\n"
    "options:\n"
    "  -u, --url URL       broker URL (default: $MSGBUS_URL)\n"
    "  -g, --group GROUP   the group that holds the dead letters (default: dlq)\n"
    "  -n, --max N         stop after N messages (default: no limit)\n"
    "  -t, --idle MS       stop when none came for MS (default 2000)\n"
    "  -q, --quiet         no summary on stderr\n"
    "  -v, --verbose       library log at info level (-vv: debug)\n"
    "  -h, --help          this text\n"
    "\n"
    "Prints the number moved. exit: 0 done, 1 usage/config, 2 connect,\n"
    "3 republish failed, 6 not supported by this build, 7 letters without a\n"
    "msgbus-dlq-topic header were left on DLQ_TOPIC, or any other failure\n"
    "(see docs/cli.md)\n";

static const char version_help[] =
    "usage: msgbus version\n"
    "\n"
    "Prints the version of the msgbus library the tool runs with.\n"
    "\n"
    "options:\n"
    "  -h, --help   this text\n"
    "\n"
    "exit: 0, or 1 for an unexpected argument\n";

static int cli_version(int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    while ((c = cli_getopt("version", argc, argv, "h", opts)) != -1) {
        switch (c) {
        case 'h': fputs(version_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc)
        return cli_usage_error("version", "unexpected argument '%s'", argv[optind]);
    printf("msgbus %s\n", msgbus_version());
    return CLI_OK;
}

int cli_declare(int argc, char **argv)
{
    static const struct option opts[] = {{"url", required_argument, 0, 'u'},
                                         {"verbose", no_argument, 0, 'v'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *url = NULL;
    int verbose = 0, c;
    while ((c = cli_getopt("declare", argc, argv, "u:vh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'v': verbose++; break;
        case 'h': fputs(declare_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (argc - optind != 2)
        return cli_usage_error("declare", "needs TOPIC and GROUP");
    cli_set_verbosity(verbose);
    msgbus_t *bus;
    int rc = cli_open_bus("declare", url, &bus);
    if (rc)
        return rc;
    msgbus_err_t e = msgbus_declare(bus, argv[optind], argv[optind + 1]);
    if (e)
        rc = cli_fail("declare", "declare", e);
    else
        fprintf(stderr, "msgbus declare: group '%s' on topic '%s' declared on %s\n",
                argv[optind + 1], argv[optind], msgbus_url(bus));
    msgbus_close(bus);
    return rc;
}

int cli_dlq(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(dlq_help, stdout);
        return CLI_OK;
    }
    static const char *const subs[] = {"replay"};
    if (argc < 2)
        return cli_usage_error("dlq", "the only dlq command is 'replay'");
    if (strcmp(argv[1], "replay") != 0)
        return cli_unknown_word("dlq", "command", argv[1], subs, 1);
    argc--, argv++;
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'}, {"group", required_argument, 0, 'g'},
        {"max", required_argument, 0, 'n'}, {"idle", required_argument, 0, 't'},
        {"quiet", no_argument, 0, 'q'},     {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},      {0, 0, 0, 0}};
    const char *url = NULL, *group = NULL;
    uint64_t max = 0, idle = 2000;
    int quiet = 0, verbose = 0, c;
    while ((c = cli_getopt("dlq replay", argc, argv, "u:g:n:t:qvh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'g': group = optarg; break;
        case 'n':
            if (cli_parse_u64("dlq replay", "--max", optarg, &max))
                return CLI_USAGE;
            break;
        case 't':
            if (cli_parse_range("dlq replay", "--idle", optarg, 0, 86400000, "ms", &idle))
                return CLI_USAGE;
            break;
        case 'q': quiet = 1; break;
        case 'v': verbose++; break;
        case 'h': fputs(dlq_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (argc - optind != 1)
        return cli_usage_error("dlq replay", "needs DLQ_TOPIC (e.g. orders.dlq)");
    cli_set_verbosity(verbose);
    msgbus_t *bus;
    int rc = cli_open_bus("dlq replay", url, &bus);
    if (rc)
        return rc;
    size_t moved = 0;
    msgbus_err_t e = msgbus_dlq_replay(bus, argv[optind], group, (size_t)max, (int)idle, &moved);
    printf("%zu\n", moved);
    if (e)
        rc = cli_fail("dlq replay", "replay", e);
    if (!quiet)
        fprintf(stderr, "msgbus dlq replay: %zu messages moved from '%s'\n", moved, argv[optind]);
    msgbus_close(bus);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(main_help, stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        if (argc > 2 && strcmp(cmd, "help") == 0) { /* msgbus help COMMAND */
            static char help_opt[] = "--help";
            static char *args[3];
            args[0] = argv[2], args[1] = help_opt, args[2] = NULL;
            argv = args, argc = 2, cmd = argv[0];
            optind = 1;
        } else {
            fputs(main_help, stdout);
            return CLI_OK;
        }
    } else {
        argc--, argv++;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } commands[] = {{"pub", cli_pub},         {"sub", cli_sub},       {"declare", cli_declare},
                    {"ls", cli_ls},           {"group", cli_group},   {"outbox", cli_outbox},
                    {"dlq", cli_dlq},         {"bench", cli_bench},   {"doctor", cli_doctor},
                    {"version", cli_version}, {"help", NULL}};
    enum { N_COMMANDS = sizeof commands / sizeof commands[0] };
    for (size_t i = 0; i < N_COMMANDS; i++)
        if (commands[i].fn && !strcmp(cmd, commands[i].name))
            return commands[i].fn(argc, argv);
    if (!strcmp(cmd, "--version"))
        return cli_version(1, argv);
    /* One line, with the closest command: the whole help after it buried
     * the mistake. */
    const char *names[N_COMMANDS];
    for (size_t i = 0; i < N_COMMANDS; i++)
        names[i] = commands[i].name;
    const char *s = cmd[0] == '-' ? NULL : cli_suggest(cmd, names, N_COMMANDS);
    if (s)
        fprintf(stderr, "msgbus: unknown %s '%s'; did you mean '%s'? (see 'msgbus --help')\n",
                cmd[0] == '-' ? "option" : "command", cmd, s);
    else
        fprintf(stderr, "msgbus: unknown %s '%s' (see 'msgbus --help')\n",
                cmd[0] == '-' ? "option" : "command", cmd);
    return CLI_USAGE;
}
