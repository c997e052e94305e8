/*
 * amqp_wire.c — AMQP 0-9-1 frames encoded by msgbus itself, so that the I/O
 * thread writes many publishes (or acks) with one send() instead of
 * rabbitmq-c's one send() per frame (three per publish).
 *
 * The bytes are exactly those rabbitmq-c 0.11 writes for amqp_basic_publish
 * and amqp_basic_ack (tests/unit/test_amqp_wire.c compares them): a frame
 * is type (u8), channel (u16), payload size (u32), payload, 0xCE; a publish
 * is a basic.publish method frame, a content header frame (class 60, weight
 * 0, body size, property flags, the properties present) and the body in
 * frames of at most frame_max - 8 bytes (none for an empty body). Only the
 * table encoder is rabbitmq-c's (amqp_encode_table, public API).
 *
 * Small bodies are copied into the buffer; larger ones are written from the
 * caller's memory (an iovec), which must stay put until mb_amqp_wire_write.
 */
#include "backends/amqp.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MB_WIRE_FRAME_END 0xCE
/* Bodies up to this size are copied; larger ones are referenced. */
#define MB_WIRE_COPY_MAX 2048

static bool mb_wire_reserve(struct mb_amqp_wire *w, size_t more)
{
    if (w->len + more <= w->cap)
        return true;
    size_t cap = w->cap ? w->cap : 16384;
    while (cap < w->len + more)
        cap *= 2;
    unsigned char *b = realloc(w->buf, cap);
    if (!b)
        return false;
    w->buf = b;
    w->cap = cap;
    return true;
}

/* Appends a segment: `len` bytes at `ext`, or at buf + off (ext NULL). */
static bool mb_wire_seg(struct mb_amqp_wire *w, const void *ext, size_t off, size_t len)
{
    if (!len)
        return true;
    if (w->nseg == w->segcap) {
        size_t c = w->segcap ? w->segcap * 2 : 64;
        struct mb_amqp_wseg *s = realloc(w->seg, c * sizeof *s);
        if (!s)
            return false;
        w->seg = s;
        w->segcap = c;
    }
    w->seg[w->nseg++] = (struct mb_amqp_wseg){ext, off, len};
    return true;
}

static void put8(unsigned char *p, size_t *o, uint8_t v)
{
    p[(*o)++] = v;
}

static void put16(unsigned char *p, size_t *o, uint16_t v)
{
    p[(*o)++] = (unsigned char)(v >> 8);
    p[(*o)++] = (unsigned char)v;
}

static void put32(unsigned char *p, size_t *o, uint32_t v)
{
    put16(p, o, (uint16_t)(v >> 16));
    put16(p, o, (uint16_t)v);
}

static void put64(unsigned char *p, size_t *o, uint64_t v)
{
    put32(p, o, (uint32_t)(v >> 32));
    put32(p, o, (uint32_t)v);
}

static void putbytes(unsigned char *p, size_t *o, const void *b, size_t n)
{
    if (n)
        memcpy(p + *o, b, n);
    *o += n;
}

/* A short string: false when longer than 255 bytes. */
static bool putshort(unsigned char *p, size_t *o, amqp_bytes_t s)
{
    if (s.len > UINT8_MAX)
        return false;
    put8(p, o, (uint8_t)s.len);
    putbytes(p, o, s.bytes, s.len);
    return true;
}

/* Starts a frame at w->len; returns the offset of its payload. */
static size_t mb_wire_frame_begin(struct mb_amqp_wire *w, uint8_t type, amqp_channel_t ch)
{
    size_t o = w->len;
    put8(w->buf, &o, type);
    put16(w->buf, &o, ch);
    return o + 4; /* the size is filled in by mb_wire_frame_end */
}

static void mb_wire_frame_end(struct mb_amqp_wire *w, size_t payload_at, size_t payload_len)
{
    size_t o = payload_at - 4;
    put32(w->buf, &o, (uint32_t)payload_len);
    o = payload_at + payload_len;
    put8(w->buf, &o, MB_WIRE_FRAME_END);
    w->len = o;
}

void mb_amqp_wire_reset(struct mb_amqp_wire *w)
{
    w->len = 0;
    w->nseg = 0;
    w->covered = 0;
    w->count = 0;
    w->done = 0;
}

void mb_amqp_wire_free(struct mb_amqp_wire *w)
{
    free(w->buf);
    free(w->seg);
    memset(w, 0, sizeof *w);
}

/* The properties as rabbitmq-c's amqp_encode_properties writes them for
 * class basic: flag word(s), then each present property in flag order. */
static int mb_wire_props(unsigned char *p, size_t *o, size_t end,
                         const amqp_basic_properties_t *pr)
{
    amqp_flags_t flags = pr->_flags;
    do {
        amqp_flags_t rest = flags >> 16;
        uint16_t part = (uint16_t)(flags & 0xFFFE);
        if (rest)
            part |= 1;
        if (*o + 2 > end)
            return AMQP_STATUS_BAD_AMQP_DATA;
        put16(p, o, part);
        flags = rest;
    } while (flags);
    /* Each short string is at most 256 bytes, a table is bounded by `end`:
     * check room before each. */
#define ROOM(n)                                                                                \
    do {                                                                                       \
        if (*o + (n) > end)                                                                    \
            return AMQP_STATUS_TABLE_TOO_BIG;                                                  \
    } while (0)
#define SHORT(flag, field)                                                                     \
    do {                                                                                       \
        if (pr->_flags & (flag)) {                                                             \
            ROOM(1 + pr->field.len);                                                           \
            if (!putshort(p, o, pr->field))                                                    \
                return AMQP_STATUS_BAD_AMQP_DATA;                                              \
        }                                                                                      \
    } while (0)
    SHORT(AMQP_BASIC_CONTENT_TYPE_FLAG, content_type);
    SHORT(AMQP_BASIC_CONTENT_ENCODING_FLAG, content_encoding);
    if (pr->_flags & AMQP_BASIC_HEADERS_FLAG) {
        amqp_bytes_t space = {end - *o, p + *o};
        size_t used = 0;
        ROOM(4);
        int st = amqp_encode_table(space, (amqp_table_t *)&pr->headers, &used);
        if (st < 0)
            return st;
        *o += used;
    }
    if (pr->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG) {
        ROOM(1);
        put8(p, o, pr->delivery_mode);
    }
    if (pr->_flags & AMQP_BASIC_PRIORITY_FLAG) {
        ROOM(1);
        put8(p, o, pr->priority);
    }
    SHORT(AMQP_BASIC_CORRELATION_ID_FLAG, correlation_id);
    SHORT(AMQP_BASIC_REPLY_TO_FLAG, reply_to);
    SHORT(AMQP_BASIC_EXPIRATION_FLAG, expiration);
    SHORT(AMQP_BASIC_MESSAGE_ID_FLAG, message_id);
    if (pr->_flags & AMQP_BASIC_TIMESTAMP_FLAG) {
        ROOM(8);
        put64(p, o, pr->timestamp);
    }
    SHORT(AMQP_BASIC_TYPE_FLAG, type);
    SHORT(AMQP_BASIC_USER_ID_FLAG, user_id);
    SHORT(AMQP_BASIC_APP_ID_FLAG, app_id);
    SHORT(AMQP_BASIC_CLUSTER_ID_FLAG, cluster_id);
#undef SHORT
#undef ROOM
    return AMQP_STATUS_OK;
}

/* Buffer bytes not yet in a segment become one before an external one. */
static bool mb_wire_ext(struct mb_amqp_wire *w, const void *ext, size_t n)
{
    if (!mb_wire_seg(w, NULL, w->covered, w->len - w->covered))
        return false;
    w->covered = w->len;
    return mb_wire_seg(w, ext, 0, n);
}

int mb_amqp_wire_publish(struct mb_amqp_wire *w, amqp_channel_t ch, amqp_bytes_t exchange,
                         amqp_bytes_t routing_key, bool mandatory, bool immediate,
                         const amqp_basic_properties_t *props, amqp_bytes_t body,
                         size_t frame_max)
{
    if (frame_max < 4096 || frame_max > UINT32_MAX)
        return AMQP_STATUS_INVALID_PARAMETER;
    if (exchange.len > UINT8_MAX || routing_key.len > UINT8_MAX)
        return AMQP_STATUS_BAD_AMQP_DATA;
    amqp_basic_properties_t none;
    if (!props) {
        memset(&none, 0, sizeof none);
        props = &none;
    }
    size_t start = w->len, start_nseg = w->nseg, start_covered = w->covered;
    /* The method and the header frame, each within frame_max. */
    if (!mb_wire_reserve(w, 2 * frame_max))
        return AMQP_STATUS_NO_MEMORY;
    size_t at = mb_wire_frame_begin(w, AMQP_FRAME_METHOD, ch), o = at;
    put32(w->buf, &o, AMQP_BASIC_PUBLISH_METHOD);
    put16(w->buf, &o, 0); /* ticket */
    putshort(w->buf, &o, exchange);
    putshort(w->buf, &o, routing_key);
    put8(w->buf, &o, (uint8_t)((mandatory ? 1 : 0) | (immediate ? 2 : 0)));
    mb_wire_frame_end(w, at, o - at);

    at = mb_wire_frame_begin(w, AMQP_FRAME_HEADER, ch);
    o = at;
    put16(w->buf, &o, AMQP_BASIC_CLASS);
    put16(w->buf, &o, 0); /* weight */
    put64(w->buf, &o, body.len);
    int st = mb_wire_props(w->buf, &o, at + frame_max - 8, props);
    if (st != AMQP_STATUS_OK) {
        w->len = start;
        return st;
    }
    mb_wire_frame_end(w, at, o - at);

    size_t chunk = frame_max - 8;
    for (size_t off = 0; off < body.len; off += chunk) {
        size_t n = body.len - off < chunk ? body.len - off : chunk;
        bool copy = n <= MB_WIRE_COPY_MAX;
        if (!mb_wire_reserve(w, 8 + (copy ? n : 0)))
            goto nomem;
        at = mb_wire_frame_begin(w, AMQP_FRAME_BODY, ch);
        const unsigned char *src = (const unsigned char *)body.bytes + off;
        if (copy) {
            memcpy(w->buf + at, src, n);
            mb_wire_frame_end(w, at, n);
            continue;
        }
        /* The frame's 7 header bytes, the caller's body, the end byte. */
        o = at - 4;
        put32(w->buf, &o, (uint32_t)n);
        w->len = at;
        if (!mb_wire_ext(w, src, n))
            goto nomem;
        w->buf[w->len++] = MB_WIRE_FRAME_END;
    }
    w->count++;
    return AMQP_STATUS_OK;
nomem:
    w->len = start;
    w->nseg = start_nseg;
    w->covered = start_covered;
    return AMQP_STATUS_NO_MEMORY;
}

int mb_amqp_wire_ack(struct mb_amqp_wire *w, amqp_channel_t ch, uint64_t tag, bool multiple)
{
    if (!mb_wire_reserve(w, 8 + 13))
        return AMQP_STATUS_NO_MEMORY;
    size_t at = mb_wire_frame_begin(w, AMQP_FRAME_METHOD, ch), o = at;
    put32(w->buf, &o, AMQP_BASIC_ACK_METHOD);
    put64(w->buf, &o, tag);
    put8(w->buf, &o, multiple ? 1 : 0);
    mb_wire_frame_end(w, at, o - at);
    w->count++;
    return AMQP_STATUS_OK;
}

size_t mb_amqp_wire_bytes(const struct mb_amqp_wire *w)
{
    size_t n = w->len - w->covered;
    for (size_t i = 0; i < w->nseg; i++)
        n += w->seg[i].len;
    return n - w->done;
}

/* Waits until `fd` takes more (the socket is non-blocking). A shutdown(2)
 * by mb_amqp_kick wakes it: the next send fails. */
static int mb_wire_wait_out(int fd)
{
    struct pollfd p = {fd, POLLOUT, 0};
    for (;;) {
        int rc = poll(&p, 1, -1);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return -errno;
    }
}

/* Writes from w->done on; `wait`: poll() while the socket is full, else
 * keep the progress in w->done and return -EAGAIN. */
static int mb_wire_send(struct mb_amqp_wire *w, int fd, bool wait)
{
    if (!mb_wire_seg(w, NULL, w->covered, w->len - w->covered))
        return -ENOMEM;
    w->covered = w->len;
    size_t i = 0, skip = w->done; /* the next segment and how much of it is written */
    while (i < w->nseg && skip >= w->seg[i].len) {
        skip -= w->seg[i].len;
        i++;
    }
    while (i < w->nseg) {
        struct iovec iov[64];
        int n = 0;
        for (size_t k = i; k < w->nseg && n < 64; k++, n++) {
            const struct mb_amqp_wseg *s = &w->seg[k];
            const unsigned char *b = s->ext ? s->ext : w->buf + s->off;
            size_t sk = k == i ? skip : 0;
            iov[n].iov_base = (void *)(b + sk);
            iov[n].iov_len = s->len - sk;
        }
        ssize_t r;
        if (n == 1) {
            r = send(fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
            r = sendmsg(fd, &mh, MSG_NOSIGNAL);
        }
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!wait)
                    return -EAGAIN;
                int e = mb_wire_wait_out(fd);
                if (e)
                    return e;
                continue;
            }
            return -errno;
        }
        size_t done = (size_t)r;
        w->done += done;
        while (i < w->nseg && done >= w->seg[i].len - skip) {
            done -= w->seg[i].len - skip;
            skip = 0;
            i++;
        }
        skip += done;
    }
    mb_amqp_wire_reset(w);
    return 0;
}

int mb_amqp_wire_write(struct mb_amqp_wire *w, int fd)
{
    return mb_wire_send(w, fd, true);
}

int mb_amqp_wire_write_now(struct mb_amqp_wire *w, int fd)
{
    return mb_wire_send(w, fd, false);
}
