/*
 * inbox_mem.c — the bounded in-memory inbox store, for services without a
 * database. A hash table of claimed ids plus a list in claim order: the
 * list's head is always the oldest claim, so both eviction rules (capacity
 * and time-to-live) only ever look at the head. It forgets everything when
 * the process ends (documented in inbox.h and docs/inbox.md).
 *
 * Claims are immediate — there is no transaction to join — and the store
 * is safe to use from several threads at once (one mutex).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "inbox/inbox_store.h"

struct mb_inbox_mem_entry {
    struct mb_inbox_mem_entry *hash_next;  /* bucket chain */
    struct mb_inbox_mem_entry *prev, *next; /* claim order, oldest first */
    uint64_t hash;
    int64_t claimed_ms; /* monotonic */
    char id[];
};

struct mb_inbox_mem {
    pthread_mutex_t lock;
    size_t capacity;
    int64_t ttl_ms; /* 0: no time limit */
    struct mb_inbox_mem_entry **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    struct mb_inbox_mem_entry *oldest, *newest;
    uint64_t evicted; /* for the debug log at close */
};

static struct mb_inbox_mem *mb_inbox_mem_of(msgbus_inbox_t *ib)
{
    return ib->store;
}

/* FNV-1a: ids are short strings, and UUIDv7 ids share their time prefix,
 * so every byte has to count. */
static uint64_t mb_inbox_mem_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static struct mb_inbox_mem_entry **mb_inbox_mem_slot(struct mb_inbox_mem *m, const char *id, uint64_t h)
{
    struct mb_inbox_mem_entry **p = &m->buckets[h & (m->nbuckets - 1)];
    while (*p && !((*p)->hash == h && strcmp((*p)->id, id) == 0))
        p = &(*p)->hash_next;
    return p;
}

static void mb_inbox_mem_unlink(struct mb_inbox_mem *m, struct mb_inbox_mem_entry *e)
{
    struct mb_inbox_mem_entry **p = mb_inbox_mem_slot(m, e->id, e->hash);
    *p = e->hash_next;
    if (e->prev)
        e->prev->next = e->next;
    else
        m->oldest = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        m->newest = e->prev;
    m->count--;
    free(e);
}

static void mb_inbox_mem_expire(struct mb_inbox_mem *m, int64_t now)
{
    if (m->ttl_ms <= 0)
        return;
    while (m->oldest && now - m->oldest->claimed_ms >= m->ttl_ms)
        mb_inbox_mem_unlink(m, m->oldest);
}

/* Doubles the table when it holds more entries than buckets; a failed
 * grow just leaves chains longer. */
static void mb_inbox_mem_grow(struct mb_inbox_mem *m)
{
    if (m->count < m->nbuckets)
        return;
    size_t n = m->nbuckets * 2;
    struct mb_inbox_mem_entry **b = calloc(n, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct mb_inbox_mem_entry *e = m->buckets[i];
        while (e) {
            struct mb_inbox_mem_entry *next = e->hash_next;
            e->hash_next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

static msgbus_err_t mb_inbox_mem_claim(msgbus_inbox_t *ib, const char *id)
{
    struct mb_inbox_mem *m = mb_inbox_mem_of(ib);
    uint64_t h = mb_inbox_mem_hash(id);
    size_t len = strlen(id);
    int64_t now = mb_mono_ms();
    msgbus_err_t result = MSGBUS_OK;
    pthread_mutex_lock(&m->lock);
    mb_inbox_mem_expire(m, now);
    struct mb_inbox_mem_entry **slot = mb_inbox_mem_slot(m, id, h);
    if (*slot) {
        result = MSGBUS_ERR_DUPLICATE;
        goto out;
    }
    struct mb_inbox_mem_entry *e = malloc(sizeof *e + len + 1);
    if (!e) {
        result = mb_error(MSGBUS_ERR_NOMEM, "inbox (memory): out of memory claiming an id");
        goto out;
    }
    memcpy(e->id, id, len + 1);
    e->hash = h;
    e->claimed_ms = now;
    if (m->count >= m->capacity) {
        mb_inbox_mem_unlink(m, m->oldest);
        m->evicted++;
        slot = mb_inbox_mem_slot(m, id, h); /* the chain may have changed */
    }
    e->hash_next = NULL;
    *slot = e;
    e->prev = m->newest;
    e->next = NULL;
    if (m->newest)
        m->newest->next = e;
    else
        m->oldest = e;
    m->newest = e;
    m->count++;
    mb_inbox_mem_grow(m);
out:
    pthread_mutex_unlock(&m->lock);
    return result;
}

static msgbus_err_t mb_inbox_mem_forget(msgbus_inbox_t *ib, const char *id)
{
    struct mb_inbox_mem *m = mb_inbox_mem_of(ib);
    uint64_t h = mb_inbox_mem_hash(id);
    msgbus_err_t result = MSGBUS_OK;
    pthread_mutex_lock(&m->lock);
    mb_inbox_mem_expire(m, mb_mono_ms());
    struct mb_inbox_mem_entry *e = *mb_inbox_mem_slot(m, id, h);
    if (e)
        mb_inbox_mem_unlink(m, e);
    else
        result = mb_error(MSGBUS_ERR_NOT_FOUND, "msgbus_inbox_forget: no claim of '%.64s' by '%s'", id,
                          ib->consumer);
    pthread_mutex_unlock(&m->lock);
    return result;
}

static msgbus_err_t mb_inbox_mem_purge(msgbus_inbox_t *ib, int64_t older_than_ms, size_t *purged)
{
    struct mb_inbox_mem *m = mb_inbox_mem_of(ib);
    int64_t now = mb_mono_ms();
    size_t n = 0;
    pthread_mutex_lock(&m->lock);
    mb_inbox_mem_expire(m, now);
    while (m->oldest && now - m->oldest->claimed_ms >= older_than_ms) {
        mb_inbox_mem_unlink(m, m->oldest);
        n++;
    }
    pthread_mutex_unlock(&m->lock);
    *purged = n;
    return MSGBUS_OK;
}

static void mb_inbox_mem_close(msgbus_inbox_t *ib)
{
    struct mb_inbox_mem *m = mb_inbox_mem_of(ib);
    if (!m)
        return;
    mb_log(MSGBUS_LOG_DEBUG, "inbox (memory, consumer '%s'): closing with %zu ids, %llu evicted for room",
           ib->consumer, m->count, (unsigned long long)m->evicted);
    struct mb_inbox_mem_entry *e = m->oldest;
    while (e) {
        struct mb_inbox_mem_entry *next = e->next;
        free(e);
        e = next;
    }
    free(m->buckets);
    pthread_mutex_destroy(&m->lock);
    free(m);
    ib->store = NULL;
}

static const struct mb_inbox_ops mb_inbox_mem_ops = {
    .name = "memory",
    .claim = mb_inbox_mem_claim,
    .forget = mb_inbox_mem_forget,
    .purge = mb_inbox_mem_purge,
    .close = mb_inbox_mem_close,
};

msgbus_err_t msgbus_inbox_open_memory(msgbus_inbox_t **out, const char *consumer, size_t capacity,
                                      int64_t ttl_ms)
{
    if (!out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_open_memory: out is NULL");
    if (capacity == 0)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_inbox_open_memory: capacity must be at least 1");
    if (ttl_ms < 0)
        return mb_error(MSGBUS_ERR_INVALID,
                        "msgbus_inbox_open_memory: ttl_ms is negative (%lld); 0 means no time limit",
                        (long long)ttl_ms);
    msgbus_inbox_t *ib = NULL;
    msgbus_err_t e = mb_inbox_new(&ib, &mb_inbox_mem_ops, consumer, NULL, false, false);
    if (e != MSGBUS_OK)
        return mb_error_prefix(e, "msgbus_inbox_open_memory");
    struct mb_inbox_mem *m = calloc(1, sizeof *m);
    if (m) {
        m->nbuckets = 64;
        m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    }
    if (!m || !m->buckets || pthread_mutex_init(&m->lock, NULL) != 0) {
        if (m)
            free(m->buckets);
        free(m);
        mb_inbox_free(ib);
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_inbox_open_memory: out of memory");
    }
    m->capacity = capacity;
    m->ttl_ms = ttl_ms;
    ib->store = m;
    *out = ib;
    return MSGBUS_OK;
}
