/*
 * amqp.h — internals of the AMQP 0-9-1 backend (rabbitmq-c 0.11), shared by
 * its files:
 *   amqp.c         the ops table: open/close/publish/declare/subscribe/settle
 *   amqp_conf.c    URL options → struct mb_amqp_conf, topology names
 *   amqp_codec.c   msgbus message ↔ AMQP properties/headers/body
 *   amqp_conn.c    connecting (TCP/TLS, login, failover), errors, exchanges
 *   amqp_io.c      the I/O thread: loop, reconnect, publish + confirms
 *   amqp_wire.c    publishes and acks encoded by msgbus, one write per batch
 *   amqp_consume.c the I/O thread's consumer half: deliveries, acks, nacks,
 *                  pause; group reset and inspection (passive declares);
 *                  partitioned groups (children per partition, balancing)
 *
 * Threads: exactly one I/O thread per bus owns the rabbitmq-c connection
 * (it is not thread-safe). Application threads never touch it: they append
 * work to two queues under `lock` (publishes; settles and control requests)
 * and wake the thread through an eventfd once per batch — only when the
 * queue goes from "nobody will look" to "somebody must look" (`wake_pending`).
 * Control requests (declare, subscribe, unsubscribe; group reset, inspect and
 * a lag snapshot, bounded by their timeouts) are the only calls that wait
 * for the I/O thread, on `cond`; pause and settle never do.
 *
 * Channels: 1 publishes in confirm mode, 2 runs topology RPCs, 3.. are one
 * per subscription (its own prefetch; closing it returns its unacked
 * messages) — one per partition for a partitioned group's subscription. Subscription channel numbers are not reused soon, so frames of
 * a closed channel still queued inside rabbitmq-c can never be mistaken for
 * a new subscription's.
 */
#ifndef MB_AMQP_H
#define MB_AMQP_H

#include <amqp.h>
#include <pthread.h>
#include <stdatomic.h>

#include "backends/backend.h"

#define MB_AMQP_PUB_CHANNEL 1
#define MB_AMQP_CTL_CHANNEL 2
#define MB_AMQP_FIRST_SUB_CHANNEL 3
#define MB_AMQP_DETAIL 512
/* Applied settle requests kept for reuse, per bus, at most. */
#define MB_AMQP_OP_POOL 256

/* Header names msgbus writes and strips again on receipt. The id also
 * rides in cloudEvents_id (the CloudEvents AMQP binding's prefix as its
 * current text and the SDKs write it); msgbus before issue 21 wrote
 * cloudEvents:id, which is still read. */
#define MB_AMQP_H_ID "cloudEvents_id"
#define MB_AMQP_H_ID_OLD "cloudEvents:id"
#define MB_AMQP_CE_PREFIX "cloudEvents_"
#define MB_AMQP_H_ATTEMPT "msgbus-attempt"
#define MB_AMQP_H_TS_MS "msgbus-timestamp-ms"
#define MB_AMQP_H_KEY "msgbus-key"
#define MB_AMQP_H_DELIVERY_COUNT "x-delivery-count"

MB_HIDDEN extern const struct mb_backend_ops mb_amqp_ops;

/* ---- configuration (amqp_conf.c) ----------------------------------------- */

struct mb_amqp_qarg {
    char *name;
    char *value; /* as written; typed when the table is built */
};

struct mb_amqp_conf {
    bool tls;
    struct mb_url_host *hosts; /* copies; port filled in (5672 / 5671) */
    size_t nhosts;
    char *user, *password, *vhost;
    long prefetch;             /* basic.qos per subscription */
    long heartbeat_s;          /* 0: off */
    long connect_timeout_ms;
    long confirm_window;       /* max unconfirmed publishes on the wire */
    long max_message_bytes;    /* body limit checked before sending */
    long frame_max;
    long subscribe_timeout_ms; /* subscribe/declare wait for a connection */
    long reconnect_min_ms, reconnect_max_ms;
    long message_timeout_ms;   /* unsent message fails after this (0: never) */
    long rpc_timeout_ms;
    long close_timeout_ms;     /* the core's; bounds close and unsubscribe */
    bool quorum;               /* queue_type=quorum for group queues */
    long partitions;           /* partitions=N: a group is N queues (0: one queue) */
    long rebalance_ms;         /* partitioned: how often a member checks its share */
    bool unroutable_ok;        /* unroutable=ok: report success, log a warning */
    struct mb_amqp_qarg *qargs; /* x-… queue arguments */
    size_t nqargs;
    char *cacert, *cert, *key;
    bool verify_peer, verify_hostname;
};

/* Reads every option this backend knows from `url` (marking them used),
 * then checks that none is left unused. MSGBUS_ERR_CONFIG names a bad one. */
MB_HIDDEN msgbus_err_t mb_amqp_conf_parse(struct mb_url *url, struct mb_amqp_conf *c);
MB_HIDDEN void mb_amqp_conf_free(struct mb_amqp_conf *c);

/* "<topic>.<group>"; MSGBUS_ERR_INVALID when longer than AMQP's 255. */
MB_HIDDEN msgbus_err_t mb_amqp_group_queue(const char *topic, const char *group, char *buf,
                                           size_t n);

/* Partitioned groups (partitions=N, docs/amqp.md "Partitioned groups"):
 * part -1 gives the group's consistent-hash exchange "<topic>.<group>~hash",
 * MB_AMQP_PART_MEMBERS the queue its members are counted on
 * "<topic>.<group>~members", else partition queue "<topic>.<group>~<part>".
 * MSGBUS_ERR_INVALID when longer than 255 bytes. */
#define MB_AMQP_PART_MEMBERS (-2L)
MB_HIDDEN msgbus_err_t mb_amqp_part_name(const char *topic, const char *group, long part,
                                         char *buf, size_t n);
#define MB_AMQP_CHASH_TYPE "x-consistent-hash"
#define MB_AMQP_WHY_NO_CHASH                                                                  \
    "partitions= needs RabbitMQ's consistent-hash exchange: enable the plugin with "          \
    "'rabbitmq-plugins enable rabbitmq_consistent_hash_exchange' (on every node)"

/* The queue arguments table for a group queue (x-queue-type + x-… options).
 * Entries point into `c` and into `store` (numbers parsed); n <= cap. */
MB_HIDDEN size_t mb_amqp_queue_args(const struct mb_amqp_conf *c, amqp_table_entry_t *entries,
                                    size_t cap);

MB_HIDDEN extern const char *const mb_amqp_option_names[];

/* What a bus so configured guarantees (ops->capabilities): bits and the
 * reasons for the rest (docs/amqp.md "Capabilities"). */
MB_HIDDEN void mb_amqp_caps(const struct mb_amqp_conf *c, struct mb_caps *out);
/* Why not, for the refusals the backend makes itself too. */
#define MB_AMQP_WHY_NO_REPLAY                                                                   \
    "a RabbitMQ queue holds only what was routed to it while it existed, and acked messages " \
    "are gone: a group can only start at the end"
#define MB_AMQP_WHY_NO_LIST                                                                   \
    "AMQP 0-9-1 cannot list exchanges or queues (msgbus does not use the management "       \
    "plugin): name the topic and group"

/* ---- outgoing messages (amqp_codec.c) ------------------------------------ */

struct mb_amqp_out {
    struct mb_amqp_out *next;
    struct mb_confirm *token; /* the core's (NULL when the caller gave no callback) */
    bool internal;            /* msgbus's own republish of a nacked message: no confirm */
    uint64_t seq;             /* confirm sequence number once sent */
    int64_t queued_ms;        /* mb_mono_ms() when handed over */
    int64_t queued_us;        /* mb_mono_us() then: publish→confirm latency */
    int channel_errors;       /* publish-channel failures this message lived through */
    bool unroutable;
    char *return_text;        /* basic.return reply text (malloc) */
    const char *topic;        /* the exchange ("" for a republish) */
    const char *msg_id;
    amqp_bytes_t routing_key, body;
    amqp_basic_properties_t props;
    /* A republish acks its original once confirmed. */
    struct mb_backend_sub *orig_sub;
    unsigned orig_epoch;
    uint64_t orig_tag;
    /* table entries and strings follow in the same allocation */
};

/* How a publish writes the message as a CloudEvent (backend.h, "CloudEvents
 * on the wire"; docs/amqp.md "CloudEvents"). */
struct mb_amqp_ce {
    enum mb_ce_mode mode;
    /* MB_CE_BINARY: the attribute values (mb_ce_attrs); each non-NULL one
     * becomes a cloudEvents_<attr> string header, specversion "1.0" with
     * type and source. */
    const struct mb_ce_attrs *attrs;
    /* MB_CE_STRUCTURED: the body (mb_ce_structured's JSON) that replaces
     * the payload; content_type application/cloudevents+json. */
    const char *json;
    size_t json_len;
};

/* Builds the wire form of `m` in one allocation: exchange `exchange`,
 * routing key `rk` (NULL: m's key), attempt header when attempt > 1.
 * `copy`: msgbus's own republish (routed by queue name; the key rides in
 * msgbus-key). `ce` says how the message is a CloudEvent; NULL: binary
 * with the attributes the message itself has (id, type, source, subject,
 * time), what a retry copy or a forward of a received message carries, so
 * it reads back as it arrived. Every value msgbus writes in the headers
 * table is a string (Watermill and other string-only readers). Checks
 * every AMQP limit first — short strings of 255 bytes, the content header
 * within `frame_max` — and fails with mb_error set (MSGBUS_ERR_INVALID /
 * MSGBUS_ERR_TOO_LARGE naming the limit, or NOMEM), so a message that
 * cannot be encoded fails alone, on the calling thread. */
MB_HIDDEN msgbus_err_t mb_amqp_out_build(struct mb_amqp_out **out, const char *exchange,
                                         const void *rk, size_t rk_len, const msgbus_msg_t *m,
                                         int attempt, bool copy, size_t frame_max,
                                         const struct mb_amqp_ce *ce);
/* mb_amqp_out_build with ce NULL. */
MB_HIDDEN msgbus_err_t mb_amqp_out_new(struct mb_amqp_out **out, const char *exchange,
                                       const void *rk, size_t rk_len, const msgbus_msg_t *m,
                                       int attempt, bool copy, size_t frame_max);
/* Whether the built message's content header fits a frame of `frame_max`
 * (the I/O thread checks again against the size the broker negotiated). */
MB_HIDDEN bool mb_amqp_out_fits(const struct mb_amqp_out *o, size_t frame_max);
MB_HIDDEN void mb_amqp_out_free(struct mb_amqp_out *o);

/* Fills a received message from a content header, the delivery's exchange
 * and routing key. A delivery through the default exchange "" is msgbus's
 * own republished copy (routed by queue name). Ids and headers pass the
 * trust boundary (mb_msg_received_id / _header), CloudEvents attributes
 * under any prefix msgbus reads (cloudEvents_, cloudEvents:, ce-) go to
 * mb_msg_received_ce, foreign basic properties become headers
 * (content-type, amqp-correlation-id, ...). Returns false on out of
 * memory. */
MB_HIDDEN bool mb_amqp_decode(msgbus_msg_t *m, const amqp_basic_properties_t *p,
                              amqp_bytes_t exchange, amqp_bytes_t routing_key, bool redelivered);
/* The body has arrived (m->payload is complete): a structured CloudEvent
 * is unpacked (mb_msg_ce_unpack; a broken one is delivered as it came,
 * with msgbus-invalid-cloudevent). false on out of memory. */
MB_HIDDEN bool mb_amqp_decode_body(msgbus_msg_t *m);

/* ---- frames msgbus writes itself (amqp_wire.c) -------------------------------- */

/* Many publishes (or acks) encoded into one buffer and written with one
 * send()/sendmsg() — rabbitmq-c writes each frame with its own send(). The
 * bytes are those rabbitmq-c writes for the same calls. Plain TCP only: over
 * TLS rabbitmq-c owns the SSL object and writes itself. */
struct mb_amqp_wseg {
    const void *ext; /* the caller's bytes (a large body), or NULL: buf + off */
    size_t off, len;
};
struct mb_amqp_wire {
    unsigned char *buf;
    size_t len, cap;
    size_t covered; /* buf[0, covered) is in seg[] already */
    struct mb_amqp_wseg *seg;
    size_t nseg, segcap;
    size_t count; /* publishes / acks encoded since the last reset */
    size_t done;  /* bytes of it written (mb_amqp_wire_write_now ran short) */
};
/* Appends basic.publish, its content header and its body frames (of at
 * most frame_max - 8 bytes; none for an empty body), as amqp_basic_publish
 * would write them. A body over 2 KiB is not copied: it must stay put until
 * the write. Returns AMQP_STATUS_OK, or (w unchanged)
 * AMQP_STATUS_BAD_AMQP_DATA (a short string over 255 bytes),
 * AMQP_STATUS_TABLE_TOO_BIG (the header does not fit frame_max),
 * AMQP_STATUS_INVALID_PARAMETER (frame_max), AMQP_STATUS_NO_MEMORY. */
MB_HIDDEN int mb_amqp_wire_publish(struct mb_amqp_wire *w, amqp_channel_t ch,
                                   amqp_bytes_t exchange, amqp_bytes_t routing_key,
                                   bool mandatory, bool immediate,
                                   const amqp_basic_properties_t *props, amqp_bytes_t body,
                                   size_t frame_max);
/* Appends basic.ack (amqp_basic_ack's bytes). */
MB_HIDDEN int mb_amqp_wire_ack(struct mb_amqp_wire *w, amqp_channel_t ch, uint64_t tag,
                               bool multiple);
/* Bytes encoded and not yet written. */
MB_HIDDEN size_t mb_amqp_wire_bytes(const struct mb_amqp_wire *w);
/* Writes everything to the (non-blocking) socket `fd`, waiting in poll()
 * while it is full, and resets w. 0, or -errno (the connection is broken:
 * an unknown part was written). Blocks until written or failed, as
 * rabbitmq-c's own sends do; mb_amqp_kick's shutdown(2) ends the wait. */
MB_HIDDEN int mb_amqp_wire_write(struct mb_amqp_wire *w, int fd);
/* The same without waiting: -EAGAIN when the socket took only part of it
 * (what was written is remembered; the next write goes on from there). */
MB_HIDDEN int mb_amqp_wire_write_now(struct mb_amqp_wire *w, int fd);
MB_HIDDEN void mb_amqp_wire_reset(struct mb_amqp_wire *w);
MB_HIDDEN void mb_amqp_wire_free(struct mb_amqp_wire *w);

/* ---- subscriptions ---------------------------------------------------------- */

/* A delivered-but-not-settled tag, in delivery (= tag) order. */
struct mb_amqp_tag {
    uint64_t tag;
    uint8_t state; /* MB_AMQP_TAG_* */
};
enum { MB_AMQP_TAG_OPEN = 0, MB_AMQP_TAG_ACK_NOW = 1, MB_AMQP_TAG_DONE = 2 };

/* Content being assembled on one channel: method, then header, then body. */
struct mb_amqp_asm {
    int kind;              /* 0 none, 1 deliver, 2 return */
    msgbus_msg_t *msg;     /* deliver */
    uint64_t tag;
    bool redelivered;
    char *exchange;        /* the delivery's exchange ("": msgbus's own copy) */
    size_t ex_len;
    char *routing_key;
    size_t rk_len;
    size_t body_size, got;
    char *reply_text;      /* return */
    int reply_code;
};

struct mb_backend_sub {
    struct mb_backend *be;
    msgbus_sub_t *sub;
    char *topic;
    char *group;           /* NULL: broadcast */
    char queue[256];       /* queue name, server-named for broadcast */
    /* Partitioned group (conf.partitions > 0; docs/amqp.md "Partitioned
     * groups"): the subscription the core knows is a parent without a
     * channel of its own. Its children, one per partition queue, are
     * ordinary subscriptions (in be->subs) on channels of their own that
     * push into the same msgbus_sub_t; a received message's `partition`
     * names its child. */
    struct mb_backend_sub *parent;    /* child: its parent */
    struct mb_backend_sub **children; /* parent */
    size_t nchildren;
    uint16_t part;                    /* child: its partition */
    /* I/O thread, balancing (amqp_consume.c): */
    int64_t balance_at_ms;            /* parent: next round */
    uint32_t recent;                  /* child: deliveries since the last round */
    long in_app;                      /* child: handed to the application, not settled */
    bool draining;                    /* child: being given away */
    int64_t drain_since_ms;
    /* I/O thread only: */
    amqp_channel_t channel;   /* 0: not established on the current connection */
    unsigned epoch;           /* bumped every time it is (re)established */
    bool quorum;
    bool removed;
    /* msgbus_sub_pause: no consumer on the queue while set; the channel
     * stays open so its unsettled deliveries stay settleable (their tags
     * are the channel's). Every (re)establishment honours it. */
    bool paused;
    bool consuming;           /* our basic.consume is registered (ctag) */
    char ctag[256];           /* its consumer tag, as the broker named it */
    char mtag[256];           /* partition 0: its consumer on the members queue ("": none) */
    /* Not consuming on the current connection (the broker cancelled the
     * consumer, or re-subscribing failed): try again at resub_at_ms,
     * backing off like reconnects do. 0: nothing due. */
    int64_t resub_at_ms;
    long resub_backoff_ms;
    struct mb_amqp_tag *tags;
    size_t tag_head, tag_len, tag_cap;
    bool acks_pending;
    struct mb_amqp_asm as;
    msgbus_msg_t *batch_head, *batch_tail;
    size_t batch_n;
    struct mb_backend_sub *next;
};

/* ---- requests from application threads ------------------------------------------ */

enum mb_amqp_op_kind {
    MB_AMQP_OP_SETTLE,
    MB_AMQP_OP_DECLARE,
    MB_AMQP_OP_SUBSCRIBE,
    MB_AMQP_OP_UNSUBSCRIBE,
    MB_AMQP_OP_QUEUE_INFO, /* a subscription's queue counts, for its lag */
    MB_AMQP_OP_PAUSE,      /* msgbus_sub_pause / _resume: fire and forget */
    MB_AMQP_OP_GROUP_RESET, /* purge a group's queue (position "latest") */
    MB_AMQP_OP_INSPECT     /* a topic's exchange and a group's queue counts */
};

struct mb_amqp_op {
    struct mb_amqp_op *next;
    enum mb_amqp_op_kind kind;
    struct mb_backend_sub *sub;
    /* settle */
    uint64_t tag;
    unsigned epoch;
    enum mb_settle how;
    msgbus_msg_t *copy;   /* nack on a classic queue: what to republish */
    /* declare */
    char *topic, *group;
    /* pause: the state asked for */
    bool paused;
    /* group reset and inspect: copies of the names (the asker may stop
     * waiting and return), the group's queue ("" for the topic alone), and
     * what was found: the exchange, the queue's counts, this bus's own
     * members of the group that have no consumer on the queue right now
     * (paused, or re-subscribing), and how many messages a purge dropped */
    char exchange[256];
    bool exchange_found;
    uint32_t local_members;
    uint32_t purged;
    /* control result */
    int64_t deadline_ms;
    bool done;
    /* The asker stopped waiting (queue info past its timeout): whoever
     * finishes the request frees it. Under lock, like done. */
    bool abandoned;
    /* queue info: the queue asked about, whether it exists, its ready and
     * consumer counts, and the deliveries this subscription holds unacked */
    char queue[256];
    bool found;
    uint32_t ready, consumers;
    size_t unacked;
    msgbus_err_t result;
    char detail[MB_AMQP_DETAIL];
};

/* Topics whose exchange exists on the current connection. */
struct mb_amqp_topic {
    char *name;
    int64_t failed_until_ms; /* declare failed: fail publishes until then */
    char *failure;
    struct mb_amqp_topic *next;
};

/* A (topic, group) declared by msgbus_declare, re-declared on reconnect. */
struct mb_amqp_decl {
    char *topic, *group;
    struct mb_amqp_decl *next;
};

/* The connection's figures for msgbus_stats_json (ops->stats). Only the
 * I/O thread writes them (relaxed stores, once per loop round or when an
 * event happens, never per message on a line another thread writes); a
 * snapshot reads them without a lock. */
struct mb_amqp_stats {
    _Atomic bool connected;
    _Atomic bool blocked;            /* connection.blocked (resource alarm) */
    _Atomic long host_index;         /* the host connected to (or last tried) */
    _Atomic long channels;           /* channels open on the connection */
    _Atomic long in_flight;          /* publishes written, not yet confirmed */
    _Atomic long heartbeat_s;        /* negotiated (the option's until connected) */
    _Atomic long frame_max;          /* negotiated */
    _Atomic unsigned long lost;      /* connections lost since open */
    _Atomic unsigned long attempts;  /* reconnect attempts since open */
    _Atomic int64_t down_since_ms;   /* mb_mono_ms() of the loss; 0: connected */
    _Atomic uint64_t frames_in;      /* frames read */
    _Atomic uint64_t sent;           /* messages written (resends and retry copies too) */
    _Atomic uint64_t sent_by_caller; /* of them, by the publishing thread itself */
};

struct mb_backend {
    msgbus_t *bus;
    struct mb_amqp_conf conf;

    pthread_t thread;
    bool thread_started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int wake_fd;
    /* under lock: */
    bool wake_pending;
    /* Settle requests the I/O thread has applied, kept for the next
     * msgbus_ack to reuse (at most MB_AMQP_OP_POOL): a request per ack
     * was a malloc on the application's thread and a free on the I/O
     * thread, which glibc serves slowly (~470 instructions a calloc). */
    struct mb_amqp_op *op_pool;
    size_t op_pool_n;
    bool stopping;
    struct mb_amqp_out *pub_head, *pub_tail;
    struct mb_amqp_op *op_head, *op_tail;
    /* op_head holds a request other than a settle (a pause, a declare…):
     * a publish made after it must not overtake it to the socket, so
     * mb_amqp_publish_now leaves it to the I/O thread. */
    bool ctl_queued;
    /* The connection's socket while one exists (-1: none), published so
     * that a closing thread can shutdown(2) it: a thread blocked inside a
     * rabbitmq-c RPC on a stalled link cannot be asked to stop, but its
     * read fails at once when the socket is shut down. The I/O thread
     * clears it under `lock` before destroying the connection, so the fd
     * shut down is always the connection's own. */
    int sockfd;
    bool kick_pending; /* shut down every socket until the loop comes round */
    bool exited;       /* the I/O thread has finished its shutdown */

    /* Held by the I/O thread except while it sleeps in poll(). A
     * publishing thread that takes it (trylock, under `lock`) owns every
     * "I/O thread only" field below for as long as it holds it, and may
     * write its publish itself (mb_amqp_publish_now). Order: io_lock, then
     * lock; a thread holding `lock` only ever tries io_lock. */
    pthread_mutex_t io_lock;

    /* I/O thread only (and open, before the thread starts): */
    amqp_connection_state_t conn;
    /* A publishing thread's write failed (errno): the connection is lost
     * at the I/O thread's next round. */
    int wire_err;
    /* Applied settle requests on their way to op_pool (moved there when
     * the thread next takes the queues, under the lock it takes anyway). */
    struct mb_amqp_op *op_spare, *op_spare_tail;
    size_t op_spare_n;
    size_t host_index;
    int64_t next_connect_ms;
    long backoff_ms;
    bool pub_channel_ok, ctl_channel_ok;
    struct mb_amqp_out *send_head, *send_tail;
    struct mb_amqp_out *infl_head, *infl_tail;
    size_t ninflight;
    uint64_t next_seq;
    struct mb_amqp_asm ret_as; /* basic.return on the publish channel */
    struct mb_amqp_topic *topics;
    struct mb_amqp_decl *decls;
    struct mb_backend_sub *subs;
    struct mb_amqp_op *waiting; /* control requests waiting for a connection */
    uint16_t next_channel;
    int channel_max;
    bool corked;
    /* Publishes and acks encoded by msgbus (amqp_wire.c) and written with
     * one send per pass; plain TCP only (conf.tls: rabbitmq-c's calls). */
    struct mb_amqp_wire wire;
    unsigned long reconnects; /* connections lost since open (for the log) */
    char last_error[MB_AMQP_DETAIL]; /* why the connection was lost or not made */
    /* Connection state reporting (mb_bus_state): when the connection was
     * lost, reconnect attempts since, whether DOWN was said. */
    int64_t lost_ms;
    unsigned long outage_attempts;
    bool said_down;
    bool blocked;
    uint64_t frames_in, sent; /* private counts, published into st */
    uint64_t sent_by_caller;  /* mb_amqp_publish_now's (with io_lock) */
    /* The broker has no x-consistent-hash exchange type (its plugin is
     * off): partitioned groups fail with MSGBUS_ERR_UNSUPPORTED. */
    bool chash_missing;

    /* Apart from the fields above and below, which other threads write. */
    char pad_st[64];
    struct mb_amqp_stats st;
    char pad_end[64];
};

/* ---- the I/O thread (amqp_io.c) -------------------------------------------------- */

/* A subscription that could not be (re)established on a live connection,
 * or whose consumer the broker cancelled: re-subscribe later, with backoff,
 * instead of staying DOWN until the next connection loss. */
MB_HIDDEN void mb_amqp_resub_later(struct mb_backend *be, struct mb_backend_sub *bs,
                                   const char *why);
/* (Re)establishes bs on the live connection: UP "resubscribed", or again
 * later with backoff. false when the connection was lost meanwhile
 * (mb_amqp_conn_lost has run: the caller stops). */
MB_HIDDEN bool mb_amqp_resubscribe(struct mb_backend *be, struct mb_backend_sub *bs);
/* Re-subscribes those whose time has come (I/O thread, connected). */
MB_HIDDEN void mb_amqp_resub_due(struct mb_backend *be);

/* Connects to the first host that answers (failover in URL order starting
 * at be->host_index) and opens the publish and control channels. On failure
 * returns the error with mb_error set. Called by open (before the thread)
 * and by the thread when reconnecting. */
MB_HIDDEN msgbus_err_t mb_amqp_connect(struct mb_backend *be);
MB_HIDDEN void *mb_amqp_io_main(void *arg);
/* Wakes the I/O thread unless a wake-up is already pending (call with lock
 * held; returns whether the caller must write the eventfd after unlock). */
MB_HIDDEN bool mb_amqp_need_wake(struct mb_backend *be);
MB_HIDDEN void mb_amqp_wake(struct mb_backend *be);
/* Publishing on the caller's thread: with be->lock held and nothing queued
 * before o, writes o to the socket itself when the I/O thread sleeps in
 * poll() with little in flight (plain TCP, the topic's exchange known, the
 * window open, no control request queued). true: o is in flight (or handed to the I/O thread) and
 * be->lock is released; false: nothing changed, be->lock still held, o is
 * to be queued as usual. */
MB_HIDDEN bool mb_amqp_publish_now(struct mb_backend *be, struct mb_amqp_out *o);
/* Publishes the connection's socket (-1: none) for mb_amqp_kick; a socket
 * published while a kick is pending is shut down at once. */
MB_HIDDEN void mb_amqp_set_sockfd(struct mb_backend *be, int fd);
/* From any thread: makes whatever the I/O thread is blocked in on the
 * socket fail now (the connection is then lost and, unless stopping,
 * re-established). Stays pending until the I/O loop takes its next
 * requests, so a connect in progress is cut short too. */
MB_HIDDEN void mb_amqp_kick(struct mb_backend *be, const char *why);
/* Copies the I/O thread's figures into be->st (I/O thread). */
MB_HIDDEN void mb_amqp_publish_stats(struct mb_backend *be);

/* Classifies a failed RPC reply; writes the detail; on a channel or
 * connection close answers the broker's close. *conn_lost says whether the
 * connection is gone. */
MB_HIDDEN msgbus_err_t mb_amqp_reply_error(struct mb_backend *be, amqp_rpc_reply_t r,
                                           amqp_channel_t ch, const char *what, char *detail,
                                           size_t n, bool *conn_lost);
MB_HIDDEN void mb_amqp_conn_lost(struct mb_backend *be, const char *why);
/* Writes the publishes and acks encoded in be->wire (one send); `what`
 * names the write in the reason when it fails. false: the connection was
 * lost (mb_amqp_conn_lost has run). */
MB_HIDDEN bool mb_amqp_wire_flush(struct mb_backend *be, const char *what);
/* Declares the topic's exchange on `ch` (RPC). */
MB_HIDDEN msgbus_err_t mb_amqp_declare_exchange(struct mb_backend *be, amqp_channel_t ch,
                                                const char *topic, char *detail, size_t n,
                                                bool *conn_lost);

/* amqp_conn.c helpers used by the loop. */
MB_HIDDEN void mb_amqp_send_close_ok(struct mb_backend *be, amqp_channel_t ch);
MB_HIDDEN msgbus_err_t mb_amqp_open_channel(struct mb_backend *be, amqp_channel_t ch,
                                            bool confirm, char *detail, size_t n,
                                            bool *conn_lost);
MB_HIDDEN bool mb_amqp_ensure_ctl(struct mb_backend *be, char *detail, size_t n,
                                  bool *conn_lost);
MB_HIDDEN void mb_amqp_topics_clear(struct mb_backend *be);
/* The topic's exchange exists on this connection (declared once per
 * connection); false with a detail when publishes to it must fail. */
/* The topic's exchange is declared on this connection (no broker call). */
MB_HIDDEN bool mb_amqp_topic_known(struct mb_backend *be, const char *topic);
MB_HIDDEN bool mb_amqp_topic_ready(struct mb_backend *be, const char *topic, char *detail,
                                   size_t n);

/* ---- the consumer half (amqp_consume.c) ---------------------------------------------- */

MB_HIDDEN msgbus_err_t mb_amqp_sub_establish(struct mb_backend *be, struct mb_backend_sub *bs,
                                             char *detail, size_t n, bool *conn_lost);
MB_HIDDEN msgbus_err_t mb_amqp_declare_group(struct mb_backend *be, amqp_channel_t ch,
                                             const char *topic, const char *group, char *queue,
                                             size_t qn, char *detail, size_t n, bool *conn_lost);
MB_HIDDEN void mb_amqp_sub_reset(struct mb_backend *be, struct mb_backend_sub *bs);
MB_HIDDEN struct mb_backend_sub *mb_amqp_sub_by_channel(struct mb_backend *be,
                                                        amqp_channel_t ch);
/* Handles one frame on a subscription channel. */
MB_HIDDEN void mb_amqp_sub_frame(struct mb_backend *be, struct mb_backend_sub *bs,
                                 const amqp_frame_t *f);
/* Applies one settle request (I/O thread) and recycles it. */
MB_HIDDEN void mb_amqp_settle_apply(struct mb_backend *be, struct mb_amqp_op *op);
/* Keeps an applied settle request for reuse, or frees it (I/O thread). */
MB_HIDDEN void mb_amqp_op_recycle(struct mb_backend *be, struct mb_amqp_op *op);
/* Frees a list of applied settle requests (pool or spare: nothing else
 * points into them). */
MB_HIDDEN void mb_amqp_ops_free(struct mb_amqp_op *list);
/* Answers a queue info request: a passive queue.declare on the control
 * channel (I/O thread, connected). Returns the error with `detail` set. */
MB_HIDDEN msgbus_err_t mb_amqp_queue_info(struct mb_backend *be, struct mb_amqp_op *op,
                                          char *detail, size_t n, bool *conn_lost);
/* msgbus_sub_pause / _resume on the I/O thread: basic.cancel or
 * basic.consume on the subscription's own channel (kept open). */
MB_HIDDEN void mb_amqp_pause_apply(struct mb_backend *be, struct mb_amqp_op *op);
/* Group reset (purge) and inspect: passive declares on the control channel
 * (I/O thread, connected). Return the error with `detail` set. */
MB_HIDDEN msgbus_err_t mb_amqp_group_reset_run(struct mb_backend *be, struct mb_amqp_op *op,
                                               char *detail, size_t n, bool *conn_lost);
MB_HIDDEN msgbus_err_t mb_amqp_inspect_run(struct mb_backend *be, struct mb_amqp_op *op,
                                           char *detail, size_t n, bool *conn_lost);
/* Partitioned subscriptions: how many partitions this member should hold
 * at most with `members` members (pure). */
MB_HIDDEN size_t mb_amqp_part_share(size_t nparts, size_t members);
/* Balancing partitioned subscriptions: rounds whose time has come, and
 * partitions being given away whose application side is done (I/O
 * thread, connected). */
MB_HIDDEN void mb_amqp_balance_due(struct mb_backend *be);
/* A partitioned subscription (a parent): declares the group and
 * establishes every child, adding them to be->subs; on failure none is
 * left there. */
MB_HIDDEN msgbus_err_t mb_amqp_parent_establish(struct mb_backend *be,
                                                struct mb_backend_sub *bs, char *detail,
                                                size_t n, bool *conn_lost);
/* Takes a subscription (a parent: every child) off the connection and out
 * of be->subs, handing its unacked messages back. */
MB_HIDDEN void mb_amqp_sub_remove(struct mb_backend *be, struct mb_backend_sub *bs);
/* Delivered-tag bookkeeping (pure, unit-tested). */
MB_HIDDEN void mb_amqp_tag_push(struct mb_backend_sub *bs, uint64_t tag);
MB_HIDDEN struct mb_amqp_tag *mb_amqp_tag_find(struct mb_backend_sub *bs, uint64_t tag);
/* Turns the tags marked ACK_NOW into acks: *multi (0: none) is the tag to
 * ack with multiple=true — the last one in the run of settled tags at the
 * front — and up to `cap` tags after an unsettled one go into singles[]
 * (returned count). Marks them done. Call again while it returns `cap`. */
MB_HIDDEN size_t mb_amqp_ack_plan(struct mb_backend_sub *bs, uint64_t *multi,
                                  uint64_t *singles, size_t cap);
/* Sends the batched acks of every subscription. */
MB_HIDDEN void mb_amqp_flush_acks(struct mb_backend *be);
/* Hands assembled messages to the core, one push per subscription. */
MB_HIDDEN void mb_amqp_push_batches(struct mb_backend *be);
/* A republish of a nacked message finished: ack (ok) or requeue its original. */
MB_HIDDEN void mb_amqp_republish_done(struct mb_backend *be, struct mb_amqp_out *o, bool ok);
MB_HIDDEN void mb_amqp_asm_clear(struct mb_amqp_asm *as);

#endif
