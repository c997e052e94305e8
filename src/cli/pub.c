/*
 * pub.c — `msgbus pub TOPIC [MESSAGE…]`: publishes messages from the
 * arguments, from files (-f, one message per file) or from stdin (one per
 * line), waits for the broker's confirms and says how many arrived.
 * --type/--source/--subject set the CloudEvents attributes the backends
 * write (docs/interop.md).
 */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char pub_help[] =
    "usage: msgbus pub [options] TOPIC [MESSAGE...]\n"
    "\n"
    "Publishes each MESSAGE argument as one message; with -f, each FILE's whole\n"
    "content as one message; with neither, each line of stdin (without its\n"
    "newline). Waits for the broker's confirms before exiting.\n"
    "\n"
    "options:\n"
    "  -u, --url URL          broker URL (default: $MSGBUS_URL)\n"
    "  -k, --key KEY          key of every message\n"
    "  -K, --key-delim DELIM  split each message at the first DELIM into\n"
    "                         KEY and payload (no DELIM in it: no key)\n"
    "  -H, --header NAME=VALUE  add a header (repeatable)\n"
    "      --type TYPE        CloudEvents type of every message (default: the\n"
    "                         topic)\n"
    "      --source SOURCE    CloudEvents source of every message (default: the\n"
    "                         URL option ce_source, else //HOST/msgbus)\n"
    "      --subject SUBJECT  CloudEvents subject of every message (default: none)\n"
    "  -f, --file FILE        publish FILE's content as one message (repeatable;\n"
    "                         '-' is stdin as one message)\n"
    "  -n, --count N          publish N messages in all, cycling through the\n"
    "                         inputs (default: each input once)\n"
    "  -r, --rate R           at most R messages per second (default: no limit)\n"
    "  -t, --timeout MS       how long to wait for confirms (default 30000)\n"
    "  -q, --quiet            no summary on stderr\n"
    "  -v, --verbose          library log at info level (-vv: debug)\n"
    "  -h, --help             this text\n"
    "\n"
    "exit: 0 all confirmed, 1 usage/config, 2 connect, 3 not delivered,\n"
    "      5 confirms timed out (see docs/cli.md)\n";

typedef struct pub_state {
    size_t failed;
} pub_state_t;

static void on_delivery(void *opaque, const msgbus_report_t *r)
{
    pub_state_t *st = opaque;
    if (r->status != MSGBUS_OK) {
        st->failed++;
        fprintf(stderr, "msgbus pub: message %s to '%s' not delivered: %s (%s)\n", r->msg_id,
                r->topic, msgbus_strerror(r->status), r->error);
    }
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

int cli_pub(int argc, char **argv)
{
    enum { OPT_TYPE = 256, OPT_SOURCE, OPT_SUBJECT };
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},     {"key", required_argument, 0, 'k'},
        {"key-delim", required_argument, 0, 'K'}, {"header", required_argument, 0, 'H'},
        {"file", required_argument, 0, 'f'},    {"count", required_argument, 0, 'n'},
        {"rate", required_argument, 0, 'r'},    {"timeout", required_argument, 0, 't'},
        {"quiet", no_argument, 0, 'q'},         {"verbose", no_argument, 0, 'v'},
        {"help", no_argument, 0, 'h'},          {"type", required_argument, 0, OPT_TYPE},
        {"source", required_argument, 0, OPT_SOURCE},
        {"subject", required_argument, 0, OPT_SUBJECT}, {0, 0, 0, 0}};
    cli_msg_opts_t mo;
    memset(&mo, 0, sizeof mo);
    const char *url = NULL;
    uint64_t count = 0, timeout = 30000;
    double rate = 0;
    int quiet = 0, verbose = 0, c;
    while ((c = cli_getopt("pub", argc, argv, "u:k:K:H:f:n:r:t:qvh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case 'k': mo.key = optarg; break;
        case 'K': mo.key_delim = optarg; break;
        case 'H':
            if (cli_add_header("pub", &mo, optarg))
                return CLI_USAGE;
            break;
        case 'f':
            if (mo.n_files == sizeof mo.files / sizeof mo.files[0])
                return cli_usage_error("pub", "too many -f files");
            mo.files[mo.n_files++] = optarg;
            break;
        case 'n':
            if (cli_parse_u64("pub", "--count", optarg, &count))
                return CLI_USAGE;
            break;
        case 'r':
            if (cli_parse_double("pub", "--rate", optarg, &rate))
                return CLI_USAGE;
            break;
        case 't':
            if (cli_parse_range("pub", "--timeout", optarg, 0, 86400000, "ms", &timeout))
                return CLI_USAGE;
            break;
        case OPT_TYPE: mo.ce_type = optarg; break;
        case OPT_SOURCE: mo.ce_source = optarg; break;
        case OPT_SUBJECT: mo.ce_subject = optarg; break;
        case 'q': quiet = 1; break;
        case 'v': verbose++; break;
        case 'h': fputs(pub_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind >= argc)
        return cli_usage_error("pub", "missing TOPIC");
    const char *topic = argv[optind++];
    mo.args = argv + optind;
    mo.n_args = argc - optind;
    if (mo.n_args && mo.n_files)
        return cli_usage_error("pub", "give messages as arguments or with -f, not both");
    if (mo.key && mo.key_delim)
        return cli_usage_error("pub", "-k and -K exclude each other");
    if (cli_check_msg_opts("pub", &mo))
        return CLI_USAGE;
    cli_set_verbosity(verbose);
    cli_catch_signals();

    msgbus_t *bus;
    int rc = cli_open_bus("pub", url, &bus);
    if (rc)
        return rc;
    cli_source_t *src;
    if ((rc = cli_source_open("pub", &mo, &src))) {
        msgbus_close(bus);
        return rc;
    }
    if (count)
        cli_source_keep_lines(src);

    pub_state_t st = {0};
    uint64_t sent = 0;
    int64_t start = cli_now_us();
    while (!cli_stop && (count == 0 || sent < count)) {
        msgbus_msg_t *m = cli_source_next(src, &rc);
        if (!m && !rc && count && sent > 0) { /* inputs used up: start over */
            cli_source_rewind(src);
            m = cli_source_next(src, &rc);
        }
        if (!m)
            break;
        if (rate > 0) {
            int64_t due = start + (int64_t)((double)sent * 1e6 / rate);
            int64_t now = cli_now_us();
            if (due > now)
                sleep_us(due - now);
        }
        msgbus_err_t e;
        while ((e = msgbus_publish(bus, topic, m, on_delivery, &st)) == MSGBUS_ERR_QUEUE_FULL &&
               !cli_stop)
            msgbus_poll(bus, 100, NULL);
        msgbus_msg_free(m);
        if (e) {
            rc = cli_fail("pub", "publish", e);
            break;
        }
        sent++;
        if (sent % 256 == 0)
            msgbus_poll(bus, 0, NULL);
    }
    cli_source_close(src);
    /* Whatever was published is waited for, even after an error or a signal. */
    msgbus_err_t e = msgbus_flush(bus, (int)timeout, NULL);
    if (e == MSGBUS_ERR_TIMEOUT) {
        fprintf(stderr, "msgbus pub: %zu of %llu messages not confirmed after %llu ms\n",
                msgbus_outstanding(bus), (unsigned long long)sent, (unsigned long long)timeout);
        if (!rc)
            rc = CLI_TIMEOUT;
    } else if (e == MSGBUS_ERR_DELIVERY || st.failed) {
        if (!rc)
            rc = CLI_DELIVERY;
    } else if (e && !rc) {
        rc = cli_fail("pub", "flush", e);
    }
    double secs = (double)(cli_now_us() - start) / 1e6;
    if (!quiet)
        fprintf(stderr, "msgbus pub: %llu published to '%s', %llu confirmed, %zu failed (%.2f s)\n",
                (unsigned long long)sent, topic,
                (unsigned long long)(sent - st.failed - (e == MSGBUS_ERR_TIMEOUT ? msgbus_outstanding(bus) : 0)),
                st.failed, secs);
    msgbus_close(bus);
    return rc;
}
