/*
 * util.c — clocks, string duplication, UUIDv7 ids, a per-thread random
 * generator and the name checks shared by the public API.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "core/internal.h"

int64_t mb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mb_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mb_deadline(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000;
    }
}

void mb_thread_name(const char *name)
{
    (void)pthread_setname_np(pthread_self(), name);
}

int mb_cond_init(pthread_cond_t *c)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}

char *mb_strdup(const char *s)
{
    return s ? mb_memdup(s, strlen(s) + 1) : NULL;
}

char *mb_strndup(const char *s, size_t n)
{
    if (!s)
        return NULL;
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

void *mb_memdup(const void *p, size_t n)
{
    if (!p)
        return NULL;
    void *q = malloc(n ? n : 1);
    if (q && n)
        memcpy(q, p, n);
    return q;
}

/* Per-thread state of the id generator, in one thread-local block: in a
 * shared library each thread-local access can cost a __tls_get_addr call,
 * so the hot paths take the block's address once.
 * xoshiro256** seeded from getrandom: ids need uniqueness, not secrecy, and
 * a syscall per id would cost more than the rest of publish. */
struct mb_tls {
    uint64_t rng[4];
    bool seeded;
    int64_t last_ms;
    unsigned seq;
};
static _Thread_local struct mb_tls mb_tls;

static inline uint64_t mb_rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* Seeds the generator of this thread: once per thread, out of the way of
 * the hot path. */
__attribute__((noinline, cold)) static void mb_seed(struct mb_tls *t)
{
    uint64_t *s = t->rng;
    if (getrandom(s, sizeof t->rng, 0) != (ssize_t)sizeof t->rng) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32);
        s[1] = (uint64_t)(uintptr_t)&ts;
        s[2] = 0x9e3779b97f4a7c15ull;
        s[3] = (uint64_t)pthread_self();
    }
    t->seeded = true;
}

/* Inline, so that callers holding the block's address do not look it up
 * again (an out-of-line copy for &mb_tls alone did, twice per draw). */
static inline uint64_t mb_rand(struct mb_tls *t)
{
    uint64_t *s = t->rng;
    if (__builtin_expect(!t->seeded, 0))
        mb_seed(t);
    uint64_t result = mb_rotl(s[1] * 5, 7) * 9;
    uint64_t x = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= x;
    s[3] = mb_rotl(s[3], 45);
    return result;
}

uint64_t mb_random64(void)
{
    return mb_rand(&mb_tls);
}

/* The 8 lowercase hex digits of x as the bytes of a 64-bit word in memory
 * order: each nibble spread to a byte, then '0' + n, plus 'a' - '0' - 10
 * where n > 9 — no table and no branch (ids are made per message). */
static inline uint64_t mb_hex8(uint32_t x)
{
    uint64_t v = x;
    v = (v | (v << 16)) & 0x0000ffff0000ffffull;
    v = (v | (v << 8)) & 0x00ff00ff00ff00ffull;
    v = (v | (v << 4)) & 0x0f0f0f0f0f0f0f0full; /* first digit in the top byte */
    uint64_t letters = ((v + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull;
    v += 0x3030303030303030ull + letters * ('a' - '0' - 10);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return v;
#else
    return __builtin_bswap64(v);
#endif
}

/* Writes the 16 bytes hi (big-endian) then lo as 32 hex digits. */
static inline void mb_hex32(char hex[32], uint64_t hi, uint64_t lo)
{
    uint64_t w[4] = {mb_hex8((uint32_t)(hi >> 32)), mb_hex8((uint32_t)hi),
                     mb_hex8((uint32_t)(lo >> 32)), mb_hex8((uint32_t)lo)};
    memcpy(hex, w, 32);
}

/* UUIDv7 (RFC 9562): 48-bit ms timestamp, version 7, 12 bits of sub-ms
 * sequence (monotonic within a thread), variant 10, 62 random bits.
 * `ms` is the wall clock (mb_now_ms) the caller read. */
void mb_uuid7_at(char out[37], int64_t ms)
{
    struct mb_tls *t = &mb_tls;
    /* Hide where t points, or GCC computes &mb_tls (a __tls_get_addr
     * call in a shared library) again inside each inlined mb_rand. */
    __asm__("" : "+r"(t));
    if (ms <= t->last_ms) {
        /* Same millisecond (or the clock stepped back): count up; when the
         * 12-bit counter runs out, borrow the next millisecond (RFC 9562
         * §6.2 allows this) so ids from one thread always increase. */
        if (++t->seq > 0xfff) {
            t->seq = 0;
            t->last_ms++;
        }
        ms = t->last_ms;
    } else {
        t->last_ms = ms;
        t->seq = (unsigned)(mb_rand(t) & 0x3ff); /* leave room to count up */
    }
    uint64_t r = mb_rand(t);
    /* The 16 bytes as two big-endian halves: ms(48) ver(4) seq(12) and
     * var(2) rand(62). */
    uint64_t hi = ((uint64_t)ms << 16) | 0x7000u | (t->seq & 0xfffu);
    uint64_t lo = (r & 0x3fffffffffffffffull) | 0x8000000000000000ull;
    char hex[32];
    mb_hex32(hex, hi, lo);
    /* xxxxxxxx-xxxx-7xxx-yxxx-xxxxxxxxxxxx: 8, 4, 4, 4, 12 digits. */
    memcpy(out, hex, 8);
    out[8] = '-';
    memcpy(out + 9, hex + 8, 4);
    out[13] = '-';
    memcpy(out + 14, hex + 12, 4);
    out[18] = '-';
    memcpy(out + 19, hex + 16, 4);
    out[23] = '-';
    memcpy(out + 24, hex + 20, 12);
    out[36] = '\0';
}

void mb_uuid7(char out[37])
{
    mb_uuid7_at(out, mb_now_ms());
}

/* Characters allowed in topic and group names: A-Z a-z 0-9 . _ - (a table:
 * this runs on every publish). */
static const unsigned char mb_name_chars[256] = {
    ['-'] = 1, ['.'] = 1, ['_'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

bool mb_valid_name(const char *s, size_t max)
{
    if (!s || !*s)
        return false;
    const unsigned char *p = (const unsigned char *)s;
    size_t n = 0;
    while (mb_name_chars[p[n]])
        n++;
    if (p[n] != '\0' || n > max)
        return false;
    /* Names one of the brokers refuses, refused everywhere so a name valid
     * on one backend is valid on all: Kafka rejects the topics "." and "..",
     * RabbitMQ reserves names starting with "amq." for itself. */
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    return strncmp(s, "amq.", 4) != 0;
}

bool mb_valid_header_name(const char *s)
{
    if (!s || !*s)
        return false;
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == ':'))
            return false;
    }
    return n <= MSGBUS_MAX_HEADER_NAME;
}

size_t mb_ascii_span(const unsigned char *p, size_t n, unsigned char lo)
{
    /* Every received message's id, type and source go through here. A word
     * is all good when no byte has its high bit set, none is below `lo`
     * and none is 0x7f (the classic has-less / has-zero byte tests, which
     * may only err towards "bad"); a bad word is looked at byte by byte. */
    const uint64_t ones = 0x0101010101010101u, high = 0x8080808080808080u;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t del = w ^ (ones * 0x7f);
        if ((w & high) | ((w - ones * lo) & ~w & high) | ((del - ones) & ~del & high))
            break;
    }
    while (i < n && p[i] >= lo && p[i] < 0x7f)
        i++;
    return i;
}

bool mb_valid_id_bytes(const void *s, size_t len)
{
    if (!len || len > MSGBUS_MAX_ID)
        return false;
    return mb_ascii_span(s, len, 0x21) == len;
}

bool mb_secret_name(const char *name)
{
    /* Words that mark a secret in option names of msgbus, librdkafka
     * (sasl.password, ssl.key.password, ssl.keystore.password,
     * sasl.oauthbearer.client.secret, sasl.oauthbearer.config, ssl.key.pem)
     * and rabbitmq-c users' habits (pass, token, api key). Over-redacting a
     * harmless value costs a debugging minute; under-redacting leaks. */
    static const char *const words[] = {"pass",    "secret",  "token",  "credential",
                                        "apikey",  "api_key", "api.key", "private",
                                        "pem",     "oauthbearer.config", "jaas", NULL};
    if (!name)
        return false;
    /* Case-insensitive search over the whole name, however long. */
    for (const char *p = name; *p; p++)
        for (size_t i = 0; words[i]; i++) {
            size_t k = 0;
            while (words[i][k] && p[k] &&
                   (p[k] >= 'A' && p[k] <= 'Z' ? p[k] - 'A' + 'a' : p[k]) == words[i][k])
                k++;
            if (!words[i][k])
                return true;
        }
    return false;
}

bool mb_valid_id(const char *s)
{
    if (!s || !*s)
        return false;
    size_t n = 0;
    for (; s[n]; n++)
        if ((unsigned char)s[n] <= 0x20 || (unsigned char)s[n] >= 0x7f)
            return false;
    return n <= MSGBUS_MAX_ID;
}

MSGBUS_API const char *msgbus_version(void)
{
    return MSGBUS_VERSION_STRING;
}
