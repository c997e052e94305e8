/*
 * doctor.c — `msgbus doctor`: prints the effective configuration (passwords
 * redacted), what the URL's backend guarantees (its capability table), and
 * checks the broker end to end on a scratch topic: connect, declare,
 * subscribe, publish, confirm, consume, ack. The first failing step is
 * reported with its reason and decides the exit code. With --json all of
 * it is one JSON object instead.
 */
#define _POSIX_C_SOURCE 200809L
#include <getopt.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

extern char **environ;

static const char doctor_help[] =
    "usage: msgbus doctor [options]\n"
    "\n"
    "Prints the effective configuration (library version, URL and MSGBUS_*\n"
    "variables, passwords shown as ***), then connects, declares a scratch\n"
    "group, publishes one message, waits for its confirm and consumes it.\n"
    "Each step prints 'ok' with its time, or 'FAIL' with the reason; doctor\n"
    "stops at the first failure. The connection's state and each change of it\n"
    "(CONNECTING, UP, RECONNECTING, DOWN, with the reason) print as 'state'\n"
    "lines, and the end as 'final' with the state and the reconnect count.\n"
    "After connecting it prints what the backend guarantees as configured, one\n"
    "'cap' line per capability: its name, yes or no, and what it means or why\n"
    "not (msgbus_caps_json; the names are those of the URL option require=).\n"
    "\n"
    "options:\n"
    "  -u, --url URL      broker URL (default: $MSGBUS_URL)\n"
    "      --topic TOPIC  scratch topic (default: msgbus-doctor)\n"
    "      --group GROUP  scratch group (default: msgbus-doctor)\n"
    "  -t, --timeout MS   time allowed for the confirm and the message (default 10000)\n"
    "  -j, --json         one JSON object: configuration, capabilities, steps,\n"
    "                     states, final state (see docs/cli.md)\n"
    "  -v, --verbose      library log at info level (-vv: debug)\n"
    "  -h, --help         this text\n"
    "\n"
    "exit: 0 all checks passed, 1 configuration, 2 broker unreachable or\n"
    "      credentials refused, 3 publish refused, 5 timed out, 7 other\n"
    "      (see docs/cli.md)\n";

/* The library's own redaction, so the tool shows exactly what msgbus_url
 * and the logs show: every secret as ***. */
static void redact(const char *in, char *out, size_t cap)
{
    msgbus_redact(in, out, cap);
}

/* With --json, everything goes into this object, printed at the end. */
static json_t *report;

static double ms_since(int64_t t0)
{
    return (double)(cli_now_us() - t0) / 1000.0;
}

static void step_ok(const char *step, int64_t t0, const char *info)
{
    if (report) {
        json_t *o = json_pack("{s:s, s:b, s:f, s:s}", "step", step, "ok", 1, "ms", ms_since(t0),
                              "info", info);
        json_array_append_new(json_object_get(report, "steps"), o);
        return;
    }
    printf("ok    %-10s %7.1f ms  %s\n", step, ms_since(t0), info);
    fflush(stdout);
}

static int step_fail(const char *step, msgbus_err_t e)
{
    const char *detail = msgbus_last_error();
    if (report) {
        json_t *o = json_pack("{s:s, s:b, s:s, s:s, s:s}", "step", step, "ok", 0, "error",
                              msgbus_err_name(e), "message", msgbus_strerror(e), "detail", detail);
        json_array_append_new(json_object_get(report, "steps"), o);
    } else {
        printf("FAIL  %-10s %s%s%s%s\n", step, msgbus_strerror(e), *detail ? " (" : "", detail,
               *detail ? ")" : "");
    }
    fprintf(stderr, "msgbus doctor: %s failed: %s (%s); exit code %d\n", step, msgbus_strerror(e),
            msgbus_err_name(e), cli_exit_code(e));
    return cli_exit_code(e);
}

/* State changes print as they are served (by msgbus_poll/_flush/_close). */
static void on_state(void *opaque, const msgbus_state_event_t *ev)
{
    (void)opaque;
    if (report) {
        json_t *o = json_pack("{s:s, s:s, s:s}", "state", msgbus_state_name(ev->state), "previous",
                              msgbus_state_name(ev->previous), "reason",
                              ev->reason ? ev->reason : "");
        if (ev->sub)
            json_object_set_new(o, "subscription",
                                json_pack("{s:s?, s:s?}", "topic", ev->topic, "group", ev->group));
        json_array_append_new(json_object_get(report, "states"), o);
        return;
    }
    if (ev->sub)
        printf("state        subscription %s%s%s: %s -> %s (%s)\n", ev->topic ? ev->topic : "",
               ev->group ? " group " : " (broadcast)", ev->group ? ev->group : "",
               msgbus_state_name(ev->previous), msgbus_state_name(ev->state),
               ev->reason ? ev->reason : "");
    else
        printf("state        %s -> %s (%s)\n", msgbus_state_name(ev->previous),
               msgbus_state_name(ev->state), ev->reason ? ev->reason : "");
    fflush(stdout);
}

/* The last line: the bus's state and how often it reconnected (from its
 * stats snapshot). */
static void print_final(msgbus_t *bus)
{
    msgbus_poll(bus, 0, NULL); /* changes still queued print first */
    char reason[256];
    msgbus_state_t st = msgbus_state(bus, reason, sizeof reason);
    long long reconnects = -1;
    char *text = NULL;
    if (msgbus_stats_json(bus, &text) == MSGBUS_OK) {
        json_t *o = json_loads(text, 0, NULL);
        json_t *r = json_object_get(o, "reconnects");
        if (json_is_integer(r))
            reconnects = (long long)json_integer_value(r);
        json_decref(o);
        msgbus_stats_free(text);
    }
    if (report) {
        json_object_set_new(report, "final",
                            json_pack("{s:s, s:s, s:I}", "state", msgbus_state_name(st), "reason",
                                      reason, "reconnects", (json_int_t)reconnects));
        return;
    }
    printf("final        state %s (%s), reconnects %lld\n", msgbus_state_name(st), reason,
           reconnects);
    fflush(stdout);
}

/* With --json: the whole report on one line, with "ok" for the checks. */
static void print_report(int ok)
{
    if (!report)
        return;
    json_object_set_new(report, "ok", json_boolean(ok));
    char *text = json_dumps(report, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text)
        printf("%s\n", text);
    fflush(stdout);
    free(text);
    json_decref(report);
    report = NULL;
}

/* The capability table of the bus's backend as configured: one 'cap' line
 * each — name, yes/no, and what it means (yes) or why not (no). A failure
 * to read it is reported, not fatal: the checks still say whether the
 * broker works. */
static void print_caps(msgbus_t *bus)
{
    char *text = NULL;
    msgbus_err_t e = msgbus_caps_json(bus, &text);
    json_t *root = e ? NULL : json_loads(text, 0, NULL);
    msgbus_free(text);
    if (!root) {
        const char *detail = e ? msgbus_last_error() : "the library's JSON does not parse";
        if (report)
            json_object_set_new(report, "capabilities_error", json_string(detail));
        else
            printf("cap          (cannot read the capabilities: %s)\n", detail);
        fprintf(stderr, "msgbus doctor: cannot read the capabilities: %s\n", detail);
        return;
    }
    if (report) {
        json_object_set_new(report, "capabilities", root);
        return;
    }
    json_t *mx = json_object_get(root, "max_message_size");
    if (json_is_integer(mx) && json_integer_value(mx) > 0)
        printf("caps         backend %s, largest message %lld bytes\n",
               json_string_value(json_object_get(root, "backend")),
               (long long)json_integer_value(mx));
    else
        printf("caps         backend %s, no message size limit of its own\n",
               json_string_value(json_object_get(root, "backend")));
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "capabilities"), i, c) {
        int yes = json_is_true(json_object_get(c, "supported"));
        const char *text2 = json_string_value(json_object_get(c, yes ? "description" : "why_not"));
        printf("cap          %-22s %-3s  %s\n", json_string_value(json_object_get(c, "name")),
               yes ? "yes" : "no", text2 ? text2 : "");
    }
    fflush(stdout);
    json_decref(root);
}

int cli_doctor(int argc, char **argv)
{
    enum { OPT_TOPIC = 256, OPT_GROUP };
    static const struct option opts[] = {
        {"url", required_argument, 0, 'u'},         {"topic", required_argument, 0, OPT_TOPIC},
        {"group", required_argument, 0, OPT_GROUP}, {"timeout", required_argument, 0, 't'},
        {"verbose", no_argument, 0, 'v'},           {"help", no_argument, 0, 'h'},
        {"json", no_argument, 0, 'j'},              {0, 0, 0, 0}};
    const char *url = NULL, *topic = "msgbus-doctor", *group = "msgbus-doctor";
    uint64_t timeout = 10000;
    int verbose = 0, json = 0, c;
    while ((c = cli_getopt("doctor", argc, argv, "u:t:jvh", opts)) != -1) {
        switch (c) {
        case 'u': url = optarg; break;
        case OPT_TOPIC: topic = optarg; break;
        case OPT_GROUP: group = optarg; break;
        case 't':
            if (cli_parse_range("doctor", "--timeout", optarg, 1, 3600000, "ms", &timeout))
                return CLI_USAGE;
            break;
        case 'v': verbose++; break;
        case 'j': json = 1; break;
        case 'h': fputs(doctor_help, stdout); return CLI_OK;
        default: return CLI_USAGE;
        }
    }
    if (optind < argc)
        return cli_usage_error("doctor", "unexpected argument '%s'", argv[optind]);
    cli_set_verbosity(verbose);

    /* The configuration as msgbus will see it. */
    char buf[2048];
    const char *env_url = getenv("MSGBUS_URL");
    if (json) {
        report = json_pack("{s:s, s:n, s:n, s:{}, s:{s:s, s:s}, s:[], s:[]}", "version",
                           msgbus_version(), "url", "url_source", "env", "scratch", "topic", topic,
                           "group", group, "steps", "states");
        if (url || (env_url && *env_url)) {
            redact(url ? url : env_url, buf, sizeof buf);
            json_object_set_new(report, "url", json_string(buf));
            json_object_set_new(report, "url_source", json_string(url ? "--url" : "MSGBUS_URL"));
        }
    } else {
        printf("msgbus %s\n", msgbus_version());
        if (url) {
            redact(url, buf, sizeof buf);
            printf("url          %s (from --url)\n", buf);
        } else if (env_url && *env_url) {
            redact(env_url, buf, sizeof buf);
            printf("url          %s (from MSGBUS_URL)\n", buf);
        } else {
            printf("url          (none: MSGBUS_URL is not set and no --url given)\n");
        }
    }
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "MSGBUS_", 7) || !strncmp(*e, "MSGBUS_URL=", 11) ||
            !strncmp(*e, "MSGBUS_TEST_", 12))
            continue;
        const char *eq = strchr(*e, '=');
        if (!eq)
            continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(eq - *e), *e);
        if (msgbus_secret_name(name))
            snprintf(buf, sizeof buf, "***");
        else
            redact(eq + 1, buf, sizeof buf);
        if (report)
            json_object_set_new(json_object_get(report, "env"), name, json_string(buf));
        else
            printf("env          %s=%s\n", name, buf);
    }
    if (!report) {
        printf("scratch      topic %s, group %s\n", topic, group);
        fflush(stdout);
    }

    msgbus_t *bus = NULL;
    msgbus_sub_t *sub = NULL;
    msgbus_msg_t *m = NULL;
    int rc = CLI_OK;
    int64_t t0 = cli_now_us(), start = t0;
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    if (e) {
        rc = step_fail("connect", e);
        /* No bus came to be: its state is DOWN, for the reason above. */
        if (report) {
            snprintf(buf, sizeof buf, "never connected: %s", msgbus_strerror(e));
            json_object_set_new(report, "final",
                                json_pack("{s:s, s:s, s:i}", "state", "DOWN", "reason", buf,
                                          "reconnects", 0));
            print_report(0);
        } else {
            printf("final        state DOWN (never connected: %s), reconnects 0\n",
                   msgbus_strerror(e));
        }
        return rc;
    }
    snprintf(buf, sizeof buf, "%s (backend %s)", msgbus_url(bus), msgbus_backend(bus));
    step_ok("connect", t0, buf);
    char reason[256];
    msgbus_state_t st = msgbus_state(bus, reason, sizeof reason);
    if (report)
        json_array_append_new(json_object_get(report, "states"),
                              json_pack("{s:s, s:s}", "state", msgbus_state_name(st), "reason",
                                        reason));
    else
        printf("state        %s (%s)\n", msgbus_state_name(st), reason);
    msgbus_set_state_cb(bus, on_state, NULL);
    print_caps(bus);

    t0 = cli_now_us();
    if ((e = msgbus_declare(bus, topic, group))) {
        rc = step_fail("declare", e);
        goto out;
    }
    msgbus_poll(bus, 0, NULL);
    step_ok("declare", t0, "");
    t0 = cli_now_us();
    if ((e = msgbus_subscribe(bus, topic, group, &sub))) {
        rc = step_fail("subscribe", e);
        goto out;
    }
    msgbus_poll(bus, 0, NULL);
    step_ok("subscribe", t0, "");

    t0 = cli_now_us();
    char payload[128];
    snprintf(payload, sizeof payload, "msgbus doctor check from pid %ld", (long)getpid());
    if ((e = msgbus_msg_new(&m, payload, strlen(payload))) ||
        (e = msgbus_publish(bus, topic, m, NULL, NULL))) {
        rc = step_fail("publish", e);
        goto out;
    }
    char id[MSGBUS_MAX_ID + 1];
    snprintf(id, sizeof id, "%s", msgbus_msg_id(m));
    msgbus_msg_free(m);
    m = NULL;
    if ((e = msgbus_flush(bus, (int)timeout, NULL))) {
        rc = step_fail("confirm", e);
        goto out;
    }
    snprintf(buf, sizeof buf, "message %s", id);
    step_ok("publish", t0, buf);

    /* Messages of an earlier, interrupted doctor run may come first: they
     * are acked and skipped. */
    t0 = cli_now_us();
    int stale = 0;
    for (;;) {
        int64_t left_ms = (int64_t)timeout - (cli_now_us() - t0) / 1000;
        if (left_ms <= 0) {
            e = MSGBUS_ERR_TIMEOUT;
            break;
        }
        msgbus_msg_t *in;
        if ((e = msgbus_receive(sub, (int)left_ms, &in)))
            break;
        const char *got = msgbus_msg_id(in);
        int mine = got && !strcmp(got, id);
        e = msgbus_ack(in);
        msgbus_msg_free(in);
        if (e || mine)
            break;
        stale++;
    }
    if (e) {
        if (e == MSGBUS_ERR_TIMEOUT)
            fprintf(stderr, "msgbus doctor: the message published was not received within %llu ms\n",
                    (unsigned long long)timeout);
        rc = step_fail("consume", e);
        goto out;
    }
    snprintf(buf, sizeof buf, "acked%s", stale ? " (and skipped older doctor messages)" : "");
    step_ok("consume", t0, buf);
    if (report)
        json_object_set_new(report, "ms", json_real(ms_since(start)));
    else
        printf("all checks passed in %.1f ms\n", ms_since(start));
out:
    msgbus_msg_free(m);
    msgbus_sub_close(sub);
    print_final(bus);
    msgbus_close(bus);
    print_report(rc == CLI_OK);
    return rc;
}
