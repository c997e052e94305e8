/*
 * msg.h — the layout of msgbus_msg_t, shared by the core and the backends
 * (backends read outgoing messages directly and build received ones).
 */
#ifndef MB_MSG_H
#define MB_MSG_H

#include <stdatomic.h>

#include "core/internal.h"

struct mb_header {
    char *name;
    char *value;
};

enum mb_msg_state {
    MB_MSG_APP = 0,      /* made by the application */
    MB_MSG_RECEIVED = 1, /* received, not yet settled */
    MB_MSG_ACKED = 2,
    MB_MSG_NACKED = 3
};

struct msgbus_msg {
    unsigned char *payload; /* never NULL: "" when empty */
    size_t len;
    unsigned char *key;     /* NULL: no key */
    size_t key_len;
    struct mb_header *headers;
    size_t nheaders, cap_headers;
    /* A hash index over the header names, built once a message has many
     * (a foreign record may carry hundreds of thousands): finding a name
     * stays O(1), so decoding one is linear. NULL below the threshold.
     * Code that reorders or removes headers calls mb_msg_headers_changed. */
    struct mb_header_index *hindex;
    char *id;               /* NULL only on a received message without one */
    int64_t timestamp;
    /* CloudEvents attributes of the message's own (malloc'd; NULL: none,
     * the bus's default on publish). */
    char *ce_type, *ce_source, *ce_subject;
    /* Bit i (0 type, 1 source, 2 subject) set: that string lives in a
     * backend's block (a Kafka batch, see ce_spare), not in a malloc of
     * its own, and is never freed alone. */
    unsigned char ce_inline;
    /* While a backend converts a record on its own thread: room in its
     * block for the CloudEvents strings (ce_spare_len bytes left), so they
     * are not malloc'd on that thread and freed on the application's. The
     * backend clears it before the message is handed out. */
    char *ce_spare;
    size_t ce_spare_len;

    /* Received messages only. topic and group point into the subscription,
     * which the message keeps alive by a reference. */
    const char *topic;
    const char *group;
    int attempt;
    _Atomic int state;      /* enum mb_msg_state */
    struct msgbus_sub *sub;
    /* Broker position, for the backend's own use. */
    int32_t partition;
    int64_t offset;
    /* What msgbus_msg_partition/offset/redelivered say: has_position is
     * set by a backend whose partition/offset above are the broker's
     * (Kafka); redelivered by one that knows (AMQP). */
    bool has_position;
    bool redelivered;
    uint64_t tag;
    void *backend_data;     /* released by the backend's ops->release */

    /* Payload storage not from malloc (a backend's buffer): the backend's
     * release hook frees it, msgbus_msg_free must not. */
    bool payload_borrowed;
    /* Payload stored right after the struct, in the same allocation
     * (msgbus_msg_new of a small payload): never freed on its own. */
    bool payload_inline;
    /* The struct itself lives in a backend's block (a Kafka batch): the
     * backend's release hook gives it back, msgbus_msg_free must not free
     * it, and must not touch it after the release. */
    bool embedded;
    /* Received messages: msgbus-invalid-id was recorded by this message's
     * own id check (mb_msg_received_id), so a header of that name from the
     * wire (an earlier hop's, or forged) must not replace it. Cleared when
     * that header is deleted (then a later one is the wire's). */
    bool own_invalid_id;
    /* Storage for an id of up to 36 characters (every UUIDv7), so a new
     * message is one allocation; m->id points here or to a malloc'd string. */
    char idbuf[37];

    struct msgbus_msg *next; /* link in the core's receive queue */

    /* Received messages only, for stats and hooks (stats.c): when
     * msgbus_receive handed it out (mb_mono_us; 0: not sampled for the
     * receive→settle latency), whether on_settle is still owed, and the
     * value on_receive returned. */
    int64_t recv_us;
    bool hook_armed;
    void *hook_span;

    /* References. The application's handle is one; the core takes more
     * while a nacked message waits for its retry or a dead letter waits for
     * its confirm (mb_msg_ref), and a backend that sends the payload in
     * place takes one until the broker's report (mb_msg_hold).
     * msgbus_msg_free drops one and frees at zero. */
    _Atomic int refs;
    /* Payloads replaced (msgbus_msg_set_payload) while a backend still
     * sends the old one in place: freed with the message. */
    struct mb_retired *retired;
};

/* Takes one more reference on a received message. */
static inline void mb_msg_ref(msgbus_msg_t *m)
{
    atomic_fetch_add(&m->refs, 1);
}

/* A backend that hands the payload to its client library in place (no
 * copy) holds the message until the library is done with it; release with
 * msgbus_msg_free. The payload bytes stay valid meanwhile, even if the
 * application replaces the payload or frees the message. */
static inline msgbus_msg_t *mb_msg_hold(const msgbus_msg_t *m)
{
    msgbus_msg_t *w = (msgbus_msg_t *)m; /* the count is not the message's value */
    atomic_fetch_add_explicit(&w->refs, 1, memory_order_relaxed);
    return w;
}

/* An empty message with no id (for received messages and clones). */
MB_HIDDEN msgbus_msg_t *mb_msg_alloc(void);
/* Initializes caller-provided storage as an empty message (refs 1) whose
 * struct msgbus_msg_free will not free (see `embedded`). */
MB_HIDDEN void mb_msg_init_embedded(msgbus_msg_t *m);
/* Deep copy of an application message (payload, key, headers, id,
 * timestamp); NULL on out of memory. */
MB_HIDDEN msgbus_msg_t *mb_msg_clone(const msgbus_msg_t *m);
/* Sets a header without the reserved-name check (for backends that decode
 * received headers, and for msgbus's own headers). */
MB_HIDDEN msgbus_err_t mb_msg_put_header(msgbus_msg_t *m, const char *name, size_t name_len,
                                         const char *value, size_t value_len);
/* Takes over `p` (malloc'd, `len` bytes; freed at once when len is 0) as
 * the payload, releasing the one before (a borrowed one is left to the
 * backend's release hook, as always). */
MB_HIDDEN void mb_msg_take_payload(msgbus_msg_t *m, unsigned char *p, size_t len);
/* cloudevents.c: the CloudEvents fields of a message. A header name
 * msgbus writes as a context attribute of some binding (ce_type,
 * cloudEvents_id, ce-time, ...: refused from applications). */
MB_HIDDEN bool mb_ce_reserved_header(const char *name);
MB_HIDDEN void mb_ce_free(msgbus_msg_t *m);
/* Copies type/source/subject into a message that has none; false on NOMEM. */
MB_HIDDEN bool mb_ce_copy(msgbus_msg_t *dst, const msgbus_msg_t *src);
/* Takes over an id (malloc'd string) without checks. */
MB_HIDDEN void mb_msg_take_id(msgbus_msg_t *m, char *id);
/* Sets the id of a message that has none to a copy of the `len` bytes at
 * `id` (no NUL needed), in idbuf when it fits, without checks (for
 * backends that decode received ids: no allocation for a UUID). */
MB_HIDDEN msgbus_err_t mb_msg_copy_id(msgbus_msg_t *m, const char *id, size_t len);
/* A copy of a key (binary, `len` may be 0: then a 1-byte allocation and
 * nothing read at `key`); NULL on out of memory. */
MB_HIDDEN void *mb_key_dup(const void *key, size_t len);

/* The trust boundary for ids and headers that arrive from a broker (every
 * backend's decode step calls these; docs/semantics.md, "What arrives").
 *
 * mb_msg_received_id: one id value as it arrived (`raw` may be NULL: a
 * null value; no NUL terminator needed). A value that passes the id rule
 * (1..255 bytes of printable ASCII, no spaces) becomes the message id.
 * Anything else is not an id: the id stays NULL and the raw value is kept,
 * %XX-escaped, in header msgbus-invalid-id. Called more than once for one
 * message (AMQP's message_id and cloudEvents:id, a repeated Kafka ce_id),
 * equal values give that id and values that differ give no id, all of
 * them listed (',' separated) in msgbus-invalid-id. Only NOMEM fails. */
#define MB_H_INVALID_ID "msgbus-invalid-id"
MB_HIDDEN msgbus_err_t mb_msg_received_id(msgbus_msg_t *m, const void *raw, size_t len);

/* mb_msg_received_ce: one CloudEvents attribute as it arrived, its name
 * without the binding's prefix (ce_, cloudEvents_, cloudEvents:, ce-; the
 * backend strips it and lowers an HTTP-style name's case). id goes through
 * mb_msg_received_id; type, source and subject become the message's when
 * they pass msgbus_msg_set_type's rule; time becomes the timestamp when it
 * is RFC 3339; specversion "1.0" is dropped; datacontenttype becomes the
 * content-type header when there is none. Anything else — an extension,
 * or a value that failed its rule — is kept as header ce_<name> through
 * mb_msg_received_header (so never dropped without a trace). Backends set
 * the broker's own timestamp BEFORE decoding attributes: the event's time
 * wins. Only NOMEM fails. */
MB_HIDDEN msgbus_err_t mb_msg_received_ce(msgbus_msg_t *m, const char *name, size_t name_len,
                                          const void *value, size_t value_len);

/* A structured-mode CloudEvent (content-type application/cloudevents+json,
 * parameters allowed) is unpacked in place: attributes as by
 * mb_msg_received_ce, payload = its data (JSON data as JSON text,
 * data_base64 decoded), content-type = its datacontenttype (or none). A
 * message with another content type is left alone. A payload that is not
 * a valid structured CloudEvent is left as it arrived, with header
 * msgbus-invalid-cloudevent saying why. Backends call it after decoding
 * headers. Only NOMEM fails. */
#define MB_H_INVALID_CE "msgbus-invalid-cloudevent"
MB_HIDDEN msgbus_err_t mb_msg_ce_unpack(msgbus_msg_t *m);

/* mb_msg_received_header: one header as it arrived. Kept when its name is
 * 1..255 bytes without NUL and its value has no NUL (`value` NULL: "");
 * otherwise left out and counted in header msgbus-invalid-headers (a
 * decimal count), never dropped without a trace. The two records of the
 * trust boundary are merged, never replaced, whatever order the wire gives:
 * a msgbus-invalid-headers from the wire adds its count (a value that is
 * not a count is itself counted), and a msgbus-invalid-id from the wire is
 * kept only while this message's own id check recorded none (it is
 * counted as an invalid header otherwise). Only NOMEM fails. */
#define MB_H_INVALID_HEADERS "msgbus-invalid-headers"
MB_HIDDEN msgbus_err_t mb_msg_received_header(msgbus_msg_t *m, const void *name, size_t name_len,
                                              const void *value, size_t value_len);

/* Drops the header index after headers were removed or reordered in
 * place (it is rebuilt when needed). */
MB_HIDDEN void mb_msg_headers_changed(msgbus_msg_t *m);

/* Approximate wire size (payload + key + headers + id), for size limits. */
MB_HIDDEN size_t mb_msg_wire_size(const msgbus_msg_t *m);

#endif
