/*
 * interop_peer.c — the C side of the Python interop test
 * (tests/python/test_interop.py compiles it against the build tree).
 *
 *   interop_peer produce URL TOPIC SPECFILE
 *       publishes one message per line of SPECFILE, waits for every
 *       confirm, prints "published N"; exit 0 when all were confirmed.
 *   interop_peer consume URL TOPIC GROUP COUNT TIMEOUT_MS
 *       subscribes as GROUP, receives COUNT messages (acking each) within
 *       TIMEOUT_MS and prints one line per message; exit 0 when COUNT
 *       arrived, 3 when fewer did.
 *
 * Line format, everything hex so any byte survives:
 *   ID KEYHEX|- PAYLOADHEX NHEADERS NAMEHEX=VALUEHEX …
 * (an empty payload is written as "-").
 */
#include <msgbus/msgbus.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void die(const char *what, msgbus_err_t e)
{
    fprintf(stderr, "interop_peer: %s: %s (%s)\n", what, msgbus_err_name(e), msgbus_last_error());
    exit(2);
}

static void put_hex(FILE *f, const void *p, size_t n)
{
    const unsigned char *b = p;
    if (n == 0) {
        fputc('-', f);
        return;
    }
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", b[i]);
}

/* Decodes hex `s` (or "-" for empty) into a new buffer; *n gets its length.
 * The buffer has a NUL after the bytes, for header values. */
static unsigned char *from_hex(const char *s, size_t *n)
{
    if (strcmp(s, "-") == 0) {
        *n = 0;
        return calloc(1, 1);
    }
    size_t len = strlen(s);
    if (len % 2) {
        fprintf(stderr, "interop_peer: odd hex length in '%s'\n", s);
        exit(2);
    }
    unsigned char *b = malloc(len / 2 + 1);
    if (!b)
        exit(2);
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            fprintf(stderr, "interop_peer: bad hex '%s'\n", s);
            exit(2);
        }
        b[i] = (unsigned char)v;
    }
    b[len / 2] = 0;
    *n = len / 2;
    return b;
}

static void print_msg(const msgbus_msg_t *m)
{
    const char *id = msgbus_msg_id(m);
    printf("%s ", id ? id : "-");
    size_t kl;
    const void *k = msgbus_msg_key(m, &kl);
    if (k)
        put_hex(stdout, k, kl);
    else
        fputc('-', stdout);
    fputc(' ', stdout);
    size_t pl;
    const void *p = msgbus_msg_payload(m, &pl);
    put_hex(stdout, p, pl);
    size_t nh = msgbus_msg_header_count(m);
    printf(" %zu", nh);
    for (size_t i = 0; i < nh; i++) {
        const char *name, *value;
        if (msgbus_msg_header_at(m, i, &name, &value) != MSGBUS_OK)
            die("header_at", MSGBUS_ERR_INTERNAL);
        fputc(' ', stdout);
        put_hex(stdout, name, strlen(name));
        fputc('=', stdout);
        put_hex(stdout, value, strlen(value));
    }
    printf(" %d\n", msgbus_msg_attempt(m));
}

static int produce(const char *url, const char *topic, const char *spec)
{
    FILE *f = fopen(spec, "r");
    if (!f) {
        perror(spec);
        return 2;
    }
    msgbus_t *bus;
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    if (e)
        die("open", e);
    static char line[1 << 20];
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        char *save = NULL;
        char *id = strtok_r(line, " ", &save);
        char *key = strtok_r(NULL, " ", &save);
        char *payload = strtok_r(NULL, " ", &save);
        char *nh = strtok_r(NULL, " ", &save);
        if (!id || !key || !payload || !nh) {
            fprintf(stderr, "interop_peer: malformed spec line\n");
            return 2;
        }
        size_t pl;
        unsigned char *pb = from_hex(payload, &pl);
        msgbus_msg_t *m;
        if ((e = msgbus_msg_new(&m, pb, pl)))
            die("msg_new", e);
        free(pb);
        if ((e = msgbus_msg_set_id(m, id)))
            die("set_id", e);
        if (strcmp(key, "-") != 0) {
            size_t kl;
            unsigned char *kb = from_hex(key, &kl);
            if ((e = msgbus_msg_set_key(m, kb, kl)))
                die("set_key", e);
            free(kb);
        }
        long cnt = strtol(nh, NULL, 10);
        for (long i = 0; i < cnt; i++) {
            char *kv = strtok_r(NULL, " ", &save);
            char *eq = kv ? strchr(kv, '=') : NULL;
            if (!eq) {
                fprintf(stderr, "interop_peer: malformed header\n");
                return 2;
            }
            *eq = 0;
            size_t a, b;
            unsigned char *name = from_hex(kv, &a), *value = from_hex(eq + 1, &b);
            if ((e = msgbus_msg_set_header(m, (char *)name, (char *)value)))
                die("set_header", e);
            free(name);
            free(value);
        }
        if ((e = msgbus_publish(bus, topic, m, NULL, NULL)))
            die("publish", e);
        msgbus_msg_free(m);
        n++;
    }
    fclose(f);
    size_t failed = 0;
    if ((e = msgbus_flush(bus, 30000, &failed)))
        die("flush", e);
    printf("published %zu\n", n);
    msgbus_close(bus);
    return 0;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int consume(const char *url, const char *topic, const char *group, long count,
                   long timeout_ms)
{
    msgbus_t *bus;
    msgbus_err_t e = msgbus_open(&bus, url, NULL);
    if (e)
        die("open", e);
    msgbus_sub_t *sub;
    if ((e = msgbus_subscribe(bus, topic, group, &sub)))
        die("subscribe", e);
    long got = 0, deadline = now_ms() + timeout_ms;
    while (got < count && now_ms() < deadline) {
        msgbus_msg_t *m;
        e = msgbus_receive(sub, 200, &m);
        if (e == MSGBUS_ERR_TIMEOUT)
            continue;
        if (e)
            die("receive", e);
        print_msg(m);
        if ((e = msgbus_ack(m)))
            die("ack", e);
        msgbus_msg_free(m);
        got++;
    }
    fflush(stdout);
    msgbus_sub_close(sub);
    msgbus_close(bus);
    return got == count ? 0 : 3;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "produce") == 0)
        return produce(argv[2], argv[3], argv[4]);
    if (argc == 7 && strcmp(argv[1], "consume") == 0)
        return consume(argv[2], argv[3], argv[4], strtol(argv[5], NULL, 10),
                       strtol(argv[6], NULL, 10));
    fprintf(stderr, "usage: interop_peer produce URL TOPIC SPECFILE\n"
                    "       interop_peer consume URL TOPIC GROUP COUNT TIMEOUT_MS\n");
    return 2;
}
