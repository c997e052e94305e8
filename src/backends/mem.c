/*
 * mem.c — the in-process broker behind mem:// and mem://name.
 *
 * A test transport users can rely on, so it implements the whole model of
 * docs/semantics.md rather than a shortcut:
 *  - a topic fans out to its groups; a group keeps its messages from the
 *    moment it is declared or first subscribed (like a durable queue);
 *  - members of a group share its messages; each has a prefetch window;
 *  - per-key order holds across members: while member A has unsettled
 *    messages with key K, further K messages go only to A ("key ownership");
 *  - ack removes; nack and a member's close put messages back in their
 *    original position, delivered again with the attempt raised;
 *  - a broadcast subscriber has a private group that dies with it.
 * Buses opened on the same name share one broker, which lives while at
 * least one bus is open on it (the registry of named brokers is process
 * state by nature, like the backend registry).
 *
 * What is kept, and for how long — memory follows what can still be
 * received:
 *  - a message lives while a group holds it (pending or in flight); the
 *    last group to ack it frees it (it is shared, not copied per group);
 *  - a broadcast subscriber's private group, with all it holds, is freed
 *    when the subscriber closes;
 *  - a named group lives as long as its broker, also with no member and
 *    nothing pending: it is a durable queue, and keeps what is published
 *    while nobody is subscribed (msgbus_declare's promise, and what a
 *    RabbitMQ durable queue or a Kafka group's committed offset does).
 *    Freeing it would make mem drop what the real brokers keep. An idle
 *    group costs ~100 bytes and its name (25k: 2.8 MB, test_mem.c); its
 *    key table exists only while members hold keyed messages;
 *  - a topic exists only while it has a group: a publish to a topic without
 *    groups keeps nothing (RabbitMQ drops it likewise), and the topic goes
 *    with its last broadcast group;
 *  - a broker is freed, with everything in it, when its last bus closes.
 * Topics, groups and held keys are found through hash tables that grow and
 * shrink with their contents, so lookups stay O(1) with 25k groups.
 *
 * Retention and positions (issue 20), off by default:
 *  - URL option retain=N (0..MB_MEM_RETAIN_MAX, default 0) makes each topic
 *    keep its last N published messages after every group is done with
 *    them, so a new group or a broadcast subscriber can start at earliest
 *    or at a time (option start=) and msgbus_group_reset can move a group
 *    back. The ring holds shared references, not copies: a retained
 *    message costs one ring slot (16 bytes) plus, once no group holds it
 *    any more, its own clone (~250 bytes + payload, key and headers). So
 *    retain=N costs up to N × (that) per topic ever published to — with
 *    retain > 0 a topic is created by its first publish and lives, with
 *    its ring, as long as the broker. The ring grows by doubling up to N,
 *    so a quiet topic costs what it holds. A message falling out of the
 *    ring is freed when no group holds it either.
 *  - retain= belongs to the broker (like a Kafka topic's retention), not
 *    to one bus: the first bus on a name sets it; a later bus on the name
 *    that gives another value is refused (MSGBUS_ERR_CONFIG), one that
 *    gives none shares the broker's.
 *  - A position is a choice among the retained messages: earliest → all
 *    of them; a time → those whose timestamp (msgbus_msg_timestamp) is at
 *    or after it — a filter, not a seek, since applications may set
 *    timestamps out of order. A group that exists keeps its position; a
 *    reset replaces the group's pending list by that choice (pending
 *    messages no longer retained are dropped by the reset — the operator
 *    asked for that position, and a reset is refused while members hold
 *    anything).
 *  - A paused member is skipped by dispatch (its window frozen; keys it
 *    holds stay its own, so other members do not overtake it).
 *
 * Faults on purpose (issue 24, docs/testing.md), off by default: URL
 * options fault.* make one bus misbehave the way real brokers do, so users
 * can test their handlers without a broker and a fault proxy:
 *  - fault.dup=P: a delivery is followed by a copy of the same message
 *    (same id and attempt) right behind it in its key's order;
 *  - fault.redeliver=P: an ack is lost — it returns MSGBUS_OK but the
 *    message stays with the group and comes again, attempt raised, at its
 *    place in the group's order (so possibly after later messages of its
 *    key that were already delivered, as after a real broker's requeue);
 *  - fault.confirm_fail=P: a publish is refused by the "broker": the
 *    message is NOT stored, and its confirm says MSGBUS_ERR_BROKER with a
 *    text naming the injected fault;
 *  - fault.confirm_delay_ms=D, fault.jitter_ms=J: a confirm arrives D plus
 *    0..J ms after the publish (the message is stored at once; confirms
 *    keep publish order, as on Kafka and RabbitMQ);
 *  - fault.disconnect_every=N: after every N-th operation of the bus (a
 *    publish stored, a settle done) its connection is lost: state
 *    RECONNECTING, every unsettled message of its subscriptions goes back
 *    to its group (other members may take it) and what the core holds for
 *    the application but has not handed over is dropped; a later settle of
 *    a message delivered before the loss is ignored (MSGBUS_OK, as Kafka
 *    and RabbitMQ do); fault.reconnect_ms later (default 20) the bus is UP
 *    again and its subscriptions receive again.
 * Decisions come from fault.seed (default 1), one stream per fault kind,
 * so the same seed and the same sequence of calls give the same faults.
 * The faults belong to the bus that names them (its publishes and its
 * subscriptions), not to the named broker. A bus with faults has a thread
 * of its own for delayed confirms and reconnects.
 *
 * One mutex per broker guards everything in it; delivery to the core's
 * queues happens in one batch per member per dispatch pass.
 */
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "backends/backend.h"

#define MB_MEM_SCAN_LIMIT 4096 /* pending entries examined per dispatch */
#define MB_MEM_TABLE_MIN 8     /* buckets of a table that holds anything */
#define MB_MEM_RETAIN_MAX 1000000L /* retain= ceiling: up to ~16 MB of ring per topic */
#define MB_MEM_RING_MIN 16         /* ring slots of a topic's first retained message */

/* A named thing in a hash table: topics, groups, held keys. Embedded first
 * in each, so a node pointer is a pointer to its owner. */
struct mb_mem_node {
    struct mb_mem_node *hnext;
    const unsigned char *key; /* the owner's name or key bytes */
    uint32_t len;
    uint32_t hash;
};

/* Chained buckets, a power of two; no buckets at all while empty, so an idle
 * group's key table costs nothing. */
struct mb_mem_table {
    struct mb_mem_node **buckets;
    uint32_t nbuckets, count;
};

struct mb_mem_data { /* one published message, shared by every group */
    _Atomic long refs;
    msgbus_msg_t *msg;
};

struct mb_mem_entry { /* the message's place in one group */
    uint64_t seq;
    struct mb_mem_data *data;
    int deliveries;
    uint64_t delivery_id;
    struct mb_backend_sub *owner; /* while in flight */
    struct mb_mem_entry *prev, *next;
    bool copy; /* a duplicate made by fault.dup: never duplicated again */
};

struct mb_mem_keyown { /* a key some member holds unsettled messages of */
    struct mb_mem_node node;
    struct mb_backend_sub *owner;
    long count;
    unsigned char key[];
};

struct mb_mem_group {
    struct mb_mem_node node; /* in its topic's table; unused when broadcast */
    struct mb_mem_topic *topic;
    struct mb_mem_entry *head, *tail; /* pending, by seq */
    size_t npending;                  /* entries in that list (stats: lag) */
    struct mb_backend_sub *members;
    struct mb_mem_table keys;
    struct mb_mem_group *prev, *next; /* every group of the topic */
    unsigned rr;
    bool named;        /* false: a broadcast subscriber's private group */
    char name[];
};

struct mb_mem_retained { /* one slot of a topic's ring */
    struct mb_mem_data *data; /* one reference, the ring's */
    uint64_t seq;
};

struct mb_mem_topic {
    struct mb_mem_node node;
    struct mb_mem_table named; /* named groups, by name */
    struct mb_mem_group *groups; /* all of them, broadcast ones too */
    size_t ngroups;
    /* The last `retain` messages (oldest at ring[first]), when the broker
     * retains; the ring grows by doubling up to retain slots. */
    struct mb_mem_retained *ring;
    size_t ring_cap, ring_first, nretained;
    char name[];
};

struct mb_mem_broker {
    char *name;
    long refs;
    long retain; /* retain= of the first bus on this name; fixed for life */
    pthread_mutex_t mu;
    struct mb_mem_table topics;
    uint64_t next_seq;
    uint64_t next_delivery;
    struct mb_mem_broker *next;
};

/* A confirm waiting for its time (fault.confirm_delay_ms / jitter_ms). */
struct mb_mem_delayed {
    struct mb_confirm *token;
    int64_t due_us, published_us;
    msgbus_err_t status;
    char *error; /* NULL on success */
    struct mb_mem_delayed *next;
};

/* One bus's fault.* options and their state (see the top of this file). */
struct mb_mem_faults {
    /* As configured; fixed after open. */
    double dup, confirm_fail, redeliver;
    long disconnect_every, reconnect_ms, delay_ms, jitter_ms;
    uint64_t seed;
    /* Under the broker's lock: */
    uint64_t rng_dup, rng_redeliver;
    long ops;           /* publishes stored and settles done since the last loss */
    bool down;          /* between a connection loss and its reconnect */
    uint64_t lost_upto; /* deliveries with an id up to this one went with the connection */
    uint64_t n_dup, n_redeliver, n_disconnect, n_settle_ignored;
    /* Under mu: */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t rng_fail, rng_jitter;
    uint64_t n_fail, n_delayed;
    int64_t last_due_us;
    struct mb_mem_delayed *head, *tail; /* by due time */
    long losses;             /* connection losses the thread has yet to report */
    int64_t reconnect_at_us; /* 0: no reconnect due */
    bool stop;
    bool threaded;
    pthread_t thread;
};

struct mb_backend {
    msgbus_t *bus;
    struct mb_mem_broker *broker;
    long prefetch;
    long max_bytes;
    struct mb_backend_sub *subs; /* this bus's subscriptions (broker lock) */
    struct mb_mem_faults *f;     /* NULL: no fault.* option (the usual case) */
};

struct mb_backend_sub {
    struct mb_backend *be;
    struct mb_mem_group *group;
    msgbus_sub_t *sub;
    long prefetch;
    struct mb_mem_entry *inflight; /* doubly linked, unordered */
    long ninflight;
    msgbus_msg_t *batch_head, *batch_tail; /* built during a dispatch */
    size_t batch_len;
    bool paused; /* msgbus_sub_pause: dispatch hands it nothing */
    struct mb_backend_sub *next;
    struct mb_backend_sub *be_next; /* in be->subs */
};

static pthread_mutex_t mb_mem_registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct mb_mem_broker *mb_mem_brokers;

/* ------------------------------------------------------- hash tables */

static uint32_t mb_mem_hash(const void *key, size_t n)
{
    const unsigned char *k = key;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ k[i]) * 1099511628211ull;
    return (uint32_t)(h ^ (h >> 32));
}

static void mb_mem_node_init(struct mb_mem_node *n, const void *key, size_t len)
{
    n->key = key;
    n->len = (uint32_t)len;
    n->hash = mb_mem_hash(key, len);
}

static struct mb_mem_node *mb_mem_table_find(const struct mb_mem_table *t, const void *key,
                                             size_t len)
{
    if (!t->count)
        return NULL;
    uint32_t h = mb_mem_hash(key, len);
    for (struct mb_mem_node *n = t->buckets[h & (t->nbuckets - 1)]; n; n = n->hnext)
        if (n->hash == h && n->len == len && memcmp(n->key, key, len) == 0)
            return n;
    return NULL;
}

/* Moves every node into `nbuckets` buckets; false (table unchanged) when out
 * of memory. */
static bool mb_mem_table_resize(struct mb_mem_table *t, uint32_t nbuckets)
{
    struct mb_mem_node **nb = calloc(nbuckets, sizeof *nb);
    if (!nb)
        return false;
    for (uint32_t i = 0; i < t->nbuckets; i++)
        for (struct mb_mem_node *n = t->buckets[i], *next; n; n = next) {
            next = n->hnext;
            n->hnext = nb[n->hash & (nbuckets - 1)];
            nb[n->hash & (nbuckets - 1)] = n;
        }
    free(t->buckets);
    t->buckets = nb;
    t->nbuckets = nbuckets;
    return true;
}

/* Adds `n` (not in the table). False when out of memory. Growing is only
 * for speed: if it fails, the node goes into a longer chain. */
static bool mb_mem_table_add(struct mb_mem_table *t, struct mb_mem_node *n)
{
    if (t->count == UINT32_MAX / 2)
        return false;
    if (!t->buckets && !mb_mem_table_resize(t, MB_MEM_TABLE_MIN))
        return false;
    if (t->count >= t->nbuckets)
        mb_mem_table_resize(t, t->nbuckets * 2);
    struct mb_mem_node **b = &t->buckets[n->hash & (t->nbuckets - 1)];
    n->hnext = *b;
    *b = n;
    t->count++;
    return true;
}

static void mb_mem_table_remove(struct mb_mem_table *t, struct mb_mem_node *n)
{
    for (struct mb_mem_node **pp = &t->buckets[n->hash & (t->nbuckets - 1)]; *pp;
         pp = &(*pp)->hnext)
        if (*pp == n) {
            *pp = n->hnext;
            t->count--;
            break;
        }
    n->hnext = NULL;
    if (t->count == 0) { /* an empty table holds no memory */
        free(t->buckets);
        t->buckets = NULL;
        t->nbuckets = 0;
    } else if (t->nbuckets > MB_MEM_TABLE_MIN && t->count < t->nbuckets / 8) {
        mb_mem_table_resize(t, t->nbuckets / 4); /* best effort, like growing */
    }
}

/* ------------------------------------------------------------ helpers */

static void mb_mem_data_unref(struct mb_mem_data *d)
{
    if (atomic_fetch_sub(&d->refs, 1) == 1) {
        msgbus_msg_free(d->msg);
        free(d);
    }
}

static struct mb_mem_keyown *mb_mem_key_find(struct mb_mem_group *g, const msgbus_msg_t *m)
{
    return (struct mb_mem_keyown *)mb_mem_table_find(&g->keys, m->key, m->key_len);
}

/* Records that `owner` holds one more (delta +1) or one fewer (-1) message
 * with this key. Returns false when out of memory. */
static bool mb_mem_key_adjust(struct mb_mem_group *g, const msgbus_msg_t *m,
                              struct mb_backend_sub *owner, long delta)
{
    if (!m->key)
        return true;
    struct mb_mem_keyown *k = mb_mem_key_find(g, m);
    if (!k) {
        if (delta < 0)
            return true;
        if (!(k = calloc(1, sizeof *k + m->key_len)))
            return false;
        memcpy(k->key, m->key, m->key_len);
        mb_mem_node_init(&k->node, k->key, m->key_len);
        if (!mb_mem_table_add(&g->keys, &k->node)) {
            free(k);
            return false;
        }
    }
    k->owner = owner;
    k->count += delta;
    if (k->count <= 0) {
        mb_mem_table_remove(&g->keys, &k->node);
        free(k);
    }
    return true;
}

static void mb_mem_pending_insert(struct mb_mem_group *g, struct mb_mem_entry *e)
{
    /* Requeued entries are old, so they usually land near the head. */
    struct mb_mem_entry *at = g->head;
    while (at && at->seq < e->seq)
        at = at->next;
    e->next = at;
    e->prev = at ? at->prev : g->tail;
    if (e->prev)
        e->prev->next = e;
    else
        g->head = e;
    if (at)
        at->prev = e;
    else
        g->tail = e;
    g->npending++;
}

static void mb_mem_pending_remove(struct mb_mem_group *g, struct mb_mem_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        g->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        g->tail = e->prev;
    e->prev = e->next = NULL;
    g->npending--;
}

static void mb_mem_inflight_remove(struct mb_backend_sub *bs, struct mb_mem_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        bs->inflight = e->next;
    if (e->next)
        e->next->prev = e->prev;
    e->prev = e->next = NULL;
    bs->ninflight--;
}

/* Whether dispatch may hand `m` one more message: a paused member's window
 * is frozen, whatever room it has, and so is that of a member whose bus has
 * lost its connection on purpose (fault.disconnect_every). */
static bool mb_mem_has_room(const struct mb_backend_sub *m)
{
    return !m->paused && m->ninflight < m->prefetch && !(m->be->f && m->be->f->down);
}

/* ---------------------------------------------- fault decisions (seeded) */

/* splitmix64: small, fast, and the same numbers on every platform. */
static uint64_t mb_mem_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* True with probability p; p = 0 draws nothing, so a fault that is off
 * leaves the other streams as they were. */
static bool mb_mem_chance(uint64_t *s, double p)
{
    return p > 0 && (double)(mb_mem_rand(s) >> 11) * 0x1.0p-53 < p;
}

/* Stream `k` of `seed`: each fault kind draws from its own, so turning one
 * fault on does not move the decisions of another. */
static uint64_t mb_mem_stream(uint64_t seed, unsigned k)
{
    uint64_t s = seed ^ (0xD1B54A32D192ED03ull * (k + 1));
    mb_mem_rand(&s);
    return s;
}

static struct mb_backend_sub *mb_mem_least_loaded(struct mb_mem_group *g)
{
    size_t n = 0;
    for (struct mb_backend_sub *m = g->members; m; m = m->next)
        n++;
    if (n == 0)
        return NULL;
    struct mb_backend_sub *best = NULL;
    size_t start = g->rr++ % n, i = 0;
    /* Two passes over the list starting at `start`, so ties rotate. */
    for (size_t pass = 0; pass < 2; pass++) {
        i = 0;
        for (struct mb_backend_sub *m = g->members; m; m = m->next, i++) {
            if ((pass == 0 && i < start) || (pass == 1 && i >= start))
                continue;
            if (mb_mem_has_room(m) && (!best || m->ninflight < best->ninflight))
                best = m;
        }
    }
    return best;
}

/* Builds the received message for one delivery of `e` to `bs`. */
static msgbus_msg_t *mb_mem_make_msg(struct mb_backend_sub *bs, struct mb_mem_entry *e)
{
    const msgbus_msg_t *src = e->data->msg;
    msgbus_msg_t *m = mb_msg_new_received(bs->sub);
    if (!m)
        return NULL;
    m->payload = src->payload; /* borrowed from the shared data */
    m->len = src->len;
    m->payload_borrowed = true;
    atomic_fetch_add(&e->data->refs, 1);
    m->backend_data = e->data;
    if ((src->key && !(m->key = mb_key_dup(src->key, src->key_len))) ||
        (src->id && !(m->id = mb_strdup(src->id))) || !mb_ce_copy(m, src))
        goto fail;
    m->key_len = src->key_len;
    for (size_t i = 0; i < src->nheaders; i++)
        if (mb_msg_put_header(m, src->headers[i].name, strlen(src->headers[i].name),
                              src->headers[i].value, strlen(src->headers[i].value)))
            goto fail;
    m->timestamp = src->timestamp;
    m->attempt = e->deliveries;
    m->offset = (int64_t)e->delivery_id;
    m->tag = (uint64_t)(uintptr_t)e;
    return m;
fail:
    msgbus_msg_free(m);
    return NULL;
}

/* Hands pending messages of `g` to members with room. Broker lock held. */
static void mb_mem_dispatch(struct mb_mem_broker *b, struct mb_mem_group *g)
{
    if (!g->members)
        return;
    /* With every member's window full nothing can move: stop before
     * scanning, or a long backlog makes each publish walk it. */
    long room = 0;
    for (struct mb_backend_sub *m = g->members; m; m = m->next)
        if (mb_mem_has_room(m))
            room += m->prefetch - m->ninflight;
    size_t scanned = 0;
    struct mb_mem_entry *e = g->head;
    while (e && room > 0 && scanned++ < MB_MEM_SCAN_LIMIT) {
        struct mb_mem_entry *next = e->next;
        const msgbus_msg_t *src = e->data->msg;
        struct mb_backend_sub *to = NULL;
        struct mb_mem_keyown *ko = src->key ? mb_mem_key_find(g, src) : NULL;
        if (ko) {
            to = ko->owner;
            if (!mb_mem_has_room(to)) {
                e = next; /* held back behind its key's owner (full or paused) */
                continue;
            }
        } else {
            to = mb_mem_least_loaded(g);
            if (!to)
                break; /* every member is full */
        }
        e->deliveries++;
        e->delivery_id = ++b->next_delivery;
        msgbus_msg_t *m = mb_mem_make_msg(to, e);
        if (!m || !mb_mem_key_adjust(g, src, to, +1)) {
            if (m) {
                m->state = MB_MSG_ACKED; /* never handed out */
                msgbus_msg_free(m);
            }
            e->deliveries--;
            mb_log(MSGBUS_LOG_ERROR, "mem: out of memory delivering on '%s'", g->topic->name);
            break; /* stays pending; retried on the next dispatch */
        }
        struct mb_mem_faults *tf = to->be->f;
        if (tf && !e->copy && mb_mem_chance(&tf->rng_dup, tf->dup)) {
            /* fault.dup: a copy right behind it, so it is the next message
             * of its key (key ownership sends it to the same member), with
             * the same attempt. Out of memory: no duplicate, no harm. */
            struct mb_mem_entry *c = calloc(1, sizeof *c);
            if (c) {
                c->seq = e->seq;
                c->data = e->data;
                atomic_fetch_add(&e->data->refs, 1);
                c->deliveries = e->deliveries - 1;
                c->copy = true;
                c->prev = e;
                c->next = e->next;
                if (e->next)
                    e->next->prev = c;
                else
                    g->tail = c;
                e->next = c;
                g->npending++;
                next = c;
                tf->n_dup++;
            }
        }
        mb_mem_pending_remove(g, e);
        e->owner = to;
        e->next = to->inflight;
        if (to->inflight)
            to->inflight->prev = e;
        to->inflight = e;
        to->ninflight++;
        room--;
        if (to->batch_tail)
            to->batch_tail->next = m;
        else
            to->batch_head = m;
        to->batch_tail = m;
        to->batch_len++;
        e = next;
    }
    for (struct mb_backend_sub *m = g->members; m; m = m->next) {
        if (!m->batch_head)
            continue;
        mb_sub_push(m->sub, m->batch_head, m->batch_len);
        m->batch_head = m->batch_tail = NULL;
        m->batch_len = 0;
    }
}

static struct mb_mem_topic *mb_mem_topic_find(struct mb_mem_broker *b, const char *name)
{
    return (struct mb_mem_topic *)mb_mem_table_find(&b->topics, name, strlen(name));
}

static struct mb_mem_topic *mb_mem_topic_get(struct mb_mem_broker *b, const char *name)
{
    struct mb_mem_topic *t = mb_mem_topic_find(b, name);
    if (t)
        return t;
    size_t len = strlen(name);
    if (!(t = calloc(1, sizeof *t + len + 1)))
        return NULL;
    memcpy(t->name, name, len + 1);
    mb_mem_node_init(&t->node, t->name, len);
    if (!mb_mem_table_add(&b->topics, &t->node)) {
        free(t);
        return NULL;
    }
    return t;
}

/* Frees `t` if nothing refers to it any more: a topic is where its groups
 * hang and its retained messages wait, so one without either holds nothing
 * worth keeping. */
static void mb_mem_topic_drop_if_unused(struct mb_mem_broker *b, struct mb_mem_topic *t)
{
    if (t->groups || t->nretained)
        return;
    mb_mem_table_remove(&b->topics, &t->node);
    free(t->ring);
    free(t);
}

/* ------------------------------------------------------------ retention */

/* Makes room in `t`'s ring for one more message, growing it (up to the
 * broker's retain) when full below that. A ring at retain has room: the
 * push replaces its oldest. False (ring unchanged) when out of memory. */
static bool mb_mem_ring_reserve(const struct mb_mem_broker *b, struct mb_mem_topic *t)
{
    if (t->nretained < t->ring_cap || t->ring_cap >= (size_t)b->retain)
        return true;
    size_t cap = t->ring_cap ? t->ring_cap * 2 : MB_MEM_RING_MIN;
    if (cap > (size_t)b->retain)
        cap = (size_t)b->retain;
    struct mb_mem_retained *r = malloc(cap * sizeof *r);
    if (!r)
        return false;
    for (size_t i = 0; i < t->nretained; i++)
        r[i] = t->ring[(t->ring_first + i) % t->ring_cap];
    free(t->ring);
    t->ring = r;
    t->ring_cap = cap;
    t->ring_first = 0;
    return true;
}

/* Retains `d` (one more reference) as `t`'s newest message, after
 * mb_mem_ring_reserve. The oldest falls out of a full ring: freed now
 * unless a group still holds it. */
static void mb_mem_ring_push(struct mb_mem_topic *t, struct mb_mem_data *d, uint64_t seq)
{
    atomic_fetch_add(&d->refs, 1);
    struct mb_mem_retained r = {.data = d, .seq = seq};
    if (t->nretained == t->ring_cap) {
        struct mb_mem_retained *oldest = &t->ring[t->ring_first];
        mb_mem_data_unref(oldest->data);
        *oldest = r;
        t->ring_first = (t->ring_first + 1) % t->ring_cap;
    } else {
        t->ring[(t->ring_first + t->nretained) % t->ring_cap] = r;
        t->nretained++;
    }
}

static void mb_mem_ring_free(struct mb_mem_topic *t)
{
    for (size_t i = 0; i < t->nretained; i++)
        mb_mem_data_unref(t->ring[(t->ring_first + i) % t->ring_cap].data);
    free(t->ring);
    t->ring = NULL;
    t->ring_cap = t->ring_first = t->nretained = 0;
}

static void mb_mem_entries_free(struct mb_mem_entry *e)
{
    for (struct mb_mem_entry *n; e; e = n) {
        n = e->next;
        mb_mem_data_unref(e->data);
        free(e);
    }
}

/* A group's pending list for position `from` on `t`: the retained messages
 * (all for EARLIEST, those with timestamp >= time_ms for TIME, none for
 * LATEST/DEFAULT), oldest first. False (nothing made) when out of memory. */
static bool mb_mem_retained_list(const struct mb_mem_topic *t, const struct mb_start *from,
                                 struct mb_mem_entry **head, struct mb_mem_entry **tail,
                                 size_t *count)
{
    *head = *tail = NULL;
    *count = 0;
    if (from->kind != MB_START_EARLIEST && from->kind != MB_START_TIME)
        return true;
    for (size_t i = 0; i < t->nretained; i++) {
        const struct mb_mem_retained *r = &t->ring[(t->ring_first + i) % t->ring_cap];
        if (from->kind == MB_START_TIME && r->data->msg->timestamp < from->time_ms)
            continue;
        struct mb_mem_entry *e = calloc(1, sizeof *e);
        if (!e) {
            mb_mem_entries_free(*head);
            *head = *tail = NULL;
            *count = 0;
            return false;
        }
        e->seq = r->seq;
        e->data = r->data;
        atomic_fetch_add(&r->data->refs, 1);
        e->prev = *tail;
        if (*tail)
            (*tail)->next = e;
        else
            *head = e;
        *tail = e;
        (*count)++;
    }
    return true;
}

/* A new group on `t`: named when `name` is non-NULL, else a broadcast
 * subscriber's private one (not in the name table). */
static struct mb_mem_group *mb_mem_group_new(struct mb_mem_topic *t, const char *name)
{
    size_t len = name ? strlen(name) : 0;
    struct mb_mem_group *g = calloc(1, sizeof *g + len + 1);
    if (!g)
        return NULL;
    if (name) {
        memcpy(g->name, name, len + 1);
        mb_mem_node_init(&g->node, g->name, len);
        if (!mb_mem_table_add(&t->named, &g->node)) {
            free(g);
            return NULL;
        }
        g->named = true;
    }
    g->topic = t;
    g->next = t->groups;
    if (t->groups)
        t->groups->prev = g;
    t->groups = g;
    t->ngroups++;
    return g;
}

static struct mb_mem_group *mb_mem_group_find(struct mb_mem_topic *t, const char *name)
{
    return (struct mb_mem_group *)mb_mem_table_find(&t->named, name, strlen(name));
}

static struct mb_mem_group *mb_mem_group_get(struct mb_mem_topic *t, const char *name)
{
    struct mb_mem_group *g = mb_mem_group_find(t, name);
    return g ? g : mb_mem_group_new(t, name);
}

/* Frees a group and everything it still holds; the caller has unlinked it. */
static void mb_mem_group_free(struct mb_mem_group *g)
{
    mb_mem_entries_free(g->head);
    for (uint32_t i = 0; i < g->keys.nbuckets; i++)
        for (struct mb_mem_node *k = g->keys.buckets[i], *n; k; k = n) {
            n = k->hnext;
            free(k);
        }
    free(g->keys.buckets);
    free(g);
}

/* Unlinks `g` from its topic, frees it, and the topic too if it was the last
 * group. */
static void mb_mem_group_drop(struct mb_mem_broker *b, struct mb_mem_group *g)
{
    struct mb_mem_topic *t = g->topic;
    if (g->named)
        mb_mem_table_remove(&t->named, &g->node);
    if (g->prev)
        g->prev->next = g->next;
    else
        t->groups = g->next;
    if (g->next)
        g->next->prev = g->prev;
    t->ngroups--;
    mb_mem_group_free(g);
    mb_mem_topic_drop_if_unused(b, t);
}

static void mb_mem_broker_free(struct mb_mem_broker *b)
{
    for (uint32_t i = 0; i < b->topics.nbuckets; i++)
        for (struct mb_mem_node *n = b->topics.buckets[i], *next; n; n = next) {
            next = n->hnext;
            struct mb_mem_topic *t = (struct mb_mem_topic *)n;
            for (struct mb_mem_group *g = t->groups, *gn; g; g = gn) {
                gn = g->next;
                mb_mem_group_free(g);
            }
            mb_mem_ring_free(t);
            free(t->named.buckets);
            free(t);
        }
    free(b->topics.buckets);
    pthread_mutex_destroy(&b->mu);
    free(b->name);
    free(b);
}

/* ------------------------------------------------------------- faults */

static bool mb_mem_drop_any(const msgbus_msg_t *m, void *arg)
{
    (void)m;
    (void)arg;
    return true;
}

/* fault.disconnect_every: `be` loses its connection now. Broker lock held.
 * Everything its subscriptions hold unsettled goes back to its group, in
 * place (other members may take it at once); what the core still queues
 * for the application is dropped, as a real backend drops what came over
 * a dead connection; deliveries up to now can no longer be settled (their
 * settle is ignored). The fault thread reports RECONNECTING, then UP
 * fault.reconnect_ms later, when the subscriptions receive again. */
static void mb_mem_fault_disconnect(struct mb_mem_broker *b, struct mb_backend *be)
{
    struct mb_mem_faults *f = be->f;
    f->down = true;
    f->ops = 0;
    f->n_disconnect++;
    f->lost_upto = b->next_delivery;
    for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->be_next) {
        while (bs->inflight) {
            struct mb_mem_entry *e = bs->inflight;
            mb_mem_inflight_remove(bs, e);
            mb_mem_key_adjust(bs->group, e->data->msg, bs, -1);
            e->owner = NULL;
            mb_mem_pending_insert(bs->group, e);
        }
        mb_sub_drop(bs->sub, mb_mem_drop_any, NULL);
    }
    for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->be_next)
        mb_mem_dispatch(b, bs->group);
    pthread_mutex_lock(&f->mu);
    f->losses++;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}

/* One more operation of `be` (a publish stored, a settle done); the N-th
 * since the last loss loses the connection. Broker lock held. */
static void mb_mem_fault_op(struct mb_mem_broker *b, struct mb_backend *be)
{
    struct mb_mem_faults *f = be->f;
    if (f && f->disconnect_every && !f->down && ++f->ops >= f->disconnect_every)
        mb_mem_fault_disconnect(b, be);
}

/* Queues a confirm for `due_us`, kept in due order (it is almost always the
 * newest); false when out of memory. */
static bool mb_mem_fault_delay(struct mb_mem_faults *f, struct mb_confirm *token, int64_t due_us,
                               int64_t published_us, msgbus_err_t status, const char *error)
{
    struct mb_mem_delayed *d = calloc(1, sizeof *d);
    if (!d || (error && !(d->error = mb_strdup(error)))) {
        free(d);
        return false;
    }
    d->token = token;
    d->due_us = due_us;
    d->published_us = published_us;
    d->status = status;
    pthread_mutex_lock(&f->mu);
    if (!f->tail || f->tail->due_us <= due_us) {
        if (f->tail)
            f->tail->next = d;
        else
            f->head = d;
        f->tail = d;
    } else {
        struct mb_mem_delayed **pp = &f->head;
        while ((*pp)->due_us <= due_us)
            pp = &(*pp)->next;
        d->next = *pp;
        *pp = d;
    }
    f->n_delayed++;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return true;
}

static void mb_mem_fault_fire(struct mb_backend *be, struct mb_mem_delayed *d)
{
    if (d->status == MSGBUS_OK)
        mb_bus_confirm_latency(be->bus, d->token, mb_mono_us() - d->published_us);
    mb_bus_confirm(be->bus, d->token, d->status, d->error);
    free(d->error);
    free(d);
}

/* The bus's fault thread: delayed confirms, and the state events and the
 * reconnect of a connection loss. */
static void *mb_mem_fault_thread(void *arg)
{
    struct mb_backend *be = arg;
    struct mb_mem_faults *f = be->f;
    struct mb_mem_broker *b = be->broker;
    pthread_mutex_lock(&f->mu);
    while (!f->stop) {
        int64_t now = mb_mono_us();
        if (f->losses) {
            f->losses = 0;
            f->reconnect_at_us = now + f->reconnect_ms * 1000 + 1;
            pthread_mutex_unlock(&f->mu);
            mb_bus_state(be->bus, MSGBUS_STATE_RECONNECTING,
                         "connection lost: injected fault (fault.disconnect_every=%ld on "
                         "mem://%s)",
                         f->disconnect_every, b->name);
            pthread_mutex_lock(&f->mu);
            continue;
        }
        if (f->reconnect_at_us && now >= f->reconnect_at_us) {
            f->reconnect_at_us = 0;
            pthread_mutex_unlock(&f->mu);
            pthread_mutex_lock(&b->mu);
            f->down = false;
            for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->be_next)
                mb_mem_dispatch(b, bs->group);
            pthread_mutex_unlock(&b->mu);
            mb_bus_state(be->bus, MSGBUS_STATE_UP,
                         "reconnected after an injected connection loss");
            pthread_mutex_lock(&f->mu);
            continue;
        }
        if (f->head && f->head->due_us <= now) {
            struct mb_mem_delayed *due = f->head, *last = f->head;
            while (last->next && last->next->due_us <= now)
                last = last->next;
            f->head = last->next;
            if (!f->head)
                f->tail = NULL;
            last->next = NULL;
            pthread_mutex_unlock(&f->mu);
            for (struct mb_mem_delayed *d = due, *n; d; d = n) {
                n = d->next;
                mb_mem_fault_fire(be, d);
            }
            pthread_mutex_lock(&f->mu);
            continue;
        }
        int64_t wake = INT64_MAX;
        if (f->head)
            wake = f->head->due_us;
        if (f->reconnect_at_us && f->reconnect_at_us < wake)
            wake = f->reconnect_at_us;
        if (wake == INT64_MAX) {
            pthread_cond_wait(&f->cv, &f->mu);
        } else {
            struct timespec ts = {(time_t)(wake / 1000000), (long)(wake % 1000000) * 1000};
            pthread_cond_timedwait(&f->cv, &f->mu, &ts);
        }
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

/* Reads the fault.* options of `url` into be->f (left NULL when every
 * fault is off) and starts the fault thread when one needs it. */
static msgbus_err_t mb_mem_faults_open(struct mb_backend *be, struct mb_url *url)
{
    double dup, fail, redeliver;
    long every, reconnect, delay, jitter, seed;
    msgbus_err_t e;
    if ((e = mb_url_opt_double(url, "fault.dup", 0, 0, 1, &dup)) ||
        (e = mb_url_opt_double(url, "fault.confirm_fail", 0, 0, 1, &fail)) ||
        (e = mb_url_opt_double(url, "fault.redeliver", 0, 0, 1, &redeliver)) ||
        (e = mb_url_opt_int(url, "fault.disconnect_every", 0, 0, 1000000000L, &every)) ||
        (e = mb_url_opt_int(url, "fault.reconnect_ms", 20, 0, 60000, &reconnect)) ||
        (e = mb_url_opt_int(url, "fault.confirm_delay_ms", 0, 0, 60000, &delay)) ||
        (e = mb_url_opt_int(url, "fault.jitter_ms", 0, 0, 60000, &jitter)) ||
        (e = mb_url_opt_int(url, "fault.seed", 1, 0, LONG_MAX, &seed)))
        return e;
    if (!(dup > 0 || fail > 0 || redeliver > 0 || every > 0 || delay > 0 || jitter > 0))
        return MSGBUS_OK;
    struct mb_mem_faults *f = calloc(1, sizeof *f);
    if (!f)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening mem://");
    f->dup = dup;
    f->confirm_fail = fail;
    f->redeliver = redeliver;
    f->disconnect_every = every;
    f->reconnect_ms = reconnect;
    f->delay_ms = delay;
    f->jitter_ms = jitter;
    f->seed = (uint64_t)seed;
    f->rng_dup = mb_mem_stream(f->seed, 0);
    f->rng_fail = mb_mem_stream(f->seed, 1);
    f->rng_redeliver = mb_mem_stream(f->seed, 2);
    f->rng_jitter = mb_mem_stream(f->seed, 3);
    pthread_mutex_init(&f->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&f->cv, &ca);
    pthread_condattr_destroy(&ca);
    be->f = f;
    if (every > 0 || delay > 0 || jitter > 0) {
        if (pthread_create(&f->thread, NULL, mb_mem_fault_thread, be)) {
            pthread_cond_destroy(&f->cv);
            pthread_mutex_destroy(&f->mu);
            free(f);
            be->f = NULL;
            return mb_error(MSGBUS_ERR_NOMEM, "mem://: cannot start the thread of its fault.* "
                                              "options");
        }
        f->threaded = true;
    }
    return MSGBUS_OK;
}

/* Stops the fault thread and gives every confirm still waiting its
 * outcome now (close owes them all). */
static void mb_mem_faults_close(struct mb_backend *be)
{
    struct mb_mem_faults *f = be->f;
    if (!f)
        return;
    if (f->threaded) {
        pthread_mutex_lock(&f->mu);
        f->stop = true;
        pthread_cond_signal(&f->cv);
        pthread_mutex_unlock(&f->mu);
        pthread_join(f->thread, NULL);
    }
    for (struct mb_mem_delayed *d = f->head, *n; d; d = n) {
        n = d->next;
        mb_mem_fault_fire(be, d);
    }
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
    be->f = NULL;
}

/* The "faults" member of the bus's stats detail: the seed and how many of
 * each fault were injected. */
static void mb_mem_faults_stats(struct mb_backend *be, json_t *detail)
{
    struct mb_mem_faults *f = be->f;
    struct mb_mem_broker *b = be->broker;
    json_t *o = json_object();
    pthread_mutex_lock(&b->mu);
    json_object_set_new(o, "seed", json_integer((json_int_t)f->seed));
    json_object_set_new(o, "duplicated", json_integer((json_int_t)f->n_dup));
    json_object_set_new(o, "acks_lost", json_integer((json_int_t)f->n_redeliver));
    json_object_set_new(o, "disconnects", json_integer((json_int_t)f->n_disconnect));
    json_object_set_new(o, "settles_ignored", json_integer((json_int_t)f->n_settle_ignored));
    json_object_set_new(o, "down", json_boolean(f->down));
    pthread_mutex_unlock(&b->mu);
    pthread_mutex_lock(&f->mu);
    json_object_set_new(o, "confirms_failed", json_integer((json_int_t)f->n_fail));
    json_object_set_new(o, "confirms_delayed", json_integer((json_int_t)f->n_delayed));
    pthread_mutex_unlock(&f->mu);
    json_object_set_new(detail, "faults", o);
}

/* ---------------------------------------------------------------- ops */

static const char *const mb_mem_options[] = {
    "prefetch",          "max_message_bytes",      "retain",
    "fault.dup",         "fault.redeliver",        "fault.confirm_fail",
    "fault.jitter_ms",   "fault.confirm_delay_ms", "fault.disconnect_every",
    "fault.reconnect_ms", "fault.seed",            NULL};

static void mb_mem_close(struct mb_backend *be);

static msgbus_err_t mb_mem_open(msgbus_t *bus, struct mb_url *url, struct mb_backend **out)
{
    if (url->nhosts > 1 || (url->nhosts == 1 && url->hosts[0].port))
        return mb_error(MSGBUS_ERR_CONFIG,
                        "malformed URL '%s': mem:// takes one name and no port (mem://name)",
                        url->redacted);
    if (url->user)
        return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': mem:// takes no credentials",
                        url->redacted);
    if (url->path[0])
        return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': mem:// takes no path",
                        url->redacted);
    const char *name = url->nhosts ? url->hosts[0].host : "";
    struct mb_backend *be = calloc(1, sizeof *be);
    if (!be)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening mem://");
    msgbus_err_t e;
    long retain; /* -1: not given, take the broker's */
    if ((e = mb_url_opt_int(url, "prefetch", 1000, 1, 1000000, &be->prefetch)) ||
        (e = mb_url_opt_int(url, "max_message_bytes", 64L << 20, 1, 1L << 30, &be->max_bytes)) ||
        (e = mb_url_opt_int(url, "retain", -1, 0, MB_MEM_RETAIN_MAX, &retain))) {
        free(be);
        return e;
    }
    be->bus = bus;
    pthread_mutex_lock(&mb_mem_registry_mu);
    struct mb_mem_broker *b = mb_mem_brokers;
    while (b && strcmp(b->name, name) != 0)
        b = b->next;
    if (b && retain >= 0 && retain != b->retain) {
        /* Retention is the broker's, as a topic's is on Kafka: two buses
         * cannot see one topic with two different pasts. */
        long have = b->retain;
        pthread_mutex_unlock(&mb_mem_registry_mu);
        free(be);
        return mb_error(MSGBUS_ERR_CONFIG,
                        "option 'retain=%ld' in URL '%s': mem://%s is already open with "
                        "retain=%ld (set by its first bus); give the same value or leave it out",
                        retain, url->redacted, name, have);
    }
    if (!b) {
        b = calloc(1, sizeof *b);
        if (!b || !(b->name = mb_strdup(name))) {
            free(b);
            pthread_mutex_unlock(&mb_mem_registry_mu);
            free(be);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening mem://");
        }
        pthread_mutex_init(&b->mu, NULL);
        b->retain = retain > 0 ? retain : 0;
        b->next = mb_mem_brokers;
        mb_mem_brokers = b;
    }
    b->refs++;
    pthread_mutex_unlock(&mb_mem_registry_mu);
    be->broker = b;
    if ((e = mb_mem_faults_open(be, url))) {
        mb_mem_close(be);
        return e;
    }
    *out = be;
    return MSGBUS_OK;
}

static void mb_mem_close(struct mb_backend *be)
{
    /* Every confirm was given inside publish, but for those fault.* delays:
     * they are given now. */
    mb_mem_faults_close(be);
    pthread_mutex_lock(&mb_mem_registry_mu);
    struct mb_mem_broker *b = be->broker;
    if (--b->refs == 0) {
        for (struct mb_mem_broker **pp = &mb_mem_brokers; *pp; pp = &(*pp)->next)
            if (*pp == b) {
                *pp = b->next;
                break;
            }
        mb_mem_broker_free(b);
    }
    pthread_mutex_unlock(&mb_mem_registry_mu);
    free(be);
}

static msgbus_err_t mb_mem_publish(struct mb_backend *be, const char *topic, const msgbus_msg_t *m,
                                   struct mb_confirm *token)
{
    size_t size = mb_msg_wire_size(m);
    if ((long)size > be->max_bytes)
        return mb_error(MSGBUS_ERR_TOO_LARGE,
                        "message of %zu bytes to '%s' exceeds max_message_bytes=%ld", size, topic,
                        be->max_bytes);
    struct mb_mem_faults *f = be->f;
    int64_t now_us = 0, due_us = 0; /* due_us > 0: the confirm waits until then */
    if (f) {
        pthread_mutex_lock(&f->mu);
        bool refuse = mb_mem_chance(&f->rng_fail, f->confirm_fail);
        if (f->delay_ms || f->jitter_ms) {
            now_us = mb_mono_us();
            due_us = now_us + f->delay_ms * 1000 +
                     (f->jitter_ms ? (int64_t)(mb_mem_rand(&f->rng_jitter) %
                                               (uint64_t)(f->jitter_ms * 1000 + 1))
                                   : 0);
            if (due_us < f->last_due_us) /* confirms keep publish order */
                due_us = f->last_due_us;
            f->last_due_us = due_us;
        }
        f->n_fail += refuse;
        pthread_mutex_unlock(&f->mu);
        if (refuse) { /* not stored: the confirm says so, and why */
            char why[512];
            snprintf(why, sizeof why,
                     "publish to '%s' refused: injected fault (fault.confirm_fail=%g on "
                     "mem://%s); the message was not stored",
                     topic, f->confirm_fail, be->broker->name);
            if (!due_us || !mb_mem_fault_delay(f, token, due_us, now_us, MSGBUS_ERR_BROKER, why))
                mb_bus_confirm(be->bus, token, MSGBUS_ERR_BROKER, why);
            return MSGBUS_OK;
        }
    }
    struct mb_mem_data *d = calloc(1, sizeof *d);
    if (!d || !(d->msg = mb_msg_clone(m))) {
        free(d);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
    }
    /* As the brokers' bindings do, a receiver sees the CloudEvents type and
     * source the publish wrote: the message's own, else the defaults. */
    if (mb_bus_ce_mode(be->bus) != MB_CE_OFF && (!m->ce_type || !m->ce_source)) {
        struct mb_ce_attrs a;
        mb_ce_attrs(be->bus, topic, m, &a);
        if ((!m->ce_type && msgbus_msg_set_type(d->msg, a.type)) ||
            (!m->ce_source && msgbus_msg_set_source(d->msg, a.source))) {
            msgbus_msg_free(d->msg);
            free(d);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
        }
    }
    atomic_init(&d->refs, 1);
    struct mb_mem_broker *b = be->broker;
    msgbus_err_t e = MSGBUS_OK;
    pthread_mutex_lock(&b->mu);
    /* No topic: no group would ever receive it, so without retention it is
     * kept nowhere; with retention the publish makes the topic, for groups
     * that start at earliest later. */
    struct mb_mem_topic *t =
        b->retain ? mb_mem_topic_get(b, topic) : mb_mem_topic_find(b, topic);
    if (b->retain && !t)
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
    if (t) {
        uint64_t seq = ++b->next_seq;
        /* Allocate every entry (and ring slot) first, so a failure changes
         * nothing. */
        size_t ngroups = t->ngroups;
        struct mb_mem_entry **es = ngroups ? calloc(ngroups, sizeof *es) : NULL;
        size_t made = 0;
        if (ngroups && es)
            for (; made < ngroups; made++)
                if (!(es[made] = calloc(1, sizeof **es)))
                    break;
        if ((ngroups && (!es || made < ngroups)) || (b->retain && !mb_mem_ring_reserve(b, t))) {
            for (size_t i = 0; es && i < made; i++)
                free(es[i]);
            mb_mem_topic_drop_if_unused(b, t); /* one this publish made */
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
        } else {
            if (b->retain)
                mb_mem_ring_push(t, d, seq);
            size_t i = 0;
            for (struct mb_mem_group *g = t->groups; g; g = g->next, i++) {
                struct mb_mem_entry *en = es[i];
                en->seq = seq;
                en->data = d;
                atomic_fetch_add(&d->refs, 1);
                en->prev = g->tail;
                if (g->tail)
                    g->tail->next = en;
                else
                    g->head = en;
                g->tail = en;
                g->npending++;
                mb_mem_dispatch(b, g);
            }
        }
        free(es);
    }
    if (!e)
        mb_mem_fault_op(b, be);
    pthread_mutex_unlock(&b->mu);
    mb_mem_data_unref(d);
    if (e)
        return e;
    if (due_us && mb_mem_fault_delay(f, token, due_us, now_us, MSGBUS_OK, NULL))
        return MSGBUS_OK; /* stored; confirmed later (out of memory: now) */
    mb_bus_confirm_latency(be->bus, token, 0); /* confirmed within the publish call */
    mb_bus_confirm(be->bus, token, MSGBUS_OK, NULL); /* in memory = confirmed */
    return MSGBUS_OK;
}

static msgbus_err_t mb_mem_declare(struct mb_backend *be, const char *topic, const char *group)
{
    struct mb_mem_broker *b = be->broker;
    msgbus_err_t e = MSGBUS_OK;
    pthread_mutex_lock(&b->mu);
    /* A topic alone holds nothing (see the top of this file): declaring one
     * without a group only validates its name, which the core did. */
    if (group) {
        struct mb_mem_topic *t = mb_mem_topic_get(b, topic);
        if (!t || !mb_mem_group_get(t, group)) {
            if (t)
                mb_mem_topic_drop_if_unused(b, t);
            e = mb_error(MSGBUS_ERR_NOMEM, "out of memory declaring group '%s' on '%s'", group,
                         topic);
        }
    }
    pthread_mutex_unlock(&b->mu);
    return e;
}

static msgbus_err_t mb_mem_subscribe(struct mb_backend *be, msgbus_sub_t *sub,
                                     struct mb_backend_sub **out)
{
    struct mb_backend_sub *bs = calloc(1, sizeof *bs);
    if (!bs)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory subscribing");
    bs->be = be;
    bs->sub = sub;
    bs->prefetch = be->prefetch;
    struct mb_mem_broker *b = be->broker;
    const char *group = mb_sub_group(sub);
    pthread_mutex_lock(&b->mu);
    struct mb_mem_topic *t = mb_mem_topic_get(b, mb_sub_topic(sub));
    struct mb_mem_group *g = NULL;
    bool fresh = false; /* made by this subscribe: it has no position yet */
    if (t) {
        g = group ? mb_mem_group_find(t, group) : NULL;
        if (!g) {
            g = mb_mem_group_new(t, group);
            fresh = true;
        }
    }
    if (!g) {
        if (t)
            mb_mem_topic_drop_if_unused(b, t);
        pthread_mutex_unlock(&b->mu);
        free(bs);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory subscribing");
    }
    if (fresh) { /* start=: where a group without a position begins */
        struct mb_mem_entry *head, *tail;
        size_t n;
        if (!mb_mem_retained_list(t, mb_sub_start(sub), &head, &tail, &n)) {
            mb_mem_group_drop(b, g); /* and the topic, if it was all there was */
            pthread_mutex_unlock(&b->mu);
            free(bs);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory subscribing");
        }
        g->head = head;
        g->tail = tail;
        g->npending = n;
    }
    bs->group = g;
    bs->next = g->members;
    g->members = bs;
    bs->be_next = be->subs;
    be->subs = bs;
    mb_mem_dispatch(b, g);
    pthread_mutex_unlock(&b->mu);
    *out = bs;
    return MSGBUS_OK;
}

static void mb_mem_unsubscribe(struct mb_backend_sub *bs)
{
    struct mb_mem_broker *b = bs->be->broker;
    struct mb_mem_group *g = bs->group;
    pthread_mutex_lock(&b->mu);
    for (struct mb_backend_sub **pp = &g->members; *pp; pp = &(*pp)->next)
        if (*pp == bs) {
            *pp = bs->next;
            break;
        }
    for (struct mb_backend_sub **pp = &bs->be->subs; *pp; pp = &(*pp)->be_next)
        if (*pp == bs) {
            *pp = bs->be_next;
            break;
        }
    while (bs->inflight) { /* unsettled: back in place for the others */
        struct mb_mem_entry *e = bs->inflight;
        mb_mem_inflight_remove(bs, e);
        mb_mem_key_adjust(g, e->data->msg, bs, -1);
        e->owner = NULL;
        mb_mem_pending_insert(g, e);
    }
    if (!g->named) { /* broadcast: the private group goes with its member */
        mb_mem_group_drop(b, g);
    } else { /* durable: stays, also when idle (see the top of this file) */
        mb_mem_dispatch(b, g);
    }
    pthread_mutex_unlock(&b->mu);
    free(bs);
}

static msgbus_err_t mb_mem_settle(struct mb_backend_sub *bs, msgbus_msg_t *m, enum mb_settle how)
{
    struct mb_mem_broker *b = bs->be->broker;
    struct mb_mem_group *g = bs->group;
    struct mb_mem_entry *e = (struct mb_mem_entry *)(uintptr_t)m->tag;
    struct mb_mem_faults *f = bs->be->f;
    pthread_mutex_lock(&b->mu);
    if (f && (uint64_t)m->offset <= f->lost_upto) {
        /* Delivered before an injected connection loss: the group has it
         * back (e may be gone), so the settle goes nowhere, as on Kafka and
         * RabbitMQ; the message comes again. */
        f->n_settle_ignored++;
        pthread_mutex_unlock(&b->mu);
        mb_log(MSGBUS_LOG_DEBUG,
               "mem: %s of %s ignored: it was delivered before an injected connection loss "
               "(fault.disconnect_every) and comes again",
               how == MB_SETTLE_ACK ? "ack" : "nack", m->id ? m->id : "(no id)");
        return MSGBUS_OK;
    }
    if (e->owner != bs || e->delivery_id != (uint64_t)m->offset) {
        pthread_mutex_unlock(&b->mu);
        return mb_error(MSGBUS_ERR_STATE, "message %s is no longer held by this subscriber",
                        m->id ? m->id : "(no id)");
    }
    mb_mem_inflight_remove(bs, e);
    mb_mem_key_adjust(g, e->data->msg, bs, -1);
    e->owner = NULL;
    if (how == MB_SETTLE_ACK && !(f && mb_mem_chance(&f->rng_redeliver, f->redeliver))) {
        mb_mem_data_unref(e->data);
        free(e);
    } else { /* a nack, or an ack lost on purpose (fault.redeliver) */
        if (how == MB_SETTLE_ACK)
            f->n_redeliver++;
        mb_mem_pending_insert(g, e);
    }
    mb_mem_fault_op(b, bs->be);
    mb_mem_dispatch(b, g);
    pthread_mutex_unlock(&b->mu);
    return MSGBUS_OK;
}

static void mb_mem_release(msgbus_msg_t *m)
{
    if (m->backend_data)
        mb_mem_data_unref(m->backend_data);
    m->backend_data = NULL;
}

/* Lag as RabbitMQ counts it: messages of the group not yet handed to a
 * member (the group's "ready" messages); "unacked": what members hold. */
static void mb_mem_sub_stats(struct mb_backend_sub *bs, json_t *sub, int timeout_ms)
{
    (void)timeout_ms; /* nothing to wait for: it is all in this process */
    struct mb_mem_broker *b = bs->be->broker;
    pthread_mutex_lock(&b->mu);
    struct mb_mem_group *g = bs->group;
    size_t ready = g->npending;
    long unacked = 0;
    for (struct mb_backend_sub *m = g->members; m; m = m->next)
        unacked += m->ninflight;
    pthread_mutex_unlock(&b->mu);
    json_object_set_new(sub, "lag", json_integer((json_int_t)ready));
    json_t *d = json_object();
    json_object_set_new(d, "group", g->named ? json_string(g->name) : json_null());
    json_object_set_new(d, "ready", json_integer((json_int_t)ready));
    json_object_set_new(d, "unacked", json_integer(unacked));
    json_object_set_new(sub, "lag_detail", d);
}

static void mb_mem_stats(struct mb_backend *be, json_t *detail)
{
    json_object_set_new(detail, "broker", json_string(be->broker->name ? be->broker->name : ""));
    json_object_set_new(detail, "prefetch", json_integer(be->prefetch));
    if (be->f)
        mb_mem_faults_stats(be, detail);
}


/* ------------------------------------------------ positions, inspection */

/* A paused member keeps what it holds (settleable as ever) and gets nothing
 * more; its keys stay its own, so their later messages wait for it rather
 * than overtake it on another member. */
static msgbus_err_t mb_mem_pause(struct mb_backend_sub *bs, bool paused)
{
    struct mb_mem_broker *b = bs->be->broker;
    pthread_mutex_lock(&b->mu);
    bs->paused = paused;
    if (!paused)
        mb_mem_dispatch(b, bs->group);
    pthread_mutex_unlock(&b->mu);
    return MSGBUS_OK;
}

static size_t mb_mem_count_members(const struct mb_mem_group *g)
{
    size_t n = 0;
    for (const struct mb_backend_sub *m = g->members; m; m = m->next)
        n++;
    return n;
}

/* The group's pending list becomes exactly the retained messages from `to`
 * (see the top of this file); a group that does not exist yet is declared
 * there. Nothing is in flight: a group without members holds nothing
 * unsettled (a closing member gives its messages back). */
static msgbus_err_t mb_mem_group_reset(struct mb_backend *be, const char *topic,
                                       const char *group, const struct mb_start *to,
                                       int timeout_ms)
{
    (void)timeout_ms; /* all in this process: nothing to wait for */
    struct mb_mem_broker *b = be->broker;
    msgbus_err_t e = MSGBUS_OK;
    pthread_mutex_lock(&b->mu);
    struct mb_mem_topic *t = mb_mem_topic_find(b, topic);
    struct mb_mem_group *g = t ? mb_mem_group_find(t, group) : NULL;
    size_t members = g ? mb_mem_count_members(g) : 0;
    struct mb_mem_entry *head = NULL, *tail = NULL;
    size_t n = 0;
    if (!t) {
        e = mb_error(MSGBUS_ERR_NOT_FOUND,
                     "msgbus_group_reset: topic '%s' does not exist on mem://%s (no group was "
                     "declared on it%s)",
                     topic, b->name, b->retain ? " and nothing was published to it" : "");
    } else if (members) {
        e = mb_error(MSGBUS_ERR_STATE,
                     "msgbus_group_reset: group '%s' on '%s' has %zu active member%s: close %s "
                     "first",
                     group, topic, members, members == 1 ? "" : "s",
                     members == 1 ? "it" : "them");
    } else if (!mb_mem_retained_list(t, to, &head, &tail, &n) ||
               (!g && !(g = mb_mem_group_new(t, group)))) {
        mb_mem_entries_free(head);
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory resetting group '%s' on '%s'", group,
                     topic);
    } else {
        mb_mem_entries_free(g->head);
        g->head = head;
        g->tail = tail;
        g->npending = n;
    }
    pthread_mutex_unlock(&b->mu);
    return e;
}

/* One group as msgbus_inspect_json shows it. Lag as in sub_stats: what the
 * group has not yet been handed ("ready"); "unacked" is what its members
 * hold. */
static json_t *mb_mem_inspect_group(const struct mb_mem_group *g)
{
    long unacked = 0;
    for (const struct mb_backend_sub *m = g->members; m; m = m->next)
        unacked += m->ninflight;
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(g->name));
    json_object_set_new(o, "members", json_integer((json_int_t)mb_mem_count_members(g)));
    json_object_set_new(o, "ready", json_integer((json_int_t)g->npending));
    json_object_set_new(o, "unacked", json_integer(unacked));
    json_object_set_new(o, "lag", json_integer((json_int_t)g->npending));
    return o;
}

static int mb_mem_by_name(const void *a, const void *b)
{
    const struct mb_mem_node *x = *(const struct mb_mem_node *const *)a;
    const struct mb_mem_node *y = *(const struct mb_mem_node *const *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The nodes of `t`, sorted by name (listings read the same every time);
 * NULL with *n = 0 when empty or out of memory (*oom says which). */
static struct mb_mem_node **mb_mem_table_sorted(const struct mb_mem_table *t, size_t *n,
                                                bool *oom)
{
    *n = 0;
    *oom = false;
    if (!t->count)
        return NULL;
    struct mb_mem_node **v = malloc(t->count * sizeof *v);
    if (!v) {
        *oom = true;
        return NULL;
    }
    for (uint32_t i = 0; i < t->nbuckets; i++)
        for (struct mb_mem_node *k = t->buckets[i]; k; k = k->hnext)
            v[(*n)++] = k;
    qsort(v, *n, sizeof *v, mb_mem_by_name);
    return v;
}

/* One topic: its named groups (or just `group`), sorted by name. Broadcast
 * subscribers' private groups have no name to list or reset: they are
 * counted as "broadcast_subscribers". */
static msgbus_err_t mb_mem_inspect_topic(const struct mb_mem_broker *b,
                                         const struct mb_mem_topic *t, const char *group,
                                         json_t *topics)
{
    json_t *groups = json_array();
    if (group) {
        struct mb_mem_group *g = mb_mem_group_find((struct mb_mem_topic *)t, group);
        if (!g) {
            json_decref(groups);
            return mb_error(MSGBUS_ERR_NOT_FOUND,
                            "msgbus_inspect_json: group '%s' does not exist on topic '%s' of "
                            "mem://%s",
                            group, t->name, b->name);
        }
        json_array_append_new(groups, mb_mem_inspect_group(g));
    } else {
        size_t n;
        bool oom;
        struct mb_mem_node **v = mb_mem_table_sorted(&t->named, &n, &oom);
        if (oom) {
            json_decref(groups);
            return mb_error(MSGBUS_ERR_NOMEM, "msgbus_inspect_json: out of memory");
        }
        for (size_t i = 0; i < n; i++)
            json_array_append_new(groups, mb_mem_inspect_group((struct mb_mem_group *)v[i]));
        free(v);
    }
    size_t broadcast = 0;
    for (const struct mb_mem_group *g = t->groups; g; g = g->next)
        broadcast += !g->named;
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(t->name));
    json_object_set_new(o, "partitions", json_integer(1));
    json_object_set_new(o, "retained", json_integer((json_int_t)t->nretained));
    json_object_set_new(o, "retention_messages", json_integer(b->retain));
    json_object_set_new(o, "groups", groups);
    json_object_set_new(o, "broadcast_subscribers", json_integer((json_int_t)broadcast));
    json_array_append_new(topics, o);
    return MSGBUS_OK;
}

static msgbus_err_t mb_mem_inspect(struct mb_backend *be, const char *topic, const char *group,
                                   int timeout_ms, json_t *out)
{
    (void)timeout_ms;
    struct mb_mem_broker *b = be->broker;
    json_t *topics = json_object_get(out, "topics");
    if (!json_is_array(topics)) {
        topics = json_array();
        json_object_set_new(out, "topics", topics);
    }
    msgbus_err_t e = MSGBUS_OK;
    pthread_mutex_lock(&b->mu);
    if (topic) {
        struct mb_mem_topic *t = mb_mem_topic_find(b, topic);
        if (!t)
            e = mb_error(MSGBUS_ERR_NOT_FOUND,
                         "msgbus_inspect_json: topic '%s' does not exist on mem://%s", topic,
                         b->name);
        else
            e = mb_mem_inspect_topic(b, t, group, topics);
    } else {
        size_t n;
        bool oom;
        struct mb_mem_node **v = mb_mem_table_sorted(&b->topics, &n, &oom);
        if (oom)
            e = mb_error(MSGBUS_ERR_NOMEM, "msgbus_inspect_json: out of memory");
        for (size_t i = 0; i < n && !e; i++) {
            struct mb_mem_topic *t = (struct mb_mem_topic *)v[i];
            /* A group named without its topic: the topics that have it. */
            if (group && !mb_mem_group_find(t, group))
                continue;
            e = mb_mem_inspect_topic(b, t, group, topics);
        }
        free(v);
    }
    pthread_mutex_unlock(&b->mu);
    return e;
}


static void mb_mem_capabilities(struct mb_backend *be, struct mb_caps *out)
{
    /* Key ownership gives per-key order across members; a publish is one
     * function call confirmed inside it, so it is never retried and never
     * doubled; every topic and group is in this process to list. */
    out->bits = MSGBUS_CAP_KEY_ORDER | MSGBUS_CAP_NO_DUPLICATE_PUBLISH | MSGBUS_CAP_LIST |
                MSGBUS_CAP_LAG;
    if (be->broker->retain > 0)
        out->bits |= MSGBUS_CAP_REPLAY;
    else
        out->why_not[MB_CAP_INDEX(MSGBUS_CAP_REPLAY)] =
            "mem:// keeps no messages once every group has them: open it with retain=N";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_DURABLE)] =
        "mem:// keeps messages in this process's memory: they go when the last bus on its name "
        "closes or the process ends";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_SHARED)] =
        "mem:// lives in one process: mem://name is shared by the buses of this process only";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_POSITIONS)] =
        "mem:// has no partitions or offsets";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_REDELIVERED)] =
        "mem:// sets no redelivered flag: msgbus_msg_attempt counts its deliveries (above 1 "
        "after a nack or a member's close)";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_DELAYED)] =
        "mem:// delivers at once: it has no delayed delivery of its own";
    out->max_message = (size_t)be->max_bytes;
}

static const char *const mb_mem_schemes[] = {"mem", NULL};

MB_HIDDEN const struct mb_backend_ops mb_mem_ops = {
    .version = MB_BACKEND_VERSION,
    .scheme = "mem",
    .schemes = mb_mem_schemes,
    .caps = 0,
    .options = mb_mem_options,
    .env_prefix = "MEM",
    .env_separator = '_',
    .open = mb_mem_open,
    .close = mb_mem_close,
    .publish = mb_mem_publish,
    .flush = NULL,
    .declare = mb_mem_declare,
    .subscribe = mb_mem_subscribe,
    .unsubscribe = mb_mem_unsubscribe,
    .settle = mb_mem_settle,
    .release = mb_mem_release,
    .stats = mb_mem_stats,
    .sub_stats = mb_mem_sub_stats,
    .capabilities = mb_mem_capabilities,
    .pause = mb_mem_pause,
    .group_reset = mb_mem_group_reset,
    .inspect = mb_mem_inspect,
};
