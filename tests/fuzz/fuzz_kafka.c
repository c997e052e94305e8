/*
 * fuzz_kafka — the Kafka header conversion (src/backends/kafka*.c,
 * mb_kafka_decode_headers): what a foreign producer can put in a record's
 * headers.
 *
 * The input is a list of headers built with rd_kafka_headers_new /
 * rd_kafka_header_add, as librdkafka hands them over: names of any bytes up
 * to a NUL (or, picked by a byte, ce_id and msgbus's own names, so ce_id
 * repeats often), values of any bytes including NULs, empty, or NULL (a
 * null value).
 *
 * Invariants: only out of memory fails; the id is NULL or passes the id
 * rule; a non-NULL id is the value of every ce_id header (equal values give
 * that id, differing ones none); no ce_id, no id; every header is a name of
 * 1..255 bytes and a value, both C strings, ce_id never among them; a
 * header with a good name (last of its name) and a value without NUL is
 * kept byte for byte. Then the round trip: encoded again
 * (mb_kafka_encode_headers) and decoded, the same id and headers.
 */
#include <librdkafka/rdkafka.h>

#include "backends/kafka.h"
#include "core/msg.h"
#include "fuzz.h"

static const char *const special[] = {
    "ce_id",      "msgbus-attempt",  MB_H_INVALID_ID, MB_H_INVALID_HEADERS, "msgbus-key",
    "msgbus-timestamp-ms", "content-type", "ce_type", "ce_source", "ce_time",
    "ce_specversion",      "ce_subject",   "ce_datacontenttype", "ce_ext1", "ce_Type"};
#define NSPECIAL (sizeof special / sizeof *special)
#define MAX_HDRS 300

struct hdr {
    char *name;  /* C string */
    void *value; /* NULL: a null value */
    size_t len;
};

/* A header the Kafka binding reads as a CloudEvents context attribute:
 * ce_ and a lower-case context attribute name (ce_Type is a header). */
static bool ce_context(const char *name)
{
    if (strncmp(name, "ce_", 3) != 0 || !mb_ce_reserved_header(name))
        return false;
    for (const char *p = name; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = {data, size};
    static struct hdr h[MAX_HDRS];
    size_t n = 0;
    while (!fuzz_empty(&in) && n < MAX_HDRS) {
        uint8_t sel = fuzz_u8(&in);
        size_t len;
        if (sel < 0x50) {
            const char *s = special[sel % NSPECIAL];
            h[n].name = fuzz_cstr(s, strlen(s));
        } else {
            const uint8_t *p = fuzz_until(&in, 0, &len);
            h[n].name = fuzz_cstr(p, len > 300 ? 300 : len);
        }
        uint8_t vk = fuzz_u8(&in);
        if (vk < 0x20) {
            h[n].value = NULL, h[n].len = 0;
        } else {
            size_t want = ((size_t)fuzz_u8(&in) << 8 | fuzz_u8(&in)) % 601;
            if (want > in.n)
                want = in.n;
            h[n].value = fuzz_exact(in.p, want);
            h[n].len = want;
            in.p += want, in.n -= want;
        }
        n++;
    }

    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(n ? n : 1);
    FUZZ_CHECK(hdrs, "rd_kafka_headers_new");
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(rd_kafka_header_add(hdrs, h[i].name, -1, h[i].value, (ssize_t)h[i].len) ==
                       RD_KAFKA_RESP_ERR_NO_ERROR,
                   "rd_kafka_header_add");

    msgbus_msg_t *m = mb_msg_alloc();
    FUZZ_CHECK(m, "out of memory");
    msgbus_err_t e = mb_kafka_decode_headers(m, hdrs);
    FUZZ_CHECK(e == MSGBUS_OK, "mb_kafka_decode_headers: %d (%s)", e, msgbus_last_error());

    /* The id: NULL or good, and then the value of every ce_id. */
    const char *id = msgbus_msg_id(m);
    FUZZ_CHECK(!id || fuzz_id_ok(id), "id of %zu bytes breaks the id rule", strlen(id));
    size_t nce = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(h[i].name, "ce_id") != 0)
            continue;
        nce++;
        if (id)
            FUZZ_CHECK(h[i].value && h[i].len == strlen(id) && memcmp(h[i].value, id, h[i].len) == 0,
                       "id '%s' but ce_id #%zu is another value (%zu bytes)", id, nce, h[i].len);
    }
    if (!nce)
        FUZZ_CHECK(!id, "id '%s' without any ce_id", id);
    if (nce && !id)
        FUZZ_CHECK(msgbus_msg_header(m, MB_H_INVALID_ID), "ce_id refused but not kept in %s",
                   MB_H_INVALID_ID);

    /* ce_datacontenttype becomes the content-type header when there is
     * none yet (whichever comes first wins). */
    bool ce_dct = false;
    for (size_t i = 0; i < n; i++)
        ce_dct = ce_dct || strcmp(h[i].name, "ce_datacontenttype") == 0;

    /* The headers: C strings, good names, ce_id not among them. */
    size_t count = msgbus_msg_header_count(m);
    for (size_t i = 0; i < count; i++) {
        const char *name, *value;
        FUZZ_CHECK(msgbus_msg_header_at(m, i, &name, &value) == MSGBUS_OK, "header_at");
        size_t nl = strlen(name);
        FUZZ_CHECK(nl >= 1 && nl <= 255, "header name of %zu bytes", nl);
        FUZZ_CHECK(strcmp(name, "ce_id") != 0, "ce_id shown as a header");
        (void)strlen(value);
    }
    /* Kept byte for byte: a good name (not msgbus's, not a CloudEvents
     * context attribute, last of its name), a value without NUL. A
     * context attribute (ce_type, ce_time, ...: mb_ce_reserved_header)
     * becomes the message's type/source/subject/timestamp or content-type
     * when its value passes the rule, and stays a header otherwise;
     * ce_<ext> extensions and look-alikes (ce_Type) stay headers. */
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(h[i].name);
        if (!nl || nl > 255 || strncmp(h[i].name, "msgbus-", 7) == 0 ||
            ce_context(h[i].name) ||
            (strcmp(h[i].name, "content-type") == 0 && ce_dct) ||
            (h[i].value && memchr(h[i].value, 0, h[i].len)))
            continue;
        bool later = false;
        for (size_t j = i + 1; j < n && !later; j++)
            later = strcmp(h[j].name, h[i].name) == 0;
        if (later)
            continue;
        const char *got = msgbus_msg_header(m, h[i].name);
        FUZZ_CHECK(got && strlen(got) == h[i].len && (!h[i].len || memcmp(got, h[i].value, h[i].len) == 0),
                   "header '%s' (%zu bytes) not kept as sent", h[i].name, h[i].len);
    }

    /* Round trip: encoded for publishing (mb_kafka_encode_headers) and
     * decoded again, the same id and headers (a message forwarded or dead
     * lettered reads back as it was). */
    rd_kafka_headers_t *again = mb_kafka_encode_headers(m);
    FUZZ_CHECK(again, "mb_kafka_encode_headers");
    msgbus_msg_t *m2 = mb_msg_alloc();
    FUZZ_CHECK(m2 && mb_kafka_decode_headers(m2, again) == MSGBUS_OK, "decode of the encoded");
    const char *id2 = msgbus_msg_id(m2);
    FUZZ_CHECK(!id == !id2 && (!id || strcmp(id, id2) == 0), "id '%s' came back as '%s'",
               id ? id : "-", id2 ? id2 : "-");
    FUZZ_CHECK(msgbus_msg_header_count(m2) == count, "%zu headers came back as %zu", count,
               msgbus_msg_header_count(m2));
    for (size_t i = 0; i < count; i++) {
        const char *name, *value;
        msgbus_msg_header_at(m, i, &name, &value);
        const char *got = msgbus_msg_header(m2, name);
        FUZZ_CHECK(got && strcmp(got, value) == 0, "header '%s' came back as %s", name,
                   got ? got : "nothing");
    }
    msgbus_msg_free(m2);
    rd_kafka_headers_destroy(again);

    msgbus_msg_free(m);
    rd_kafka_headers_destroy(hdrs);
    for (size_t i = 0; i < n; i++) {
        free(h[i].name);
        fuzz_free_exact(h[i].value, h[i].len);
    }
    return 0;
}
