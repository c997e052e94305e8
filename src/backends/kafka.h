/*
 * kafka.h — what the Kafka backend's files share: the backend state, the
 * configuration helpers (kafka.c) and the consumer half (kafka_consumer.c).
 * Private to src/backends/kafka*.c.
 */
#ifndef MB_KAFKA_H
#define MB_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>

#include "backends/backend.h"

/* A librdkafka property the user gave (URL query or MSGBUS_KAFKA_*), kept
 * so that it can be applied to every handle the backend creates. */
struct mb_kafka_prop {
    char *key;
    char *value;
};

#define MB_KAFKA_TOPICS 64
#define MB_KAFKA_MAX_REPLACED 8

struct mb_kafka_topic; /* kafka.c */

struct mb_backend {
    msgbus_t *bus;
    char *bootstrap;             /* "h1:9092,h2:9092" */
    struct mb_kafka_prop *props; /* the user's passthrough properties */
    size_t nprops;

    /* msgbus-level options (see docs/kafka.md). */
    long partitions;          /* for topics msgbus creates */
    long replication_factor;  /* 0 = auto: min(3, brokers) */
    long min_insync_replicas; /* 0 = auto: 2 when the replication factor is >= 3 */
    long connect_timeout_ms;  /* open, metadata and admin requests */
    long subscribe_timeout_ms;
    long commit_interval_ms;  /* async commits of the acked prefix */
    long max_unacked;       /* unacked messages per subscription before
                                 fetching pauses */
    bool create_topics;       /* subscribe creates a missing topic */
    long max_message_bytes;   /* the producer's message.max.bytes */
    long close_timeout_ms;    /* the core's close_timeout_ms: bounds each
                                 subscription's close (kafka_consumer.c) */
    /* Where a subscription whose start= is not given (MB_START_DEFAULT)
     * begins when its group has no position: LATEST, or EARLIEST when the
     * URL says auto.offset.reset=earliest (kafka_conf.c maps it). */
    enum mb_start_kind default_start;

    /* The current producer; also serves metadata and Admin requests.
     * Atomic: replaced (never freed before close) after a fatal error. */
    rd_kafka_t *_Atomic producer;
    /* A fatal producer error (librdkafka 2.0.2's idempotent producer can
     * hit one when a partition leader changes): error_cb sets
     * fatal_pending, and the poll thread replaces the producer
     * (mb_kafka_replace): unconfirmed messages of the old one are reported
     * failed, new publishes go to a new one. The old producers stay (idle)
     * until close, since a publisher may still be inside a call on one;
     * after MB_KAFKA_MAX_REPLACED of them the bus stays DOWN. */
    _Atomic bool fatal_pending;
    rd_kafka_t *replaced[8];
    _Atomic size_t nreplaced;
    struct mb_kafka_topic *topics_retired; /* old producers' topic handles */
    /* While open waits for the cluster (only the opening thread serves the
     * producer's error_cb then): the first error that no retry can cure
     * (failed SASL authentication, failed TLS handshake, a listener that
     * hangs up on the first request), which ends the wait at once, and
     * librdkafka's latest error text, quoted if the wait times out.
     * Scrubbed of secrets. */
    bool opening;
    msgbus_err_t open_code;  /* MSGBUS_OK until such an error came */
    char open_reason[512];   /* librdkafka's text of it */
    char open_last[512];     /* latest error text of any kind */
    int open_hangups;        /* hang-ups on ApiVersion so far */
    pthread_t poll_thread;    /* serves delivery reports while nobody publishes */
    _Atomic bool stopping;
    /* Delivery reports are served (rd_kafka_poll on the producer) by
     * whichever thread holds dr_mu: a publishing thread every
     * MB_KAFKA_SERVE_EVERY publishes (try-lock, never waits), else the
     * poll thread. Serving on the thread that allocated librdkafka's
     * message copies frees them there too; freeing them on the poll
     * thread contended for glibc's arena lock with the publisher. The
     * lock also keeps the batches below in delivery order. */
    pthread_mutex_t dr_mu;
    _Atomic unsigned long published; /* publishes so far: the poll thread
                                        stands back while this moves */
    _Atomic unsigned long served;    /* non-blocking serves so far */
    /* msgbus_flush (ops->flush) wakes the poll thread from its nap and
     * makes it wait for reports at once: a publisher that flushes has
     * stopped publishing for now. */
    pthread_mutex_t nap_mu;
    pthread_cond_t nap_cv;
    bool wake; /* nap_mu held */
    /* Successful delivery reports gathered during one rd_kafka_poll and
     * handed to the core in one mb_bus_confirm_batch (one lock, one
     * wake-up). dr_mu held (or the poll thread joined, at close). */
    struct mb_confirm *dr_batch[1024];
    size_t dr_n;
    /* Producer topic handles (kafka.c, mb_kafka_topic): the first
     * MB_KAFKA_TOPICS topics published to, held until close. Appended
     * under topics_mu, published by the release store of ntopics, read
     * without a lock. */
    pthread_mutex_t topics_mu;
    _Atomic size_t ntopics;
    struct mb_kafka_topic *topics[MB_KAFKA_TOPICS];

    /* Observability (docs/kafka.md, "Stats and state"). */
    /* The last statistics JSON librdkafka gave (only with the user's
     * statistics.interval.ms; NULL until then), swapped under stats_mu by
     * the producer's stats_cb on whichever thread serves the producer. */
    pthread_mutex_t stats_mu;
    char *stats_json;
    /* The connection state as last reported (MB_KAFKA_CONN_*). Written on
     * state changes only, under dr_mu (error_cb and delivery reports are
     * served under it); read once per served batch of reports. */
    _Atomic int conn;
    /* Errors reported so far (dr_mu held): a probe that succeeded only
     * says "up" if no error came while it waited. */
    unsigned long conn_errors;
};

/* The bus connection's state as the Kafka backend last reported it. */
#define MB_KAFKA_CONN_UP 0
#define MB_KAFKA_CONN_RECONNECTING 1
#define MB_KAFKA_CONN_DOWN 2
#define MB_KAFKA_CONN_FATAL 3 /* the producer hit a fatal error: being replaced,
                                 or (past MB_KAFKA_MAX_REPLACED) DOWN for good */

/* The producer's error_cb reports an error (dr_mu held, or while opening):
 * all brokers down → DOWN, a lost connection → RECONNECTING, a fatal error
 * → RECONNECTING while the poll thread replaces the producer. `reason` is already scrubbed of secrets. */
MB_HIDDEN void mb_kafka_conn_error(struct mb_backend *be, int err, const char *reason);

/* Builds a configuration for a handle of `type`: bootstrap servers,
 * msgbus's defaults for that type, then the user's properties (which win).
 * On failure returns NULL with the error recorded. */
MB_HIDDEN rd_kafka_conf_t *mb_kafka_conf_new(struct mb_backend *be, rd_kafka_type_t type,
                                             const char *const *defaults);

/* Logs an error librdkafka reported through error_cb (the callback every
 * handle gets; consumers wrap it to track their brokers). */
MB_HIDDEN void mb_kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque);

/* kafka_conf.c — configuration, for mb_kafka_open. */
/* Reads msgbus's own options, then passes every other option through to
 * librdkafka (properties msgbus cannot honour refused by name). */
MB_HIDDEN msgbus_err_t mb_kafka_parse_options(struct mb_backend *be, struct mb_url *url);
/* Credentials mean SASL (SASL_SSL + SCRAM-SHA-512 unless the URL says). */
MB_HIDDEN msgbus_err_t mb_kafka_credentials(struct mb_backend *be, const struct mb_url *url);
/* bootstrap.servers from the URL's hosts. */
MB_HIDDEN msgbus_err_t mb_kafka_bootstrap(struct mb_backend *be, const struct mb_url *url);
/* The value of the user's property `key` (after parsing), or NULL. */
MB_HIDDEN const char *mb_kafka_prop(const struct mb_backend *be, const char *key);
/* Scrubs the secrets of rk's configuration from text. */
MB_HIDDEN void mb_kafka_scrub_conf(const rd_kafka_t *rk, char *text, size_t cap);
/* The replication factor and min.insync.replicas (0: the broker's default)
 * of a topic msgbus creates, from the options (0 = auto) and the number of
 * brokers alive: min(3, brokers) copies, and 2 in sync when there are 3 or
 * more. MSGBUS_ERR_CONFIG when min.insync.replicas exceeds the copies. */
MB_HIDDEN msgbus_err_t mb_kafka_topic_size(long brokers, long rf_opt, long isr_opt, long *rf,
                                           long *min_isr);
/* Scrubs the values of the backend's secret properties from `text`. */
MB_HIDDEN void mb_kafka_scrub_props(const struct mb_backend *be, char *text, size_t cap);
/* The producer's error_cb: mb_kafka_error_cb, plus what msgbus_open reports
 * while it waits for the cluster. */
MB_HIDDEN void mb_kafka_producer_error_cb(rd_kafka_t *rk, int err, const char *reason,
                                          void *opaque);

/* Maps a librdkafka error code to msgbus's. */
MB_HIDDEN msgbus_err_t mb_kafka_err(rd_kafka_resp_err_t err);

/* Creates `topic` through the Admin API when missing (partitions and
 * replication factor from the options), then waits until its partitions
 * have leaders. */
MB_HIDDEN msgbus_err_t mb_kafka_ensure_topic(struct mb_backend *be, const char *topic);

/* Number of partitions of `topic` as the cluster reports it, waiting up to
 * the connect timeout for leaders. MSGBUS_ERR_NOT_FOUND when the topic does
 * not exist — unless `just_created`: then "unknown topic" means the
 * broker's metadata has not caught up with the creation yet, and it keeps
 * asking until the timeout. */
MB_HIDDEN msgbus_err_t mb_kafka_topic_partitions(struct mb_backend *be, rd_kafka_t *rk,
                                                 const char *topic, bool just_created, int *out);

/* kafka_group.c */
typedef void (*mb_kafka_rebalance_fn)(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                      rd_kafka_topic_partition_list_t *parts, void *opaque);
typedef void (*mb_kafka_commit_fn)(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                                   rd_kafka_topic_partition_list_t *offsets, void *opaque);
typedef void (*mb_kafka_error_fn)(rd_kafka_t *rk, int err, const char *reason, void *opaque);
/* A consumer for `group_id` with msgbus's consumer settings (no auto
 * commit, no auto offset store); callbacks may be NULL (error_cb NULL:
 * mb_kafka_error_cb). NULL on failure, with the error recorded. */
MB_HIDDEN rd_kafka_t *mb_kafka_consumer_new(struct mb_backend *be, const char *group_id,
                                            void *opaque, mb_kafka_rebalance_fn rebalance_cb,
                                            mb_kafka_commit_fn commit_cb,
                                            mb_kafka_error_fn error_cb);
/* Low and high watermark / end offset / committed offsets, retrying
 * transient errors up to timeout_ms. With `stop` (a subscription's), they
 * also give up soon after *stop turns true: a closing subscription must not
 * sit out the timeout. */
MB_HIDDEN rd_kafka_resp_err_t mb_kafka_watermarks(rd_kafka_t *rk, const char *topic,
                                                  int32_t partition, int timeout_ms,
                                                  const _Atomic bool *stop, int64_t *lo,
                                                  int64_t *hi);
MB_HIDDEN rd_kafka_resp_err_t mb_kafka_end_offset(rd_kafka_t *rk, const char *topic,
                                                  int32_t partition, int timeout_ms,
                                                  const _Atomic bool *stop, int64_t *hi);
MB_HIDDEN rd_kafka_resp_err_t mb_kafka_committed(rd_kafka_t *rk,
                                                 rd_kafka_topic_partition_list_t *parts,
                                                 int timeout_ms, const _Atomic bool *stop);
/* The offset a start position names in each partition of `parts` (topic
 * and partition set; start->kind never MB_START_DEFAULT): EARLIEST the low
 * watermark, LATEST the high watermark, TIME the first message at or after
 * start->time_ms (ListOffsets by time), or the high watermark when none is
 * that recent. Each element gets its offset, or its err; the first error is
 * returned. Retries transient errors up to timeout_ms (and `stop`, as
 * above). */
MB_HIDDEN rd_kafka_resp_err_t mb_kafka_start_offsets(rd_kafka_t *rk,
                                                     rd_kafka_topic_partition_list_t *parts,
                                                     const struct mb_start *start, int timeout_ms,
                                                     const _Atomic bool *stop);
/* Commits `offsets` (rd_kafka_commit_queue) and waits for the outcome up
 * to timeout_ms, or until give_up(arg) (may be NULL) says so; the wait,
 * not the request, ends then. __TIMED_OUT when no outcome came. A
 * partition the broker refused makes the outcome its error. */
MB_HIDDEN rd_kafka_resp_err_t mb_kafka_commit_wait(rd_kafka_t *rk,
                                                   const rd_kafka_topic_partition_list_t *offsets,
                                                   int timeout_ms, bool (*give_up)(void *),
                                                   void *arg);
/* Commits the current end for each partition where `group` has no
 * committed offset (declare). */
MB_HIDDEN msgbus_err_t mb_kafka_declare_group(struct mb_backend *be, const char *topic,
                                              const char *group);
/* ops->group_reset and ops->inspect (docs/kafka.md, "Group reset",
 * "Inspecting"). */
MB_HIDDEN msgbus_err_t mb_kafka_group_reset(struct mb_backend *be, const char *topic,
                                            const char *group, const struct mb_start *to,
                                            int timeout_ms);
MB_HIDDEN msgbus_err_t mb_kafka_inspect(struct mb_backend *be, const char *topic,
                                        const char *group, int timeout_ms, json_t *out);
/* Admin plumbing group reset and inspect (kafka_inspect.c) share. What is
 * left of `deadline` for one request, at least 1 ms: */
MB_HIDDEN int mb_kafka_left(int64_t deadline);
/* Every topic of the cluster (all-topics metadata: asking creates
 * nothing), retrying transient errors until `deadline`; `what` names the
 * caller in errors. */
MB_HIDDEN msgbus_err_t mb_kafka_cluster_topics(rd_kafka_t *rk, int64_t deadline,
                                               const char *what,
                                               const struct rd_kafka_metadata **out);
/* Kafka's own topics (__consumer_offsets, __transaction_state, ...). */
MB_HIDDEN bool mb_kafka_internal_topic(const char *name);
/* Admin options for `op` whose request timeout is what is left of
 * `deadline`. */
MB_HIDDEN rd_kafka_AdminOptions_t *mb_kafka_admin_options(rd_kafka_t *rk,
                                                          rd_kafka_admin_op_t op,
                                                          int64_t deadline);

/* kafka_codec.c (docs/kafka.md, "What msgbus writes", "What arrives") */
/* Decodes a received record's headers into `m` (a new received message
 * without id or headers, its timestamp already the record's): each
 * ce_<attr> header (attr of a-z 0-9) through mb_msg_received_ce, ce_id
 * included, every other header through mb_msg_received_header. `hdrs` may
 * be NULL (no headers). The caller then calls mb_msg_ce_unpack. MSGBUS_OK
 * or MSGBUS_ERR_NOMEM. */
MB_HIDDEN msgbus_err_t mb_kafka_decode_headers(msgbus_msg_t *m, const rd_kafka_headers_t *hdrs);
/* One record as a publish writes it, but for the key (m's own). */
struct mb_kafka_record {
    rd_kafka_headers_t *hdrs; /* producev takes them over when it succeeds */
    const void *value;        /* m's payload, or `json` */
    size_t len;
    char *json;               /* the structured event, or NULL */
    size_t size;              /* value + key + every header's name and value */
};
/* The record for publishing `m` to `topic` in the bus's CloudEvents mode
 * (bus NULL: mode off). MSGBUS_ERR_NOMEM, with the error recorded. */
MB_HIDDEN msgbus_err_t mb_kafka_encode(const msgbus_t *bus, const char *topic,
                                       const msgbus_msg_t *m, struct mb_kafka_record *out);
/* Frees what producev did not take (headers, JSON). */
MB_HIDDEN void mb_kafka_record_clear(struct mb_kafka_record *r);
/* The record headers of mode off: ce_id (when m has an id), then its
 * headers. NULL on out of memory. */
MB_HIDDEN rd_kafka_headers_t *mb_kafka_encode_headers(const msgbus_msg_t *m);

/* kafka_consumer.c */
MB_HIDDEN msgbus_err_t mb_kafka_subscribe(struct mb_backend *be, msgbus_sub_t *sub,
                                          struct mb_backend_sub **out);
MB_HIDDEN void mb_kafka_unsubscribe(struct mb_backend_sub *bs);
/* ops->release: destroys the record a received message borrows from. */
MB_HIDDEN void mb_kafka_release(msgbus_msg_t *m);
MB_HIDDEN msgbus_err_t mb_kafka_settle(struct mb_backend_sub *bs, msgbus_msg_t *m,
                                       enum mb_settle how);
/* ops->pause: stops or restarts fetching (docs/kafka.md, "Pause"). */
MB_HIDDEN msgbus_err_t mb_kafka_sub_pause(struct mb_backend_sub *bs, bool paused);
/* ops->sub_stats: lag per assigned partition (docs/kafka.md). */
MB_HIDDEN void mb_kafka_sub_stats(struct mb_backend_sub *bs, json_t *sub, int timeout_ms);

#endif
