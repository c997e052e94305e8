/*
 * backend.h — the seam between the msgbus core and a broker backend.
 *
 * A backend is one file that fills one `struct mb_backend_ops` and is listed
 * once in registry.c. Nothing above src/backends/ names a broker.
 *
 * Division of labour (the "backends push, the core owns the queues" model):
 *  - The core owns everything the application touches: argument checks,
 *    message ids, the count of unconfirmed messages and QUEUE_FULL, delivery
 *    callbacks, flush, the receive queues, msgbus_poll and msgbus_fd.
 *  - A backend moves bytes. It pushes outcomes and received messages into
 *    the core with mb_bus_confirm() and mb_sub_push(), from any thread
 *    (usually its own I/O thread), and the core hands them to the
 *    application on the application's threads.
 *
 * Contract for each op is written next to it. Ops are called from
 * application threads, possibly concurrently, unless noted.
 */
#ifndef MB_BACKEND_H
#define MB_BACKEND_H

#include "core/internal.h"
#include "core/msg.h"
#include "core/url.h"

typedef struct json_t json_t; /* jansson's, for the stats ops */

/* Ops layout version: members up to `release` are valid for version 1,
 * up to `sub_stats` for version 2, up to `inspect` for version 3. */
#define MB_BACKEND_VERSION 3

/* Capability bits. */
#define MB_CAP_PASSTHROUGH_OPTIONS 0x1u /* the backend validates unknown URL
                                           options itself (librdkafka props) */

struct mb_backend;     /* each backend defines its own */
struct mb_backend_sub; /* each backend defines its own */
struct mb_confirm;     /* core-owned token for one published message */

enum mb_settle { MB_SETTLE_ACK = 0, MB_SETTLE_NACK = 1 };

/* A start position (subscription option start=, msgbus_group_reset), as
 * the core parsed it: durations are already turned into a time. */
enum mb_start_kind {
    MB_START_DEFAULT = 0, /* not given: as latest (a new group begins at the
                             end as of its first assignment) */
    MB_START_LATEST,
    MB_START_EARLIEST,
    MB_START_TIME, /* time_ms */
};
struct mb_start {
    enum mb_start_kind kind;
    int64_t time_ms; /* MB_START_TIME: ms since the Unix epoch */
};

/* What a backend guarantees as configured (ops->capabilities). bits: MSGBUS_CAP_*.
 * why_not[i]: for bit i not claimed, a static sentence saying why ("RabbitMQ
 * round-robins a queue over its consumers"), shown by require= errors and
 * msgbus_caps_json; NULL gives a generic text. */
/* The why_not[] slot of capability bit `cap` (one MSGBUS_CAP_* bit). */
#define MB_CAP_INDEX(cap) (__builtin_ctzll((unsigned long long)(cap)))

struct mb_caps {
    uint64_t bits;
    size_t max_message; /* bytes; 0: no limit of its own */
    const char *why_not[64];
};

struct mb_backend_ops {
    int version;                /* MB_BACKEND_VERSION */
    const char *scheme;         /* name reported by msgbus_backend() */
    const char *const *schemes; /* URL schemes served, NULL-terminated */
    unsigned caps;              /* MB_CAP_* */
    /* URL option keys the backend understands, NULL-terminated. Used for
     * "unknown option" errors and their "did you mean" suggestions. */
    const char *const *options;
    /* Environment prefix for options (e.g. "KAFKA" → MSGBUS_KAFKA_*) and
     * the separator '_' in variable names turns into ('.' or '_'). */
    const char *env_prefix;
    char env_separator;

    /* Connects. Must look up every option it supports with mb_url_opt*()
     * BEFORE any network I/O and then call mb_url_check_unused(url, NULL)
     * (the core passes its own options as used), so a typo fails fast.
     * `bus` is the handle to pass to mb_bus_confirm. Blocks up to the
     * backend's connect timeout. Required. */
    msgbus_err_t (*open)(msgbus_t *bus, struct mb_url *url, struct mb_backend **out);

    /* Tears down. Called after every subscription was unsubscribed and
     * after the core's flush at close: for each message still unconfirmed
     * the backend must call mb_bus_confirm(..., MSGBUS_ERR_CLOSED, ...)
     * before returning (or its real outcome, if known). Required. */
    void (*close)(struct mb_backend *be);

    /* Sends `m` to `topic` asynchronously. The backend copies what it needs
     * before returning; it must not keep `m`. `token` is NULL when the
     * application gave no delivery callback — the confirm is still owed.
     * On MSGBUS_OK the backend owns `token` and must call
     * mb_bus_confirm(bus, token, …) exactly once,
     * later, from any thread, with the real outcome. On an error return the
     * token is untouched and no confirm may follow. `m` has an id when the
     * application published it (msgbus_publish gives an id-less one a fresh
     * id); a dead letter of a foreign message may have none (m->id NULL):
     * then the backend writes no id. A message the backend cannot encode
     * is refused here (MSGBUS_ERR_INVALID / _TOO_LARGE naming the limit)
     * and never breaks the connection. Never blocks on the network.
     * Required. */
    msgbus_err_t (*publish)(struct mb_backend *be, const char *topic, const msgbus_msg_t *m,
                            struct mb_confirm *token);

    /* Pushes out anything batched locally; the core then waits for the
     * confirms itself. Optional (NULL: nothing to push). */
    msgbus_err_t (*flush)(struct mb_backend *be, int timeout_ms);

    /* Creates topic and group storage (see msgbus_declare). group may be
     * NULL: the topic only. Blocks. Required. */
    msgbus_err_t (*declare)(struct mb_backend *be, const char *topic, const char *group);

    /* Starts a subscription for core handle `sub` (mb_sub_topic/group say
     * on what; group NULL: broadcast). Returns once established. From then
     * on the backend pushes messages with mb_sub_push(sub, …). Required. */
    msgbus_err_t (*subscribe)(struct mb_backend *be, msgbus_sub_t *sub, struct mb_backend_sub **out);

    /* Stops a subscription: after it returns the backend never pushes to
     * the sub again. Unsettled messages go back to the broker for
     * redelivery. Messages the core still holds for the application are
     * released by the core (see ops->release), never settled. Required. */
    void (*unsubscribe)(struct mb_backend_sub *bs);

    /* Acks or nacks a received message of this subscription. Called at
     * most once per message, never after unsubscribe started. Never blocks
     * on the network. Required. */
    msgbus_err_t (*settle)(struct mb_backend_sub *bs, msgbus_msg_t *m, enum mb_settle how);

    /* Frees m->backend_data (and a borrowed payload) when the message is
     * freed. May be called after unsubscribe and after close (the backend
     * must keep what release needs alive by reference counts of its own).
     * Optional. */
    void (*release)(msgbus_msg_t *m);

    /* ---- version 2: observability (docs/stats.md) ---- */

    /* Adds the backend's own figures to `detail`, a JSON object that
     * becomes the "detail" member of msgbus_stats_json (Kafka: the last
     * librdkafka statistics JSON as one object under "librdkafka"; AMQP:
     * its channels and confirm window). Called on the thread asking for
     * stats, concurrently with every other op; never blocks on the
     * network. Optional. */
    void (*stats)(struct mb_backend *be, json_t *detail);

    /* Fills in the subscription's lag on `sub`, the JSON object of this
     * subscription in msgbus_stats_json: "lag" (integer: messages
     * published and not yet consumed by its group; leave it out when not
     * known) and backend detail under "lag_detail" (Kafka: "partitions", an
     * array of {partition, high_watermark, committed, lag}; AMQP: "queue",
     * "ready", "unacked"). May ask the broker, bounded by `timeout_ms`.
     * Called concurrently with every other op except unsubscribe of this
     * sub. Optional (no lag reported). */
    void (*sub_stats)(struct mb_backend_sub *bs, json_t *sub, int timeout_ms);

    /* ---- version 3: positions, pause, inspection, capabilities ---- */

    /* Fills `out` (zeroed by the caller) with what this bus guarantees as
     * configured. Called once, right after open; the core keeps the answer
     * (msgbus_caps, require=, and the checks below). Required. */
    void (*capabilities)(struct mb_backend *be, struct mb_caps *out);

    /* Stops (paused true) or restarts fetching for a subscription. Must
     * not drop or settle anything: unsettled messages stay unsettled and
     * settleable. The core already holds back what it has queued. Never
     * blocks on the network. Called with the subscription open, never
     * concurrently with itself for one sub. Optional (NULL: the core only
     * holds back its queue, and the backend keeps filling it up to its
     * prefetch window). */
    msgbus_err_t (*pause)(struct mb_backend_sub *bs, bool paused);

    /* Moves `group`'s position on `topic` to `to` (never MB_START_DEFAULT;
     * EARLIEST/TIME only asked of a backend claiming MSGBUS_CAP_REPLAY).
     * MSGBUS_ERR_STATE (naming how many) while the group has an active
     * member, MSGBUS_ERR_NOT_FOUND when the topic does not exist (and for
     * a group that does not exist where the backend cannot create it at a
     * position; see msgbus_group_reset).
     * Blocks up to timeout_ms. Optional (NULL: UNSUPPORTED). */
    msgbus_err_t (*group_reset)(struct mb_backend *be, const char *topic, const char *group,
                                const struct mb_start *to, int timeout_ms);

    /* Fills `out` ({"topics": [...]}, see msgbus_inspect_json) for `topic`
     * (NULL: every topic, or MSGBUS_ERR_UNSUPPORTED) and `group` (NULL:
     * every group it can list). Blocks up to timeout_ms. Optional (NULL:
     * UNSUPPORTED). */
    msgbus_err_t (*inspect)(struct mb_backend *be, const char *topic, const char *group,
                            int timeout_ms, json_t *out);
};

/* ---- services the core gives backends (callable from any thread) ---- */

/* Reports the outcome of one published message. `token` as handed to
 * ops->publish. `error` (may be NULL on success) is copied. */
MB_HIDDEN void mb_bus_confirm(msgbus_t *bus, struct mb_confirm *token, msgbus_err_t status,
                              const char *error);

/* Reports success for `n` published messages at once: as n calls of
 * mb_bus_confirm(bus, tokens[i], MSGBUS_OK, NULL) (NULL entries allowed),
 * but with one lock and at most one wake-up for the whole batch. */
MB_HIDDEN void mb_bus_confirm_batch(msgbus_t *bus, struct mb_confirm *const *tokens, size_t n);

/* Message id and topic the token was published with (for backends that
 * need them when the confirm arrives; valid until mb_bus_confirm). */
MB_HIDDEN const char *mb_confirm_topic(const struct mb_confirm *token);
/* A backend that sends a message's payload in place holds the message
 * (mb_msg_hold) until the broker's report, keeping it on the token; unhold
 * gives it back (NULL: none, or no token) for the backend to release with
 * msgbus_msg_free before it reports the outcome. */
MB_HIDDEN void mb_confirm_hold(struct mb_confirm *token, msgbus_msg_t *held);
MB_HIDDEN msgbus_msg_t *mb_confirm_unhold(struct mb_confirm *token);

/* A new received message for subscription `sub`: topic and group set from
 * the sub, attempt = 1, state RECEIVED, holding a reference on the sub.
 * The backend fills payload, key, headers, id, timestamp, position. */
MB_HIDDEN msgbus_msg_t *mb_msg_new_received(msgbus_sub_t *sub);

/* For a backend that takes the references on the sub for a whole batch at
 * once (mb_sub_ref_batch), instead of one atomic operation per message on
 * a counter the application's thread decrements as it frees messages.
 * Each reference taken must end in exactly one message made by
 * mb_msg_new_received_in or one mb_sub_unref_batch. */
MB_HIDDEN void mb_sub_ref_batch(msgbus_sub_t *sub, long n);
MB_HIDDEN void mb_sub_unref_batch(msgbus_sub_t *sub, long n);
/* A new received message as mb_msg_new_received, without taking the
 * reference (see above), made in `storage` when not NULL (the backend's
 * own block, which its release hook must keep alive until it is called
 * for this message) instead of a malloc of its own. */
MB_HIDDEN msgbus_msg_t *mb_msg_new_received_in(msgbus_sub_t *sub, msgbus_msg_t *storage);

/* Hands received messages to the application: `first` .. a list linked by
 * ->next (NULL-terminated), `count` long. One lock and at most one wake-up
 * per call, so push whole batches. */
MB_HIDDEN void mb_sub_push(msgbus_sub_t *sub, msgbus_msg_t *first, size_t count);

/* Drops messages the core still queues for the application (not yet
 * received) for which `pred` returns true; they are released, not settled.
 * For a backend that learns they belong to a partition it lost. Returns how
 * many were dropped. */
MB_HIDDEN size_t mb_sub_drop(msgbus_sub_t *sub, bool (*pred)(const msgbus_msg_t *, void *),
                             void *arg);

MB_HIDDEN const char *mb_sub_topic(const msgbus_sub_t *sub);
MB_HIDDEN const char *mb_sub_group(const msgbus_sub_t *sub); /* NULL: broadcast */
/* Where the subscription starts (option start=). A backend claiming
 * MSGBUS_CAP_REPLAY applies it to a group with no position yet and to a
 * broadcast subscriber; the core has already refused EARLIEST/TIME for one
 * that does not claim it. */
MB_HIDDEN const struct mb_start *mb_sub_start(const msgbus_sub_t *sub);
/* Parses a start position ("latest", "earliest", RFC 3339, "-15m"); a
 * duration is taken back from now. MSGBUS_ERR_CONFIG naming `what` and the
 * text when malformed. */
MB_HIDDEN msgbus_err_t mb_start_parse(const char *what, const char *text, struct mb_start *out);

/* The bus's redacted URL, for messages. */
MB_HIDDEN const char *mb_bus_url(const msgbus_t *bus);
/* The monotonic time (mb_mono_ms) by which a backend's part of closing
 * must be done: while msgbus_close runs, what is left of its one deadline
 * (close_timeout_ms shared by every step); otherwise now + `timeout_ms`
 * (msgbus_sub_close on its own). */
MB_HIDDEN int64_t mb_bus_close_deadline(const msgbus_t *bus, long timeout_ms);

/* ---- CloudEvents on the wire (src/core/cloudevents.c, docs/interop.md) ----
 * Every backend writes a message as a CloudEvent of its binding, in the
 * mode of the bus option cloudevents=:
 *   MB_CE_BINARY      the attributes of mb_ce_attrs as the binding's
 *                     headers (Kafka ce_*, AMQP cloudEvents_*), the
 *                     content type as the binding's content type, the
 *                     payload as is; each header ce_<ext> that
 *                     mb_ce_extension_header accepts as an extension
 *                     attribute under the binding's prefix;
 *   MB_CE_STRUCTURED  the payload is mb_ce_structured's JSON with content
 *                     type application/cloudevents+json; the id still
 *                     travels where the backend's own id needs it (AMQP
 *                     message_id); ce_<ext> headers are inside the JSON;
 *   MB_CE_OFF         only the id, as before CloudEvents (Kafka ce_id,
 *                     AMQP message_id), so the inbox keeps working.
 * On receive, a backend hands every attribute under any prefix it reads
 * to mb_msg_received_ce and then calls mb_msg_ce_unpack (core/msg.h). */
enum mb_ce_mode { MB_CE_BINARY = 0, MB_CE_STRUCTURED, MB_CE_OFF };
/* 9999-12-31T23:59:59.999Z: RFC 3339 has no later time. */
#define MB_CE_MAX_TIME_MS 253402300799999LL
MB_HIDDEN enum mb_ce_mode mb_bus_ce_mode(const msgbus_t *bus);
/* The attribute values to write for `m` published to `topic`. Strings
 * point into m, the bus or topic (valid during the publish call). */
struct mb_ce_attrs {
    const char *id;              /* NULL: none (write none) */
    const char *source;          /* m's own, else the bus's ce_source */
    const char *type;            /* m's own, else the topic */
    const char *subject;         /* NULL: none */
    char time[32];               /* RFC 3339 (UTC, ms) of m->timestamp; ""
                                    past MB_CE_MAX_TIME_MS (write no time) */
    const char *datacontenttype; /* the content-type header, NULL: none */
};
MB_HIDDEN void mb_ce_attrs(const msgbus_t *bus, const char *topic, const msgbus_msg_t *m,
                           struct mb_ce_attrs *out);
/* True when the `n` bytes at `name` (no prefix, any case) are a context
 * attribute msgbus writes itself: id, specversion, type, source, subject,
 * time, datacontenttype. */
MB_HIDDEN bool mb_ce_core_attr(const char *name, size_t n);
/* True when header `name` is ce_<ext> with <ext> a CloudEvents extension
 * name (a-z 0-9, not a context attribute msgbus writes): *attr = <ext>. */
MB_HIDDEN bool mb_ce_extension_header(const char *name, const char **attr);
/* The structured form of `m` (a JSON text to free(), *len bytes). */
MB_HIDDEN msgbus_err_t mb_ce_structured(const msgbus_t *bus, const char *topic,
                                        const msgbus_msg_t *m, char **json, size_t *len);

/* ---- observability services (src/core/stats.c) ---- */

/* The bus connection changed state (any thread). `reason` (printf format)
 * says why in words an operator understands ("all brokers down",
 * "connection lost: socket closed"). A report of the state it is already
 * in with the same reason is ignored, so backends may report freely. The
 * core records it for msgbus_state, counts reconnects (RECONNECTING or
 * DOWN followed by UP) and queues the event for the state callback. */
MB_HIDDEN void mb_bus_state(msgbus_t *bus, msgbus_state_t state, const char *reason, ...)
    MB_PRINTF(3, 4);
/* The same for one subscription ("rebalanced: assigned 3 partitions",
 * "queue deleted"). */
MB_HIDDEN void mb_sub_state(msgbus_sub_t *sub, msgbus_state_t state, const char *reason, ...)
    MB_PRINTF(3, 4);
/* One publish→confirm latency in microseconds (`token` as handed to
 * ops->publish, NULL allowed), recorded into the bus's
 * histogram. Call it from the thread that confirms (usually the backend's
 * I/O thread), once per confirmed message when the backend knows when the
 * message was published (Kafka: rd_kafka_message_latency). A relaxed
 * atomic add, no lock, no allocation. The dead letters msgbus publishes
 * itself are left out, as they are of the `confirmed` count. */
MB_HIDDEN void mb_bus_confirm_latency(msgbus_t *bus, const struct mb_confirm *token, int64_t us);
/* Monotonic clock in microseconds, for backends timing their messages. */
MB_HIDDEN int64_t mb_mono_us(void);

/* ---- registry ---- */

/* The backend serving `scheme`, or NULL. */
MB_HIDDEN const struct mb_backend_ops *mb_backend_find(const char *scheme);
/* "kafka, amqp, amqps, mem" — the schemes compiled in, for messages. */
MB_HIDDEN const char *mb_backend_schemes(void);

#endif
