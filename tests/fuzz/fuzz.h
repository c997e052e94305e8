/*
 * fuzz.h — what the libFuzzer targets in tests/fuzz share: a reader that
 * takes bytes, lengths and choices from the input, and FUZZ_CHECK, which
 * aborts (a crash libFuzzer reports and minimizes) when an invariant the
 * docs promise does not hold. Targets link the library's objects directly,
 * so they reach the internal mb_* functions the shared object hides.
 */
#ifndef MB_FUZZ_H
#define MB_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                                       \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "\nfuzz invariant failed at %s:%d: %s\n  ", __FILE__, \
                    __LINE__, #cond);                                               \
            fprintf(stderr, __VA_ARGS__);                                           \
            fprintf(stderr, "\n");                                                  \
            abort();                                                                \
        }                                                                           \
    } while (0)

struct fuzz_in {
    const uint8_t *p;
    size_t n;
};

static inline bool fuzz_empty(const struct fuzz_in *in)
{
    return in->n == 0;
}

/* One byte (0 once the input is used up). */
static inline uint8_t fuzz_u8(struct fuzz_in *in)
{
    if (!in->n)
        return 0;
    in->n--;
    return *in->p++;
}

static inline uint32_t fuzz_u32(struct fuzz_in *in)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v = v << 8 | fuzz_u8(in);
    return v;
}

static inline uint64_t fuzz_u64(struct fuzz_in *in)
{
    return (uint64_t)fuzz_u32(in) << 32 | fuzz_u32(in);
}

/* Up to `max` bytes, its length from one input byte; *len gets the count
 * (may be less than asked at the end of the input). Points into the input. */
static inline const uint8_t *fuzz_bytes(struct fuzz_in *in, size_t max, size_t *len)
{
    size_t want = fuzz_u8(in);
    if (want > max)
        want = max;
    if (want > in->n)
        want = in->n;
    const uint8_t *p = in->p;
    in->p += want;
    in->n -= want;
    *len = want;
    return p;
}

/* The bytes up to the next `sep` (or the end); the separator is consumed. */
static inline const uint8_t *fuzz_until(struct fuzz_in *in, uint8_t sep, size_t *len)
{
    const uint8_t *p = in->p;
    const uint8_t *e = memchr(p, sep, in->n);
    size_t k = e ? (size_t)(e - p) : in->n;
    in->p += k + (e ? 1 : 0);
    in->n -= k + (e ? 1 : 0);
    *len = k;
    return p;
}

/* A heap copy of `len` bytes in an allocation of exactly `len` bytes (none
 * to spare), so ASan reports a read one past the end. A zero length gives
 * the end of a 1-byte block: ASan's malloc(0) is a readable 1-byte chunk,
 * which would hide exactly the bug of msgbus_msg_set_key(m, p, 0) reading
 * p[0]. Free with fuzz_free_exact(p, len). */
static inline void *fuzz_exact(const void *p, size_t len)
{
    char *c = malloc(len ? len : 1);
    if (!c)
        abort();
    if (!len)
        return c + 1;
    memcpy(c, p, len);
    return c;
}

static inline void fuzz_free_exact(void *p, size_t len)
{
    if (p)
        free(len ? p : (char *)p - 1);
}

/* A NUL-terminated heap copy. */
static inline char *fuzz_cstr(const void *p, size_t len)
{
    char *c = malloc(len + 1);
    if (!c)
        abort();
    if (len)
        memcpy(c, p, len);
    c[len] = '\0';
    return c;
}

/* Whether `s` is a C string of exactly `len` bytes. */
static inline bool fuzz_cstr_len(const char *s, size_t len)
{
    return s && strlen(s) == len;
}

/* msgbus's id rule, written again here on purpose (an oracle independent
 * of mb_valid_id): 1..255 bytes of printable ASCII without spaces. */
static inline bool fuzz_id_bytes_ok(const void *id, size_t n)
{
    const unsigned char *p = id;
    for (size_t i = 0; i < n; i++)
        if (p[i] <= 0x20 || p[i] >= 0x7f)
            return false;
    return n >= 1 && n <= 255;
}

static inline bool fuzz_id_ok(const char *id)
{
    return fuzz_id_bytes_ok(id, strlen(id));
}

#endif
