/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The process that runs the suite (tu_run_suite); Check forks each test
 * from it, so its children name things after it too: its marker "-r<pid>-"
 * in every tu_unique name lets it delete what they made on the brokers. */
static int tu_run_pid;

static int tu_marker_pid(void)
{
    return tu_run_pid ? tu_run_pid : (int)getpid();
}

/* The flag file saying that a test of run `pid` used broker `kind`. */
static void tu_used_path(char *buf, size_t n, int pid, const char *kind)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(buf, n, "%s/msgbus-tu-%d-%s", tmp && *tmp ? tmp : "/tmp", pid, kind);
}

const char *tu_broker_url(const char *kind)
{
    char var[64];
    snprintf(var, sizeof var, "MSGBUS_TEST_%s_URL", kind);
    for (char *p = var; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    const char *v = getenv(var);
    if (!v || !*v) {
        fprintf(stderr,
                "FAIL: %s is not set: this test needs the real %s broker. "
                "Start it with `scripts/brokers up` and source .brokers/env "
                "(scripts/test does both).\n",
                var, kind);
        exit(1);
    }
    char flag[512];
    tu_used_path(flag, sizeof flag, tu_marker_pid(), kind);
    int fd = open(flag, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd >= 0)
        close(fd);
    return v;
}

void tu_unique(char *buf, size_t n, const char *prefix)
{
    static int counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* The counter restarts in each forked test: the pid and the clock in
     * the random part keep the names apart. */
    unsigned r = (unsigned)(ts.tv_nsec ^ (long)getpid() * 2654435761u);
    snprintf(buf, n, "%s-r%d-%d-%08x", prefix, tu_marker_pid(),
             __atomic_add_fetch(&counter, 1, __ATOMIC_SEQ_CST), r);
}

int64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tu_publish_str(msgbus_t *bus, const char *topic, const char *key, const char *payload)
{
    msgbus_msg_t *m = NULL;
    tu_ck_ok(msgbus_msg_new(&m, payload, strlen(payload)));
    if (key)
        tu_ck_ok(msgbus_msg_set_key(m, key, strlen(key)));
    tu_ck_ok(msgbus_publish(bus, topic, m, NULL, NULL));
    msgbus_msg_free(m);
}

msgbus_msg_t *tu_receive(msgbus_sub_t *sub, int timeout_ms)
{
    msgbus_msg_t *m = NULL;
    msgbus_err_t e = msgbus_receive(sub, timeout_ms, &m);
    if (e == MSGBUS_ERR_TIMEOUT)
        return NULL;
    ck_assert_msg(e == MSGBUS_OK, "receive: %s (%s)", msgbus_err_name(e), msgbus_last_error());
    return m;
}

int tu_run_suite(Suite *s)
{
    tu_run_pid = (int)getpid();
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    /* What the tests made on the shared brokers goes with them. */
    char marker[32];
    snprintf(marker, sizeof marker, "-r%d-", tu_run_pid);
    static const char *const kinds[] = {"kafka", "amqp"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char flag[512];
        tu_used_path(flag, sizeof flag, tu_run_pid, kinds[i]);
        if (access(flag, F_OK) != 0)
            continue;
        unlink(flag);
        const char *url = getenv(i == 0 ? "MSGBUS_TEST_KAFKA_URL" : "MSGBUS_TEST_AMQP_URL");
        if (url && *url)
            tu_cleanup(kinds[i], url, marker);
    }
    return failed == 0 ? 0 : 1;
}

void tu_outbox_put_sized(msgbus_outbox_t *ob, const char *topic, int n, size_t size)
{
    char *payload = malloc(size ? size : 1);
    ck_assert_ptr_nonnull(payload);
    memset(payload, 'b', size);
    for (int i = 0; i < n; i++) {
        msgbus_msg_t *m = NULL;
        tu_ck_ok(msgbus_msg_new(&m, payload, size));
        tu_ck_ok(msgbus_outbox_put(ob, topic, m));
        msgbus_msg_free(m);
    }
    free(payload);
}

void tu_capped_log_cb(void *opaque, msgbus_log_level_t level, const char *line)
{
    struct tu_capped_log *cl = opaque;
    size_t rows = 0, bytes = 0;
    const char *p = strstr(line, ": slice of ");
    if (level != MSGBUS_LOG_DEBUG || !p ||
        sscanf(p, ": slice of %zu rows stopped at %zu bytes", &rows, &bytes) != 2)
        return;
    cl->slices++;
    if (rows > cl->most_rows)
        cl->most_rows = rows;
    if (bytes > cl->most_bytes)
        cl->most_bytes = bytes;
}

void tu_on_report(void *opaque, const msgbus_report_t *r)
{
    struct tu_reports *rp = opaque;
    if (r->status == MSGBUS_OK) {
        rp->ok++;
        return;
    }
    rp->failed++;
    rp->status = r->status;
    snprintf(rp->error, sizeof rp->error, "%s", r->error ? r->error : "");
    printf("report: %s: %s\n", msgbus_err_name(r->status), rp->error);
}

json_t *tu_stats(msgbus_t *bus)
{
    char *text = NULL;
    tu_ck_ok(msgbus_stats_json(bus, &text));
    ck_assert_ptr_nonnull(text);
    json_error_t err;
    json_t *o = json_loads(text, 0, &err);
    ck_assert_msg(o != NULL, "stats JSON does not parse: %s: %s", err.text, text);
    msgbus_stats_free(text);
    return o;
}

json_t *tu_json_at(json_t *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = o;
    for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && cur;
         tok = strtok_r(NULL, ".", &save))
        cur = json_is_array(cur) ? json_array_get(cur, (size_t)atoi(tok))
                                 : json_object_get(cur, tok);
    return cur;
}

json_int_t tu_json_int(json_t *o, const char *path)
{
    json_t *v = tu_json_at(o, path);
    ck_assert_msg(json_is_integer(v), "stats: '%s' is missing or not an integer", path);
    return json_integer_value(v);
}
