/*
 * msgbus.h — the whole public contract of libmsgbus: buses, messages,
 * publishing, subscriptions, errors and logging.
 *
 * One publish/subscribe API over swappable broker backends, chosen at run
 * time by a URL (or $MSGBUS_URL): kafka://, amqp:// / amqps://, mem://.
 * The semantic model (topic, group, key, ack, confirm) is described in
 * docs/semantics.md.
 *
 * Conventions used by every function below:
 *  - Functions that can fail return msgbus_err_t; MSGBUS_OK is 0.
 *    On failure msgbus_last_error() holds a detail message for this thread.
 *  - Constructors write the new object through an out-parameter, which is
 *    left untouched on failure. Every _new/_open has a _free/_close, and
 *    _free(NULL) / _close(NULL) do nothing.
 *  - Strings passed in are copied unless a comment says otherwise.
 */
#ifndef MSGBUS_MSGBUS_H
#define MSGBUS_MSGBUS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MSGBUS_BUILDING)
#define MSGBUS_API __attribute__((visibility("default")))
#else
#define MSGBUS_API
#endif

#define MSGBUS_VERSION_MAJOR 0
#define MSGBUS_VERSION_MINOR 1
#define MSGBUS_VERSION_PATCH 0
#define MSGBUS_VERSION_STRING "0.1.0"
/* Single integer for comparisons: 0xMMmmpp. */
#define MSGBUS_VERSION_NUM \
    ((MSGBUS_VERSION_MAJOR << 16) | (MSGBUS_VERSION_MINOR << 8) | MSGBUS_VERSION_PATCH)

/* The library's version string ("0.1.0"). Static storage; any thread. */
MSGBUS_API const char *msgbus_version(void);

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

typedef enum msgbus_err {
    MSGBUS_OK = 0,
    MSGBUS_ERR_INVALID = 1,      /* a bad argument: NULL, bad name, bad value */
    MSGBUS_ERR_CONFIG = 2,       /* missing/malformed URL, unknown or bad option */
    MSGBUS_ERR_NOMEM = 3,        /* out of memory */
    MSGBUS_ERR_TIMEOUT = 4,      /* the time given ran out */
    MSGBUS_ERR_QUEUE_FULL = 5,   /* local queue full: poll/flush, then retry */
    MSGBUS_ERR_CONNECT = 6,      /* broker unreachable or connection lost */
    MSGBUS_ERR_AUTH = 7,         /* broker refused the credentials */
    MSGBUS_ERR_TOO_LARGE = 8,    /* message larger than the broker accepts */
    MSGBUS_ERR_BROKER = 9,       /* the broker refused the request (detail says why) */
    MSGBUS_ERR_CLOSED = 10,      /* the bus or subscription is closed */
    MSGBUS_ERR_DUPLICATE = 11,   /* inbox: this message was already processed */
    MSGBUS_ERR_STATE = 12,       /* call not valid now (e.g. ack twice) */
    MSGBUS_ERR_UNSUPPORTED = 13, /* the backend cannot do this */
    MSGBUS_ERR_DELIVERY = 14,    /* flush: some messages were not delivered */
    MSGBUS_ERR_STORE = 15,       /* outbox/inbox database error (detail has its text) */
    MSGBUS_ERR_NOT_FOUND = 16,   /* no such item */
    MSGBUS_ERR_INTERNAL = 17     /* a bug in msgbus: please report it */
} msgbus_err_t;

/* Fixed short text for an error code ("timed out"). Static; any thread. */
MSGBUS_API const char *msgbus_strerror(msgbus_err_t err);

/* The symbolic name of an error code ("MSGBUS_ERR_TIMEOUT"). Static; any thread. */
MSGBUS_API const char *msgbus_err_name(msgbus_err_t err);

/* Detail text of the most recent failure on the calling thread. For
 * example "unknown option 'prefech' in URL 'mem://x?prefech=10'; did you
 * mean 'prefetch'?".
 * Never NULL ("" before any failure). The string is thread-local and is
 * overwritten by the next failing msgbus call on this thread. Secrets are
 * never included (see msgbus_redact). */
MSGBUS_API const char *msgbus_last_error(void);

/* ------------------------------------------------------------------ */
/* Logging                                                             */
/* ------------------------------------------------------------------ */

typedef enum msgbus_log_level {
    MSGBUS_LOG_ERROR = 0,
    MSGBUS_LOG_WARN = 1,
    MSGBUS_LOG_INFO = 2,
    MSGBUS_LOG_DEBUG = 3
} msgbus_log_level_t;

/* Receives one log line (no trailing newline). May be called from any
 * thread, including msgbus's own I/O threads, so it must be thread-safe and
 * must not call back into msgbus. */
typedef void (*msgbus_log_cb)(void *opaque, msgbus_log_level_t level, const char *line);

/* Installs the process-wide log hook and the most verbose level it gets.
 * cb NULL restores the default: lines at `max_level` or more severe to
 * stderr (default level: MSGBUS_LOG_WARN). Any thread; affects all buses. */
MSGBUS_API void msgbus_set_log(msgbus_log_cb cb, void *opaque, msgbus_log_level_t max_level);

/* Writes `text` — a bus URL, or an option list "name=value&…" — into `buf`
 * (`size` bytes, NUL-terminated, truncated to fit) with every secret shown
 * as "***": the password of user:password@ and the value of every option
 * whose name msgbus_secret_name() calls secret. This is the form msgbus
 * itself prints everywhere (msgbus_url, logs, errors, the CLI). Returns
 * the length of the whole redacted text, like snprintf. buf may be NULL
 * when size is 0. Any thread; never blocks. */
MSGBUS_API size_t msgbus_redact(const char *text, char *buf, size_t size);

/* Nonzero when an option or variable named `name` holds a secret, by rule:
 * its name (any case) contains pass, secret, token, credential, private,
 * jaas, pem, apikey / api_key / api.key or oauthbearer.config
 * ("sasl.password", "ssl.key.password", "MSGBUS_KAFKA_SASL_PASSWORD",
 * "ssl.key.pem"). Any thread. */
MSGBUS_API int msgbus_secret_name(const char *name);

/* ------------------------------------------------------------------ */
/* Messages                                                            */
/* ------------------------------------------------------------------ */

/* A message: payload, key, headers, id and timestamp; made with
 * msgbus_msg_new, or received with msgbus_receive (then it also says where
 * it came from). Freed with msgbus_msg_free. */
typedef struct msgbus_msg msgbus_msg_t;

/* Limits checked locally, before anything reaches a broker. */
#define MSGBUS_MAX_HEADER_NAME 255
#define MSGBUS_MAX_ID 255

/* Creates a message holding a copy of `payload` (`len` bytes; may contain
 * NUL bytes; `payload` may be NULL when len is 0). It gets a fresh UUIDv7
 * message id and the current time as its timestamp. Any thread. */
MSGBUS_API msgbus_err_t msgbus_msg_new(msgbus_msg_t **out, const void *payload, size_t len);

/* Frees a message. A received message that was neither acked nor nacked is
 * left unsettled: the broker delivers it again when the subscription
 * closes (or its connection drops). NULL is a no-op. */
MSGBUS_API void msgbus_msg_free(msgbus_msg_t *m);

/* The payload and its length. The pointer lives until the message is freed
 * (or its payload replaced). Never NULL (an empty payload gives ""). */
MSGBUS_API const void *msgbus_msg_payload(const msgbus_msg_t *m, size_t *len);

/* Replaces the payload with a copy of `payload` (`len` bytes; may contain
 * NUL bytes; NULL when len is 0). A pointer from msgbus_msg_payload is
 * invalid afterwards. MSGBUS_ERR_INVALID for a NULL message or a NULL
 * payload with len > 0, MSGBUS_ERR_NOMEM (the message keeps its old
 * payload). */
MSGBUS_API msgbus_err_t msgbus_msg_set_payload(msgbus_msg_t *m, const void *payload, size_t len);

/* Sets (copies) the ordering/partitioning key; key NULL removes it.
 * Keys may be binary. */
MSGBUS_API msgbus_err_t msgbus_msg_set_key(msgbus_msg_t *m, const void *key, size_t len);

/* The key, or NULL when the message has none. Lives until the message is
 * freed or its key replaced. */
MSGBUS_API const void *msgbus_msg_key(const msgbus_msg_t *m, size_t *len);

/* Sets (copies) a string header, replacing one with the same name.
 * Names: 1..255 bytes of [A-Za-z0-9._:-], case-sensitive; names starting
 * with "msgbus-" and the id headers "ce_id" / "cloudEvents:id" are reserved
 * (use msgbus_msg_set_id). Values: any NUL-terminated string. */
MSGBUS_API msgbus_err_t msgbus_msg_set_header(msgbus_msg_t *m, const char *name, const char *value);

/* Removes a header; MSGBUS_ERR_NOT_FOUND when there is none by that name. */
MSGBUS_API msgbus_err_t msgbus_msg_del_header(msgbus_msg_t *m, const char *name);

/* The value of header `name`, or NULL. Lives until the message is freed or
 * the header changed. */
MSGBUS_API const char *msgbus_msg_header(const msgbus_msg_t *m, const char *name);

/* Number of headers, and the i-th (0-based) in insertion order. The strings
 * live until the message is freed or its headers changed. header_at returns
 * MSGBUS_ERR_NOT_FOUND past the end. */
MSGBUS_API size_t msgbus_msg_header_count(const msgbus_msg_t *m);
MSGBUS_API msgbus_err_t msgbus_msg_header_at(const msgbus_msg_t *m, size_t i,
                                             const char **name, const char **value);

/* The message id: set by msgbus_msg_new (UUIDv7), carried across the
 * broker. A received message from a producer that is not msgbus may have
 * none: then NULL. A received id that breaks the id rule (msgbus_msg_set_id:
 * empty, spaces, control or non-ASCII bytes, a NUL inside, over 255 bytes)
 * or several ids that disagree are not an id either: NULL, and the raw
 * value(s) are kept, %XX-escaped and ','-separated, in the header
 * "msgbus-invalid-id" (docs/semantics.md, "What arrives from a broker"). */
MSGBUS_API const char *msgbus_msg_id(const msgbus_msg_t *m);

/* Replaces the message id (1..255 printable ASCII bytes, no spaces). */
MSGBUS_API msgbus_err_t msgbus_msg_set_id(msgbus_msg_t *m, const char *id);

/* The message's timestamp, in milliseconds since the Unix epoch, and
 * setting it. msgbus_msg_new stamps the current time; a received message
 * carries what its producer set (the CloudEvents time, docs/interop.md).
 * msgbus_msg_timestamp gives 0 for NULL; msgbus_msg_set_timestamp refuses
 * a negative time with MSGBUS_ERR_INVALID. */
MSGBUS_API int64_t msgbus_msg_timestamp(const msgbus_msg_t *m);
MSGBUS_API msgbus_err_t msgbus_msg_set_timestamp(msgbus_msg_t *m, int64_t ms);

/* The topic, group and delivery attempt of a received message: the topic,
 * the group (NULL for a broadcast subscriber) and the attempt (1 on first
 * delivery, +1 each time it is delivered again). On a message the application made: NULL, NULL, 0.
 * Strings live until the message is freed. */
MSGBUS_API const char *msgbus_msg_topic(const msgbus_msg_t *m);
MSGBUS_API const char *msgbus_msg_group(const msgbus_msg_t *m);
MSGBUS_API int msgbus_msg_attempt(const msgbus_msg_t *m);

/* Where a received message came from. Kafka: the partition it was read
 * from and its offset there (what kcat prints). -1 for both where the
 * backend has no such position (RabbitMQ, mem://) and on a message the
 * application made. */
MSGBUS_API int32_t msgbus_msg_partition(const msgbus_msg_t *m);
MSGBUS_API int64_t msgbus_msg_offset(const msgbus_msg_t *m);
/* 1 when the broker says it delivered this message before (RabbitMQ's
 * redelivered flag: an earlier delivery was not acked — a consumer closed
 * or its connection died); else 0, also on backends that do not say
 * (Kafka, mem://: msgbus_msg_attempt counts msgbus's own retries there). */
MSGBUS_API int msgbus_msg_redelivered(const msgbus_msg_t *m);

/* Sets a message's own CloudEvents type, source and subject
 * (docs/interop.md). Every message travels as a
 * CloudEvent (URL option cloudevents=binary, the default): id, source (the
 * bus option ce_source), type (the topic unless set), time (from the
 * timestamp), subject (when set), datacontenttype (the content-type
 * header). These set a message's own type, source and subject: 1..1024
 * bytes of printable UTF-8 (no control characters), copied; NULL clears
 * (back to the default). MSGBUS_ERR_INVALID naming what was wrong. */
MSGBUS_API msgbus_err_t msgbus_msg_set_type(msgbus_msg_t *m, const char *type);
MSGBUS_API msgbus_err_t msgbus_msg_set_source(msgbus_msg_t *m, const char *source);
MSGBUS_API msgbus_err_t msgbus_msg_set_subject(msgbus_msg_t *m, const char *subject);
/* The message's CloudEvents type, source and subject: what was set, or
 * on a received message what arrived (binary or structured CloudEvent, any
 * binding's prefix); NULL when none. Other
 * CloudEvents attributes (extensions) are headers named ce_<name> on every
 * backend, both ways. Valid while the message lives. */
MSGBUS_API const char *msgbus_msg_type(const msgbus_msg_t *m);
MSGBUS_API const char *msgbus_msg_source(const msgbus_msg_t *m);
MSGBUS_API const char *msgbus_msg_subject(const msgbus_msg_t *m);
#define MSGBUS_MAX_CE_ATTR 1024

/* ------------------------------------------------------------------ */
/* Bus                                                                 */
/* ------------------------------------------------------------------ */

/* An open bus: a connection to the broker a URL names (msgbus_open,
 * msgbus_close). */
typedef struct msgbus msgbus_t;

/* Opens a bus on `url` — or on $MSGBUS_URL when url is NULL.
 *   kafka://host:9092[,host2:9092][?option=value&…]
 *   amqp://user:pass@host:5672/vhost[?…]   amqps://…
 *   mem:// or mem://name   (in-process broker)
 * Unset or malformed URL, an unknown scheme, or an unknown option is
 * MSGBUS_ERR_CONFIG with a detail naming the problem; msgbus never falls
 * back to another backend. `reserved` must be NULL (room for an options
 * object later). Blocks while the backend connects (up to its
 * connect timeout). Any thread. */
MSGBUS_API msgbus_err_t msgbus_open(msgbus_t **out, const char *url, const void *reserved);

/* Closes the bus: waits up to the `close_timeout_ms` option (default 5000)
 * for outstanding confirms, serving their callbacks on the calling thread;
 * messages still unconfirmed then are reported to their callbacks as
 * MSGBUS_ERR_CLOSED and counted in an error log line — never dropped
 * silently. Closes subscriptions still open (their handles become invalid).
 * NULL is a no-op. Call once, from one thread, after other threads stopped
 * using the bus. */
MSGBUS_API void msgbus_close(msgbus_t *bus);

/* The URL the bus was opened with, every secret replaced by "***" (the
 * password and every secret option: see msgbus_redact). Lives until the
 * bus is closed. */
MSGBUS_API const char *msgbus_url(const msgbus_t *bus);

/* The backend's scheme name: "kafka", "amqp", "mem". Static. */
MSGBUS_API const char *msgbus_backend(const msgbus_t *bus);

/* ------------------------------------------------------------------ */
/* Publishing                                                          */
/* ------------------------------------------------------------------ */

/* The outcome of one published message, as given to its delivery callback. */
typedef struct msgbus_report {
    const char *topic;   /* the topic it was published to */
    const char *msg_id;  /* its message id */
    msgbus_err_t status; /* MSGBUS_OK: the broker has it durably */
    const char *error;   /* on failure: what happened ("" on success) */
} msgbus_report_t;

/* Called once per published message with its real outcome, on the thread
 * that calls msgbus_poll, msgbus_flush or msgbus_close. The report and its
 * strings live only during the call. */
typedef void (*msgbus_delivery_cb)(void *opaque, const msgbus_report_t *report);

/* Publishes a copy of `m` to `topic`, asynchronously: returns once the
 * message is queued locally; the broker's confirm arrives later (see
 * msgbus_flush and `cb`). `m` is not kept: free or reuse it at once.
 * `cb` (may be NULL) is called once with the outcome; a failure without a
 * callback is logged at error level and counted by msgbus_flush.
 * Topic names: 1..249 bytes of [A-Za-z0-9._-], except ".", ".." and names
 * starting with "amq." (refused by one broker or another, so by all).
 * Never blocks on the network. MSGBUS_ERR_QUEUE_FULL when `queue_max`
 * messages are already awaiting confirms: serve msgbus_poll and retry.
 * MSGBUS_ERR_TOO_LARGE when the message is larger than the backend's limit.
 * Any thread. */
MSGBUS_API msgbus_err_t msgbus_publish(msgbus_t *bus, const char *topic, const msgbus_msg_t *m,
                                       msgbus_delivery_cb cb, void *opaque);

/* Waits until every message published so far is confirmed or failed,
 * serving delivery callbacks on the calling thread meanwhile. Returns
 * MSGBUS_OK when all were confirmed; MSGBUS_ERR_DELIVERY when some failed
 * (*failed, if given, says how many failed since the previous flush);
 * MSGBUS_ERR_TIMEOUT when messages are still outstanding after
 * `timeout_ms` (-1: wait forever). Any thread; blocks. */
MSGBUS_API msgbus_err_t msgbus_flush(msgbus_t *bus, int timeout_ms, size_t *failed);

/* Number of published messages still waiting for their confirm. Any thread. */
MSGBUS_API size_t msgbus_outstanding(const msgbus_t *bus);

/* Creates the storage a group needs ahead of its first consumer, so that
 * messages published from now on are kept for it (the topic itself too).
 * Blocks until the broker has done it. Any thread. */
MSGBUS_API msgbus_err_t msgbus_declare(msgbus_t *bus, const char *topic, const char *group);

/* ------------------------------------------------------------------ */
/* Subscribing                                                         */
/* ------------------------------------------------------------------ */

/* A subscription to one topic, as a member of a group or as a broadcast
 * subscriber (msgbus_subscribe, msgbus_sub_close). */
typedef struct msgbus_sub msgbus_sub_t;

/* Subscribes to `topic`, as a member of `group` or, with group NULL, as a
 * broadcast subscriber. Members of one group share the messages; every
 * group gets every message. A broadcast subscriber alone sees every message
 * published after this call (or from its start position:
 * msgbus_subscribe_ex). Returns once the subscription is established: a
 * message published after it returns reaches it. Group names: as topic
 * names. Any thread; blocks up to the backend's subscribe timeout. */
MSGBUS_API msgbus_err_t msgbus_subscribe(msgbus_t *bus, const char *topic, const char *group,
                                         msgbus_sub_t **out);

/* Waits up to `timeout_ms` (0: do not wait; -1: forever) for the next
 * message. On MSGBUS_OK *out is a message the caller owns: settle it with
 * msgbus_ack / msgbus_nack and free it with msgbus_msg_free.
 * MSGBUS_ERR_TIMEOUT when none arrived; MSGBUS_ERR_CLOSED after close.
 * Any thread; one message goes to exactly one caller. */
MSGBUS_API msgbus_err_t msgbus_receive(msgbus_sub_t *sub, int timeout_ms, msgbus_msg_t **out);

/* Settles a received message: done, do not deliver it again. Never blocks
 * on the network. MSGBUS_ERR_STATE if it was already settled or is not a
 * received message; MSGBUS_ERR_CLOSED if its subscription is closed (the
 * broker will deliver it again). Any thread. */
MSGBUS_API msgbus_err_t msgbus_ack(msgbus_msg_t *m);

/* Settles a received message as failed: after the subscription's retry
 * backoff it is delivered again (to this or another member of the group)
 * with its attempt count raised; after the last attempt it goes to the
 * dead-letter topic (see msgbus_subscribe_ex). Never blocks. Same errors as
 * msgbus_ack. Any thread. */
MSGBUS_API msgbus_err_t msgbus_nack(msgbus_msg_t *m);

/* Like msgbus_subscribe, with per-subscription options given as
 * "name=value&name=value" (the syntax of URL query options; NULL or ""
 * for the defaults). Options not given take their value from the bus URL
 * (same names), then the defaults below. An unknown name or a bad value is
 * MSGBUS_ERR_CONFIG naming it, and nothing is subscribed.
 *   retry_max_attempts  5      deliveries before dead-lettering; 0: retry
 *                              forever (never dead-letter)
 *   retry_initial_ms    200    delay before the 2nd delivery
 *   retry_multiplier    2.0    each further delay is the previous × this
 *   retry_max_ms        10000  ceiling of one delay
 *   retry_jitter        0.2    each delay is randomised by ± this fraction
 *   dlq                 on     off: never dead-letter (then
 *                              retry_max_attempts must be 0: msgbus does not
 *                              drop messages)
 *   dlq_topic           <topic>.dlq  where dead letters go (not in the URL)
 *   dlq_group           dlq    the group declared on the dead-letter topic
 *                              so its messages are kept until read
 *   start               latest where a new group or a broadcast subscriber
 *                              begins: latest, earliest, an RFC 3339 time
 *                              or -<duration> (see "Start positions" at
 *                              msgbus_group_reset; MSGBUS_ERR_UNSUPPORTED
 *                              where the backend cannot replay)
 * `options` is read during the call, not kept. Any thread; blocks like
 * msgbus_subscribe. See docs/semantics.md, "Retry and dead letters". */
MSGBUS_API msgbus_err_t msgbus_subscribe_ex(msgbus_t *bus, const char *topic, const char *group,
                                            const char *options, msgbus_sub_t **out);

/* msgbus_nack with the reason it failed (copied; NULL allowed). The
 * message stays the caller's to free; msgbus keeps what it needs for the
 * retry or the dead letter (freeing it at once is fine). The
 * reason of the last nack travels in the dead letter's msgbus-dlq-error
 * header. Same errors as msgbus_ack. Any thread. */
MSGBUS_API msgbus_err_t msgbus_nack_reason(msgbus_msg_t *m, const char *reason);

/* Settles a received message by sending it to its subscription's
 * dead-letter topic at once, whatever its attempt count (a poison message
 * the handler recognises). The original is acked only after the broker
 * confirmed the dead letter. Never blocks on the network.
 * MSGBUS_ERR_STATE when dead-lettering is off for the subscription or the
 * message was already settled. Any thread. */
MSGBUS_API msgbus_err_t msgbus_dead_letter(msgbus_msg_t *m, const char *reason);

/* Moves dead letters back to the topics they came from (their
 * msgbus-dlq-topic header): consumes `dlq_topic` as group `dlq_group`
 * (NULL: "dlq"), republishes each message with its payload, key, id and
 * application headers (the msgbus-dlq-* headers removed, attempt count
 * starting again at 1), and acks it on the dead-letter topic once the
 * republish is confirmed. Stops after `max` messages (0: no limit) or when
 * none arrived for `idle_ms`. *moved (may be NULL) gets how many were moved.
 * Every group of the original topic sees a replayed message again (with
 * the same id, so an inbox drops it where it was applied). Messages
 * without a msgbus-dlq-topic header are left on the dead-letter topic and
 * reported as MSGBUS_ERR_NOT_FOUND after the others were moved. Blocks.
 * Any thread. */
MSGBUS_API msgbus_err_t msgbus_dlq_replay(msgbus_t *bus, const char *dlq_topic,
                                          const char *dlq_group, size_t max, int idle_ms,
                                          size_t *moved);

/* Closes a subscription. Messages received but not settled are delivered
 * again to the other members of the group (or later members). Messages
 * already received stay valid until freed. NULL is a no-op. Call from one
 * thread, after others stopped calling msgbus_receive on it. */
MSGBUS_API void msgbus_sub_close(msgbus_sub_t *sub);

/* Receives up to `max` messages at once: waits up to `timeout_ms` (0: do
 * not wait; -1: forever) for the first, then takes what is already queued
 * (up to `max`) without waiting more, under one lock. On MSGBUS_OK out[0 ..
 * *n-1] (*n >= 1) are messages the caller owns, each settled and freed as
 * one from msgbus_receive. MSGBUS_ERR_TIMEOUT when none arrived (*n = 0);
 * MSGBUS_ERR_CLOSED after close; MSGBUS_ERR_INVALID for NULLs or max 0.
 * Any thread. */
MSGBUS_API msgbus_err_t msgbus_receive_batch(msgbus_sub_t *sub, size_t max, int timeout_ms,
                                             msgbus_msg_t **out, size_t *n);

/* Pauses a subscription, or resumes a paused one. Paused, the backend
 * stops fetching (Kafka: its partitions are paused; RabbitMQ: its consumer
 * is cancelled, unsettled messages stay unsettled; mem: nothing more is
 * handed to it), and msgbus_receive on it returns nothing (messages
 * already buffered wait, unsettled, counted in msgbus_fd only after
 * resume). Messages received before stay valid and can be settled.
 * msgbus_sub_resume undoes it: the backend fetches again and
 * msgbus_receive returns messages again. Pausing a paused subscription (or
 * resuming a running one) is a no-op. Never blocks on the network.
 * MSGBUS_ERR_CLOSED after close. Any thread. */
MSGBUS_API msgbus_err_t msgbus_sub_pause(msgbus_sub_t *sub);
MSGBUS_API msgbus_err_t msgbus_sub_resume(msgbus_sub_t *sub);

/* ------------------------------------------------------------------ */
/* Positions, inspection and capabilities (docs/semantics.md)          */
/* ------------------------------------------------------------------ */

/* Moves `group`'s position on `topic` to `position` (a start position,
 * below) so its next member begins there. The group must have no active
 * member: MSGBUS_ERR_STATE naming how many there are.
 * Kafka commits the offsets of that time in every partition; mem:// moves
 * the group within what it retains (URL option retain=); RabbitMQ can only
 * go to "latest", by purging the group's queue (every waiting message is
 * dropped), and refuses the rest with MSGBUS_ERR_UNSUPPORTED. A topic that
 * does not exist is MSGBUS_ERR_NOT_FOUND; a group that does not exist yet
 * is given that position where the backend can (Kafka: its offsets are
 * committed; mem://: the group is declared there) and is
 * MSGBUS_ERR_NOT_FOUND where not (RabbitMQ). Blocks. Any thread.
 *
 * Start positions. The subscription option start= (msgbus_subscribe_ex, or
 * the bus URL for every subscription) says where a group with no position
 * yet, or a broadcast subscriber, begins:
 *   latest         messages published from now on (the default)
 *   earliest       the oldest message the backend still keeps
 *   <RFC 3339>     the first message at or after that time (mem://: the
 *                  retained messages stamped at or after it), e.g.
 *                  2026-12-07T08:00:00Z or 2026-12-07T09:00:00.5+01:00
 *   -<duration>    that long ago: -15m, -2h, -30s, -1d, -500ms
 * A group that already has a position (it consumed, or was declared) keeps
 * it: move it with msgbus_group_reset. A backend without
 * MSGBUS_CAP_REPLAY refuses earliest and times with MSGBUS_ERR_UNSUPPORTED
 * saying why (RabbitMQ queues hold only what was routed to them). */
MSGBUS_API msgbus_err_t msgbus_group_reset(msgbus_t *bus, const char *topic, const char *group,
                                           const char *position);

/* What the broker holds, as a JSON object (docs/semantics.md,
 * "Inspecting"): {"topics": [{"name", "partitions", "retention_ms",
 * "groups": [{"name", "members", "lag", "partitions": [{"partition",
 * "committed", "high_watermark", "lag"}] | "ready", "unacked"}]}]}; members
 * left out where unknown, and backends add their own (Kafka: each topic's
 * "watermarks"; docs/semantics.md, "Inspecting"). `topic` NULL: every topic (MSGBUS_ERR_UNSUPPORTED
 * where the backend cannot list them: RabbitMQ over AMQP); `group` NULL:
 * every group of each topic the backend can list (RabbitMQ: none unless
 * named). A named topic or group that does not exist is
 * MSGBUS_ERR_NOT_FOUND. Waits up to `timeout_ms` for the broker. *out gets
 * a text to free with msgbus_free. Any thread. */
MSGBUS_API msgbus_err_t msgbus_inspect_json(msgbus_t *bus, const char *topic, const char *group,
                                            int timeout_ms, char **out);

/* Frees a text msgbus returned (msgbus_inspect_json, msgbus_caps_json).
 * NULL is a no-op. */
MSGBUS_API void msgbus_free(void *p);

/* What msgbus_check checks: the rules the API applies to names and
 * attribute values, for code that must refuse a bad value before it
 * reaches msgbus (an outbox row written in another language, a form). */
typedef enum msgbus_check_kind {
    MSGBUS_CHECK_TOPIC = 1,       /* topic names (msgbus_publish, _declare, _outbox_put) */
    MSGBUS_CHECK_GROUP = 2,       /* group names (msgbus_subscribe, _declare) */
    MSGBUS_CHECK_HEADER_NAME = 3, /* header names an application may set (msgbus_msg_set_header) */
    MSGBUS_CHECK_ID = 4,          /* message ids (msgbus_msg_set_id, msgbus_inbox_claim_id) */
    MSGBUS_CHECK_CONSUMER = 5,    /* inbox consumer names (msgbus_inbox_open_*) */
    MSGBUS_CHECK_CE_TYPE = 6,     /* CloudEvents type (msgbus_msg_set_type) */
    MSGBUS_CHECK_CE_SOURCE = 7,   /* CloudEvents source (msgbus_msg_set_source) */
    MSGBUS_CHECK_CE_SUBJECT = 8   /* CloudEvents subject (msgbus_msg_set_subject) */
} msgbus_check_t;

/* Checks `text` against the rule `what` names, as the API would: MSGBUS_OK,
 * or MSGBUS_ERR_INVALID with the same message (msgbus_last_error) the API
 * gives for that value — also for reserved header names, and for an
 * unknown `what` or a NULL text. Changes nothing. Any thread. */
MSGBUS_API msgbus_err_t msgbus_check(msgbus_check_t what, const char *text);

/* Capabilities: what the backend of an open bus guarantees, as it is
 * configured. Each bit is exact: claimed means the conformance suite
 * checks it holds; not claimed means the feature is refused with
 * MSGBUS_ERR_UNSUPPORTED (or, for guarantees, not promised). The URL option
 * require=name,name,... makes msgbus_open fail with MSGBUS_ERR_CONFIG
 * naming each one the backend lacks and why. */
#define MSGBUS_CAP_KEY_ORDER (1u << 0)   /* "key_order": per-key order holds across
                                           several members of a group */
#define MSGBUS_CAP_REPLAY (1u << 1)      /* "replay": start=earliest/time and
                                           msgbus_group_reset to any position */
#define MSGBUS_CAP_DURABLE (1u << 2)     /* "durable": a confirmed message survives
                                           a broker restart */
#define MSGBUS_CAP_SHARED (1u << 3)      /* "shared": other processes reach the same
                                           topics (a real broker, not mem://) */
#define MSGBUS_CAP_POSITIONS (1u << 4)   /* "positions": msgbus_msg_partition and
                                           msgbus_msg_offset are set */
#define MSGBUS_CAP_REDELIVERED (1u << 5) /* "redelivered": msgbus_msg_redelivered
                                           reports the broker's flag */
#define MSGBUS_CAP_NO_DUPLICATE_PUBLISH (1u << 6) /* "no_duplicate_publish": the broker
                                           drops duplicates of a publish retried
                                           after a lost confirm (Kafka's idempotent
                                           producer) */
#define MSGBUS_CAP_LIST (1u << 7)        /* "list": msgbus_inspect_json lists every
                                           topic and group */
#define MSGBUS_CAP_DELAYED (1u << 8)     /* "delayed": the broker delivers a message
                                           at a later time by itself */
#define MSGBUS_CAP_LAG (1u << 9)         /* "lag": stats and msgbus_inspect_json
                                           report each group's lag */
#define MSGBUS_CAP_ALL ((1u << 10) - 1)

/* The capability bits of the bus (MSGBUS_CAP_*); 0 for NULL. Any thread. */
MSGBUS_API uint64_t msgbus_caps(msgbus_t *bus);
/* The name of one capability bit ("key_order"), or NULL. Static. */
MSGBUS_API const char *msgbus_cap_name(uint64_t cap);
/* The largest message (payload, key and headers) the bus accepts, in bytes,
 * as configured; 0 for NULL. Any thread. */
MSGBUS_API size_t msgbus_max_message_size(msgbus_t *bus);
/* Every capability as JSON: {"backend": "kafka", "max_message_size": N,
 * "capabilities": [{"name", "supported", "description", "why_not"}]} in
 * bit order (why_not only when not supported). *out is freed with
 * msgbus_free. Any thread. */
MSGBUS_API msgbus_err_t msgbus_caps_json(msgbus_t *bus, char **out);

/* ------------------------------------------------------------------ */
/* The application's event loop                                        */
/* ------------------------------------------------------------------ */

/* Serves pending delivery callbacks on the calling thread, waiting up to
 * `timeout_ms` (0: do not wait; -1: forever) for the first one. *served
 * (may be NULL) gets how many were served. Any thread. */
MSGBUS_API msgbus_err_t msgbus_poll(msgbus_t *bus, int timeout_ms, int *served);

/* A descriptor that is readable while the bus has work for the application:
 * delivery callbacks for msgbus_poll or messages for msgbus_receive on any
 * of its subscriptions. Wait on it with epoll/poll/libuv/libevent, then
 * call msgbus_poll(bus, 0, …) and msgbus_receive(sub, 0, …) until they
 * report nothing; it turns unreadable once all is served. It may rarely be
 * readable with nothing to do. Owned by the bus: do not close or read it.
 * Any thread. */
MSGBUS_API int msgbus_fd(msgbus_t *bus);


/* ------------------------------------------------------------------ */
/* Observability: connection state, stats, hooks (docs/stats.md,       */
/* docs/tracing.md)                                                    */
/* ------------------------------------------------------------------ */

/* The state of a bus's connection, or of one subscription.
 *  CONNECTING    opening, nothing established yet
 *  UP            connected (a subscription: consuming)
 *  RECONNECTING  the connection (or a subscription) was lost; msgbus is
 *                re-establishing it on its own
 *  DOWN          no broker reachable (Kafka: every broker down; AMQP: the
 *                connection failed and reconnect attempts fail), or a
 *                subscription that cannot consume (its queue was deleted);
 *                msgbus keeps trying where it can, the reason says what */
typedef enum msgbus_state {
    MSGBUS_STATE_CONNECTING = 0,
    MSGBUS_STATE_UP = 1,
    MSGBUS_STATE_RECONNECTING = 2,
    MSGBUS_STATE_DOWN = 3
} msgbus_state_t;

/* "CONNECTING", "UP", "RECONNECTING", "DOWN" ("?" otherwise). Static. */
MSGBUS_API const char *msgbus_state_name(msgbus_state_t state);

/* The bus connection's current state; its reason text is copied into
 * `reason` (`size` bytes, NUL-terminated, truncated; may be NULL when size
 * is 0). Any thread. */
MSGBUS_API msgbus_state_t msgbus_state(const msgbus_t *bus, char *reason, size_t size);

/* The state of one subscription (UP while it consumes), its reason
 * copied into `reason` as msgbus_state does. Any thread. */
MSGBUS_API msgbus_state_t msgbus_sub_state(const msgbus_sub_t *sub, char *reason, size_t size);

/* One state change, as given to the state callback. Strings live only
 * during the call. */
typedef struct msgbus_state_event {
    msgbus_state_t state;    /* the new state */
    msgbus_state_t previous; /* the state before */
    const char *reason;      /* why, e.g. "all brokers down", "rebalanced: 3 partitions" */
    msgbus_sub_t *sub;       /* the subscription that changed; NULL: the bus connection */
    const char *topic;       /* the subscription's topic and group (NULL for the bus) */
    const char *group;
    int64_t time_ms;         /* when it happened, ms since the Unix epoch */
} msgbus_state_event_t;

typedef void (*msgbus_state_cb)(void *opaque, const msgbus_state_event_t *ev);

/* Installs (cb NULL: removes) the callback for state changes of the bus
 * connection and its subscriptions. Changes are queued as they happen (on
 * any thread) and the callback runs on the thread that calls msgbus_poll,
 * msgbus_flush or msgbus_close, in order; msgbus_fd turns readable when one
 * is waiting. Changes before the callback was installed are not replayed
 * (read msgbus_state). Any thread. */
MSGBUS_API msgbus_err_t msgbus_set_state_cb(msgbus_t *bus, msgbus_state_cb cb, void *opaque);

/* A snapshot of the bus's figures as a JSON object (docs/stats.md lists
 * every field with its unit): counters since open, latency percentiles
 * since the previous snapshot, each subscription with its lag, and the
 * backend's own detail. *out gets a NUL-terminated text to free with
 * msgbus_stats_free. May wait up to about a second for the broker (lag).
 * Any thread. */
MSGBUS_API msgbus_err_t msgbus_stats_json(msgbus_t *bus, char **out);
MSGBUS_API void msgbus_stats_free(char *text);

/* Receives a snapshot (as msgbus_stats_json) every `stats_interval_ms`
 * (URL option; 0, the default: never), on the thread that calls
 * msgbus_poll. The text lives only during the call. */
typedef void (*msgbus_stats_cb)(void *opaque, const char *json);

/* Installs (cb NULL: removes) the periodic stats callback. Any thread. */
MSGBUS_API msgbus_err_t msgbus_set_stats_cb(msgbus_t *bus, msgbus_stats_cb cb, void *opaque);

/* How a received message ended, for msgbus_hooks_t.on_settle. */
typedef enum msgbus_settled {
    MSGBUS_SETTLED_ACK = 0,         /* msgbus_ack */
    MSGBUS_SETTLED_NACK = 1,        /* msgbus_nack / _nack_reason (retry or dead letter) */
    MSGBUS_SETTLED_DEAD_LETTER = 2, /* msgbus_dead_letter */
    MSGBUS_SETTLED_NONE = 3         /* freed unsettled: the broker delivers it again */
} msgbus_settled_t;

/* Hooks for the application's tracer (OpenTelemetry or any other), so a
 * service can trace its messages without msgbus depending on a tracer.
 * Every member may be NULL. Hooks run on the application's threads, inside
 * the msgbus call that triggers them; they must not call back into msgbus
 * except the msgbus_msg_* accessors (and msgbus_msg_set_header /
 * _del_header in on_publish). See docs/tracing.md.
 *  on_publish  msgbus_publish is about to send `m` (msgbus's own copy: the
 *              hook may set headers on it, e.g. traceparent — they are
 *              sent, the caller's message is not changed). The value it
 *              returns comes back to on_confirm.
 *  on_confirm  the outcome of that message, on the thread serving its
 *              report (msgbus_poll/_flush/_close), just before the
 *              delivery callback — or, when msgbus_publish refuses the
 *              message after on_publish ran (QUEUE_FULL, TOO_LARGE, …),
 *              at once inside that call with the error it returns.
 *  on_receive  msgbus_receive is about to return `m` (read its headers,
 *              e.g. extract traceparent). The value it returns comes back
 *              to on_settle.
 *  on_settle   `m` was acked, nacked or dead-lettered — or freed unsettled
 *              (MSGBUS_SETTLED_NONE). Called once per received message,
 *              also for one freed after msgbus_close (then with NONE), so
 *              `opaque` must outlive every received message. */
typedef struct msgbus_hooks {
    void *opaque;
    void *(*on_publish)(void *opaque, const char *topic, msgbus_msg_t *m);
    void (*on_confirm)(void *opaque, const msgbus_report_t *report, void *span);
    void *(*on_receive)(void *opaque, msgbus_msg_t *m);
    void (*on_settle)(void *opaque, const msgbus_msg_t *m, msgbus_settled_t how, void *span);
} msgbus_hooks_t;

/* Installs a copy of `hooks` (NULL: removes them). `size` is
 * sizeof(msgbus_hooks_t) as the caller compiled it (members may be added
 * at the end later). Call before publishing or subscribing: changing hooks
 * while other threads publish or receive is not safe. Subscriptions take
 * the hooks in force when they are made. */
MSGBUS_API msgbus_err_t msgbus_set_hooks(msgbus_t *bus, const msgbus_hooks_t *hooks, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* MSGBUS_MSGBUS_H */
