/*
 * relay.c — the outbox relay: one pass (claim rows, publish them, wait for
 * confirms, record outcomes, in slices of one transaction each that
 * overlap where the store allows) and the background thread that repeats
 * passes with wake-ups and failure back-off.
 *
 * Ordering rules a pass keeps, whatever the store:
 *  - rows are published in id order, which the stores make commit order;
 *  - per key, nothing is marked sent after a row of the same key that was
 *    not: a later row confirmed after an earlier one failed stays pending
 *    and is published again after it (the broker may then hold it twice,
 *    with the same id — at-least-once, never a gap in a key's order as
 *    far as the outbox can see);
 *  - a row that fails before reaching the broker stops every later row of
 *    its key in the pass from being published at all;
 *  - a transient failure (broker, bus, timeout) stops the pass from
 *    claiming more; the slices in flight are still settled.
 * Confirms come back through per-message delivery callbacks, which the
 * core may serve on any thread that polls the bus; they write into a
 * reference-counted context so a pass that gives up waiting (timeout)
 * never leaves a callback pointing at freed memory.
 */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outbox/outbox_store.h"

/* ---- confirm collection ---- */

struct mb_relay_slot {
    struct mb_relay_ctx *ctx;
    bool done;
    msgbus_err_t status;
    char *error;
};

struct mb_relay_ctx {
    pthread_mutex_t mu;
    size_t refs; /* the pass + one per message awaiting its callback */
    size_t done;
    struct mb_relay_slot *slots;
    size_t n;
};

static void mb_relay_ctx_unref_locked(struct mb_relay_ctx *c)
{
    if (--c->refs > 0) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    pthread_mutex_unlock(&c->mu);
    for (size_t i = 0; i < c->n; i++)
        free(c->slots[i].error);
    pthread_mutex_destroy(&c->mu);
    free(c->slots);
    free(c);
}

static void mb_relay_on_report(void *opaque, const msgbus_report_t *r)
{
    struct mb_relay_slot *s = opaque;
    struct mb_relay_ctx *c = s->ctx;
    pthread_mutex_lock(&c->mu);
    if (!s->done) {
        s->done = true;
        s->status = r->status;
        if (r->status != MSGBUS_OK)
            s->error = mb_strdup(r->error && *r->error ? r->error : msgbus_strerror(r->status));
        c->done++;
    }
    mb_relay_ctx_unref_locked(c);
}

/* Errors that will not go away by retrying the same row. */
static bool mb_relay_permanent(msgbus_err_t e)
{
    return e == MSGBUS_ERR_TOO_LARGE || e == MSGBUS_ERR_INVALID;
}

/* ---- building a message from a row ---- */

/* A malformed row (bad id, headers not a JSON object of strings, a
 * reserved header name) is a permanent failure: *why says what. */
static msgbus_err_t mb_relay_build(const struct mb_outbox_row *r, msgbus_msg_t **out)
{
    msgbus_msg_t *m = NULL;
    msgbus_err_t e = msgbus_msg_new(&m, r->payload, r->len);
    if (e != MSGBUS_OK)
        return e;
    if (r->key && (e = msgbus_msg_set_key(m, r->key, r->key_len)) != MSGBUS_OK)
        goto fail;
    if ((e = msgbus_msg_set_id(m, r->msg_id)) != MSGBUS_OK) {
        e = mb_error_prefix(MSGBUS_ERR_INVALID, "outbox row %lld: msg_id", (long long)r->id);
        goto fail;
    }
    msgbus_msg_set_timestamp(m, r->msg_ts);
    /* "{}" is what most rows hold: skip the parser for it. */
    if (r->headers && *r->headers && strcmp(r->headers, "{}") != 0) {
        json_error_t jerr;
        json_t *obj = json_loads(r->headers, JSON_REJECT_DUPLICATES, &jerr);
        if (!obj || !json_is_object(obj)) {
            json_decref(obj);
            e = mb_error(MSGBUS_ERR_INVALID,
                         "outbox row %lld: headers are not a JSON object (%s)", (long long)r->id,
                         obj ? "another JSON type" : jerr.text);
            goto fail;
        }
        const char *name;
        json_t *v;
        json_object_foreach(obj, name, v)
        {
            if (!json_is_string(v)) {
                e = mb_error(MSGBUS_ERR_INVALID,
                             "outbox row %lld: header '%.100s' is not a JSON string",
                             (long long)r->id, name);
                json_decref(obj);
                goto fail;
            }
            /* The message's own CloudEvents attributes (outbox.c). */
            const char *val = json_string_value(v);
            if (strcmp(name, "ce_type") == 0)
                e = msgbus_msg_set_type(m, val);
            else if (strcmp(name, "ce_source") == 0)
                e = msgbus_msg_set_source(m, val);
            else if (strcmp(name, "ce_subject") == 0)
                e = msgbus_msg_set_subject(m, val);
            else
                e = msgbus_msg_set_header(m, name, val);
            if (e != MSGBUS_OK) {
                e = mb_error_prefix(e, "outbox row %lld", (long long)r->id);
                json_decref(obj);
                goto fail;
            }
        }
        json_decref(obj);
    }
    *out = m;
    return MSGBUS_OK;
fail:
    msgbus_msg_free(m);
    return e;
}

/* ---- keys that may no longer be marked sent in this pass ---- */

/* An earlier row of each of these keys was not marked sent, so no later
 * row of the key may be (it stays pending and is published again after
 * it). Copies: the slice a key came from may be freed first. */
struct mb_relay_keys {
    struct mb_relay_key {
        unsigned char *p;
        size_t n;
    } *k;
    size_t n, cap;
    bool all; /* out of memory recording one: every keyed row counts as held */
};

static bool mb_relay_keys_has(const struct mb_relay_keys *ks, const struct mb_outbox_row *r)
{
    if (!r->key)
        return false;
    if (ks->all)
        return true;
    for (size_t i = 0; i < ks->n; i++)
        if (ks->k[i].n == r->key_len && memcmp(ks->k[i].p, r->key, r->key_len) == 0)
            return true;
    return false;
}

static void mb_relay_keys_add(struct mb_relay_keys *ks, const struct mb_outbox_row *r)
{
    if (!r->key || mb_relay_keys_has(ks, r))
        return;
    if (ks->n == ks->cap) {
        size_t cap = ks->cap ? ks->cap * 2 : 8;
        struct mb_relay_key *k = realloc(ks->k, cap * sizeof *k);
        if (!k) {
            ks->all = true;
            return;
        }
        ks->k = k;
        ks->cap = cap;
    }
    unsigned char *p = malloc(r->key_len ? r->key_len : 1);
    if (!p) {
        ks->all = true;
        return;
    }
    memcpy(p, r->key, r->key_len);
    ks->k[ks->n++] = (struct mb_relay_key){p, r->key_len};
}

static void mb_relay_keys_free(struct mb_relay_keys *ks)
{
    for (size_t i = 0; i < ks->n; i++)
        free(ks->k[i].p);
    free(ks->k);
}

/* Remaining ms of a deadline (-1: none). */
static int mb_relay_left(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - mb_mono_ms();
    return left > 0 ? (int)(left > 1000000000 ? 1000000000 : left) : 0;
}

/* ---- one pass, in slices ---- */

/* A pass works through its rows in slices. With a store that can claim
 * while earlier claims are unfinished (SQLite), up to MB_RELAY_DEPTH
 * slices are in flight: the broker confirms the oldest while newer ones
 * are read and published, and the oldest is marked while the newer ones
 * are on their way. Waiting for each batch's confirms before reading the
 * next left the relay idle for a broker round trip per batch (Kafka:
 * linger.ms plus acks=all); docs/outbox.md has the figures. Each slice is
 * marked in one transaction. A store whose claim holds a transaction (PG)
 * takes the whole pass as one slice. */
struct mb_relay_slice {
    struct mb_outbox_batch b;
    struct mb_relay_ctx *ctx;
    bool *published;
    size_t npub;
};

/* The state of one pass: the first failure that stops it, and the keys
 * held back so far. */
struct mb_relay_run {
    msgbus_outbox_t *ob;
    msgbus_t *bus;
    int timeout_ms;
    int64_t deadline;
    msgbus_err_t transient; /* broker or bus trouble: no more claims */
    char why[512];
    /* Keys with a row not marked sent, from the slices settled so far, in
     * id order: a later row of one stays pending. */
    struct mb_relay_keys held;
    /* Keys with a row that failed while being published, in any slice not
     * yet settled: later rows of theirs are not published at all. */
    struct mb_relay_keys skip;
    /* The background relay's pass goes on claiming past max_rows while
     * full slices come, until this time (mb_mono_ms; 0: never) or until
     * *stop: a stream has no drain (the last slices' confirms and marks,
     * with nothing else to do) every max_rows rows. */
    int64_t stream_until;
    const atomic_bool *stop;
    /* Rows already added to the handle's `relayed` counter during the
     * pass (as the store worker's slices are marked), so a long pass's
     * progress shows while it runs; the rest is added at its end. */
    size_t counted;
};

/* Whether the pass may claim another slice, having asked for `requested`
 * rows so far. */
static bool mb_relay_more(const struct mb_relay_run *run, size_t requested, size_t max_rows)
{
    if (requested < max_rows)
        return true;
    return run->stream_until && !atomic_load_explicit(run->stop, memory_order_relaxed) &&
           mb_mono_ms() < run->stream_until;
}

static void mb_relay_stop(struct mb_relay_run *run, msgbus_err_t e, const char *fmt, ...)
    MB_PRINTF(3, 4);

static void mb_relay_stop(struct mb_relay_run *run, msgbus_err_t e, const char *fmt, ...)
{
    if (run->transient != MSGBUS_OK)
        return;
    run->transient = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(run->why, sizeof run->why, fmt, ap);
    va_end(ap);
}

#ifndef MB_RELAY_DEPTH
#define MB_RELAY_DEPTH 4 /* slices in flight */
#endif
#ifndef MB_RELAY_SLICE_MAX
#define MB_RELAY_SLICE_MAX 2048
#endif

/* Rows per slice: with overlap an eighth of the pass, between 64 and
 * MB_RELAY_SLICE_MAX rows; without, the pass in slices of at most
 * MB_RELAY_SLICE_MAX (one claim transaction each). A pass holds at most
 * max_rows rows in memory, and never more than MB_RELAY_RING (with the
 * store on a worker) or MB_RELAY_DEPTH slices of MB_RELAY_SLICE_MAX. */
static size_t mb_relay_slice_rows(const msgbus_outbox_t *ob, size_t max_rows)
{
    if (!ob->ops->overlap || max_rows <= 64)
        return max_rows > MB_RELAY_SLICE_MAX ? MB_RELAY_SLICE_MAX : max_rows;
    size_t n = max_rows / 8;
    return n < 64 ? 64 : n > MB_RELAY_SLICE_MAX ? MB_RELAY_SLICE_MAX : n;
}

/* Frees what a slice holds; confirms still to come find the context alive. */
static void mb_relay_slice_clear(struct mb_relay_slice *sl)
{
    if (sl->ctx) {
        pthread_mutex_lock(&sl->ctx->mu);
        mb_relay_ctx_unref_locked(sl->ctx);
    }
    free(sl->published);
    mb_outbox_batch_clear(&sl->b);
    memset(sl, 0, sizeof *sl);
}

/* Publishes a claimed slice in id order. Rows of held keys are skipped; a
 * row that can never be published is marked failed and holds its key; a
 * transient failure stops the slice and the pass. Returns a store-level
 * error (out of memory) only. */
static msgbus_err_t mb_relay_publish(struct mb_relay_run *run, struct mb_relay_slice *sl)
{
    struct mb_outbox_batch *b = &sl->b;
    msgbus_outbox_t *ob = run->ob;
    if (b->capped) {
        size_t bytes = 0;
        for (size_t i = 0; i < b->n; i++)
            bytes += b->rows[i].len;
        mb_log(MSGBUS_LOG_DEBUG, "outbox %s: slice of %zu rows stopped at %zu bytes of payload "
               "(cap %zu)", ob->table, b->n, bytes, MB_OUTBOX_SLICE_BYTES);
    }
    b->outcome = calloc(b->n, sizeof *b->outcome); /* MB_OUTBOX_KEEP */
    b->error = calloc(b->n, sizeof *b->error);
    sl->published = calloc(b->n, sizeof *sl->published);
    sl->ctx = calloc(1, sizeof *sl->ctx);
    if (sl->ctx && !(sl->ctx->slots = calloc(b->n, sizeof *sl->ctx->slots))) {
        free(sl->ctx);
        sl->ctx = NULL;
    }
    if (sl->ctx) {
        pthread_mutex_init(&sl->ctx->mu, NULL);
        sl->ctx->refs = 1;
        sl->ctx->n = b->n;
    }
    if (!b->outcome || !b->error || !sl->published || !sl->ctx)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory in the outbox relay");
    struct mb_relay_ctx *ctx = sl->ctx;
    /* A reference per row that may get a callback, taken before any is
     * published (no callback can run yet: no lock needed); the rows that
     * were not published give theirs back after the loop. */
    ctx->refs += b->n;

    for (size_t i = 0; i < b->n && run->transient == MSGBUS_OK; i++) {
        struct mb_outbox_row *r = &b->rows[i];
        if (mb_relay_keys_has(&run->held, r) || mb_relay_keys_has(&run->skip, r))
            continue;
        msgbus_msg_t *m = NULL;
        msgbus_err_t e = mb_relay_build(r, &m);
        if (e == MSGBUS_OK) {
            ctx->slots[i].ctx = ctx;
            for (;;) {
                e = msgbus_publish(run->bus, r->topic, m, mb_relay_on_report, &ctx->slots[i]);
                if (e != MSGBUS_ERR_QUEUE_FULL)
                    break;
                int left = mb_relay_left(run->deadline);
                if (left == 0) {
                    e = mb_error(MSGBUS_ERR_TIMEOUT,
                                 "outbox relay: the bus queue stayed full for %d ms",
                                 run->timeout_ms);
                    break;
                }
                msgbus_poll(run->bus, left < 0 || left > 10 ? 10 : left, NULL);
            }
            msgbus_msg_free(m);
            if (e == MSGBUS_OK) {
                sl->published[i] = true;
                sl->npub++;
                continue;
            }
        }
        if (e == MSGBUS_ERR_NOMEM || !mb_relay_permanent(e)) {
            /* Broker or bus trouble: stop here, the rest waits for the
             * next pass (after a back-off). */
            mb_relay_stop(run, e, "%s", msgbus_last_error());
            break;
        }
        b->outcome[i] = MB_OUTBOX_FAILED;
        b->error[i] = mb_strdup(msgbus_last_error());
        mb_log(MSGBUS_LOG_ERROR, "outbox %s: row %lld (id %s) moved aside as failed: %s",
               ob->table, (long long)r->id, r->msg_id ? r->msg_id : "?", msgbus_last_error());
        mb_relay_keys_add(&run->skip, r);
    }
    pthread_mutex_lock(&ctx->mu);
    ctx->refs -= b->n - sl->npub; /* no callback will come for these */
    pthread_mutex_unlock(&ctx->mu);
    /* Push out what the backend batches locally; the confirms are awaited
     * in mb_relay_settle. */
    if (sl->npub > 0) {
        msgbus_err_t fe = msgbus_flush(run->bus, 0, NULL);
        if (fe != MSGBUS_OK && fe != MSGBUS_ERR_DELIVERY && fe != MSGBUS_ERR_TIMEOUT)
            mb_relay_stop(run, fe, "outbox relay: flush: %s", msgbus_last_error());
    }
    return MSGBUS_OK;
}

/* Waits for a slice's confirms and decides each row's outcome, keeping the
 * per-key rule across the pass; the store is not touched. *n_sent gets the
 * rows to be marked sent. */
static void mb_relay_decide(struct mb_relay_run *run, struct mb_relay_slice *sl, size_t *n_sent)
{
    struct mb_outbox_batch *b = &sl->b;
    msgbus_outbox_t *ob = run->ob;
    struct mb_relay_ctx *ctx = sl->ctx;
    *n_sent = 0;
    if (!b->outcome || !b->error || !sl->published || !ctx)
        return; /* set-up ran out of memory: nothing was published */

    /* The count in ctx decides, not a full flush: with several relays or
     * a busy application on one bus, a flush that waits for every
     * message on the bus might never return (another thread polling the
     * bus may serve some of our callbacks too). */
    for (;;) {
        pthread_mutex_lock(&ctx->mu);
        size_t done = ctx->done;
        pthread_mutex_unlock(&ctx->mu);
        if (done >= sl->npub)
            break;
        int left = mb_relay_left(run->deadline);
        if (left == 0)
            break;
        msgbus_poll(run->bus, left < 0 || left > 50 ? 50 : left, NULL);
    }

    /* Outcomes in id order; a row of a held key stays pending even if the
     * broker took it (it is published again after the earlier row). */
    pthread_mutex_lock(&ctx->mu);
    for (size_t i = 0; i < b->n; i++) {
        const struct mb_outbox_row *r = &b->rows[i];
        if (sl->published[i]) {
            struct mb_relay_slot *s = &ctx->slots[i];
            if (!s->done) {
                b->outcome[i] = MB_OUTBOX_RETRY;
                b->error[i] = mb_strdup("no broker confirm within the relay timeout");
                mb_relay_stop(run, MSGBUS_ERR_TIMEOUT,
                              "outbox relay: %zu of %zu messages unconfirmed after %d ms",
                              sl->npub - ctx->done, sl->npub, run->timeout_ms);
            } else if (s->status == MSGBUS_OK) {
                b->outcome[i] = MB_OUTBOX_SENT;
            } else if (mb_relay_permanent(s->status)) {
                b->outcome[i] = MB_OUTBOX_FAILED;
                b->error[i] = mb_strdup(s->error);
                mb_log(MSGBUS_LOG_ERROR, "outbox %s: row %lld (id %s) moved aside as failed: %s",
                       ob->table, (long long)r->id, r->msg_id, s->error);
            } else {
                b->outcome[i] = MB_OUTBOX_RETRY;
                b->error[i] = mb_strdup(s->error);
                mb_relay_stop(run, s->status, "outbox relay: publish failed: %s",
                              s->error ? s->error : msgbus_strerror(s->status));
            }
        }
        if (!r->key)
            continue;
        if (mb_relay_keys_has(&run->held, r)) {
            if (b->outcome[i] == MB_OUTBOX_SENT)
                b->outcome[i] = MB_OUTBOX_KEEP;
        } else if (b->outcome[i] != MB_OUTBOX_SENT) {
            mb_relay_keys_add(&run->held, r);
        }
    }
    pthread_mutex_unlock(&ctx->mu);

    for (size_t i = 0; i < b->n; i++)
        *n_sent += b->outcome[i] == MB_OUTBOX_SENT;
}

/* ---- rows published but not yet marked ---- */

/* A slice whose rows went to the broker but whose outcomes could not be
 * recorded: the database was locked past its busy timeout, the connection
 * dropped, a trigger refused. Giving it up would leave its rows pending,
 * and the next claim would publish them all again — every pass while the
 * lock lasts (a 15 s lock once sent 50 rows three times). So the handle
 * keeps what ops->finish needs (ids, outcomes, errors; not the payloads)
 * and a pass marks these first, retrying with back-off, and claims
 * nothing while any is left. Bounded: no claim means at most one pass of
 * rows is held. */
struct mb_outbox_unmarked {
    struct mb_outbox_unmarked *next;
    struct mb_outbox_batch b;
    size_t n_sent; /* rows of b to be marked sent */
};

#define MB_RELAY_MARK_WAIT_MIN 10   /* ms before the first retry of a mark */
#define MB_RELAY_MARK_WAIT_MAX 1000 /* doubling up to this */

/* Rows the held slices would mark sent: confirmed by the broker. */
static size_t mb_relay_unmarked_sent(const msgbus_outbox_t *ob)
{
    size_t n = 0;
    for (const struct mb_outbox_unmarked *u = ob->unmarked; u; u = u->next)
        n += u->n_sent;
    return n;
}

static void mb_relay_unmarked_free(msgbus_outbox_t *ob)
{
    while (ob->unmarked) {
        struct mb_outbox_unmarked *u = ob->unmarked;
        ob->unmarked = u->next;
        mb_outbox_batch_clear(&u->b);
        free(u);
    }
}

/* Moves a decided slice whose outcomes were not recorded into the
 * handle's held list (called under ob->mu, which every pass holds). A
 * slice with nothing published, or nothing to record, is left alone. */
static void mb_relay_hold(msgbus_outbox_t *ob, struct mb_relay_slice *sl, size_t n_sent)
{
    struct mb_outbox_batch *b = &sl->b;
    if (!b->outcome || !b->error || !sl->published || !sl->ctx)
        return;
    bool any = false;
    for (size_t i = 0; i < b->n && !any; i++)
        any = b->outcome[i] != MB_OUTBOX_KEEP;
    if (!any)
        return;
    struct mb_outbox_unmarked *u = calloc(1, sizeof *u);
    if (!u) {
        mb_log(MSGBUS_LOG_ERROR,
               "outbox %s: out of memory keeping %zu published rows to mark; they stay pending "
               "and are published again (same ids)",
               ob->table, n_sent);
        return;
    }
    mb_outbox_batch_drop_data(b);
    u->b = *b;
    /* Marked by its ids from now on, not by its id range: the range may
     * be what failed (a pending row written with an explicit id inside
     * it), and rows claimed later must never be caught by it. */
    u->b.dense = false;
    u->n_sent = n_sent;
    memset(b, 0, sizeof *b);
    struct mb_outbox_unmarked **tail = &ob->unmarked;
    while (*tail)
        tail = &(*tail)->next;
    *tail = u;
}

/* Records the held slices, oldest first, retrying a mark that failed on a
 * busy store (ops->busy) after 10 ms, doubling up to 1 s, until `deadline`
 * (-1: none; a deadline already past still gets one attempt). *n_sent is
 * increased by the rows marked sent. On failure the rest stays held, the
 * error says how many rows wait, with the database's text, and `cause`
 * (may be NULL) gets the database's text alone. */
static msgbus_err_t mb_relay_mark_held(msgbus_outbox_t *ob, int64_t deadline, size_t *n_sent,
                                       char *cause, size_t cause_size)
{
    int wait_ms = MB_RELAY_MARK_WAIT_MIN;
    int attempts = 0;
    while (ob->unmarked) {
        struct mb_outbox_unmarked *u = ob->unmarked;
        attempts++;
        msgbus_err_t e = ob->ops->check_idle(ob); /* PG: reconnects a dropped connection */
        if (e == MSGBUS_OK)
            e = ob->ops->finish(ob, &u->b, mb_now_ms());
        if (e == MSGBUS_OK) {
            *n_sent += u->n_sent;
            ob->unmarked = u->next;
            mb_outbox_batch_clear(&u->b);
            free(u);
            wait_ms = MB_RELAY_MARK_WAIT_MIN;
            continue;
        }
        char why[512];
        snprintf(why, sizeof why, "%s", msgbus_last_error());
        bool busy = e == MSGBUS_ERR_STORE && ob->ops->busy && ob->ops->busy(ob);
        ob->ops->abort(ob);
        int left = mb_relay_left(deadline);
        if (!busy || left == 0) {
            if (cause)
                snprintf(cause, cause_size, "%s", why);
            size_t rows = 0;
            for (const struct mb_outbox_unmarked *h = ob->unmarked; h; h = h->next)
                rows += h->b.n;
            return mb_error(e,
                            "outbox %s: %zu published rows (%zu confirmed) are not marked yet "
                            "after %d attempt%s; they are marked before anything new is "
                            "claimed, and not published again: %s",
                            ob->table, rows, mb_relay_unmarked_sent(ob), attempts,
                            attempts == 1 ? "" : "s", why);
        }
        int ms = left > 0 && left < wait_ms ? left : wait_ms;
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        wait_ms = wait_ms * 2 > MB_RELAY_MARK_WAIT_MAX ? MB_RELAY_MARK_WAIT_MAX : wait_ms * 2;
    }
    return MSGBUS_OK;
}

void mb_outbox_unmarked_close(msgbus_outbox_t *ob)
{
    pthread_mutex_lock(&ob->mu);
    if (ob->unmarked) {
        size_t n = 0;
        char cause[512] = "";
        /* One last attempt, without waiting: the handle is going away. */
        if (mb_relay_mark_held(ob, mb_mono_ms(), &n, cause, sizeof cause) != MSGBUS_OK) {
            mb_log(MSGBUS_LOG_ERROR,
                   "outbox %s: closed with %zu confirmed rows unmarked (%s); they stay pending "
                   "and the next relay publishes them again (same ids: duplicates the inbox "
                   "absorbs, nothing lost)",
                   ob->table, mb_relay_unmarked_sent(ob), cause);
            mb_relay_unmarked_free(ob);
        }
    }
    pthread_mutex_unlock(&ob->mu);
}

/* Waits for a slice's confirms, decides each row's outcome and records
 * them in one transaction. *n_sent gets the rows marked sent. When the
 * store has already failed in this pass (`store_failed`), or recording
 * fails now, the decided slice is held for marking instead (see above).
 * Returns a store error only. */
static msgbus_err_t mb_relay_settle(struct mb_relay_run *run, struct mb_relay_slice *sl,
                                    bool store_failed, size_t *n_sent)
{
    msgbus_outbox_t *ob = run->ob;
    struct mb_outbox_batch *b = &sl->b;
    size_t nsent = 0;
    *n_sent = 0;
    mb_relay_decide(run, sl, &nsent);
    if (!b->outcome || !b->error || !sl->published || !sl->ctx)
        return MSGBUS_OK;
    if (store_failed) {
        mb_relay_hold(ob, sl, nsent);
        return MSGBUS_OK;
    }
    msgbus_err_t e = ob->ops->finish(ob, b, mb_now_ms());
    if (e != MSGBUS_OK) {
        ob->ops->abort(ob);
        mb_relay_hold(ob, sl, nsent);
        return e;
    }
    *n_sent = nsent;
    return MSGBUS_OK;
}

/* ---- a pass with the store on a thread of its own ---- */

/* A long SQLite pass spends about as long in the store (reading rows,
 * deleting or marking them) as in publishing them, and doing one after the
 * other left a core idle. So when the first slice of a pass comes back
 * full, the store's work moves to a worker thread for the rest of the
 * pass: it claims the next slices ahead and marks the settled ones, in the
 * order the pass asks, while the calling thread builds, publishes and
 * decides. The connection is used by one thread at a time (the caller
 * waits in msgbus_outbox_relay meanwhile), so any SQLite threading mode
 * will do. The decisions, and so every ordering rule above, stay on the
 * calling thread and are made in id order as before. */
#ifndef MB_PIPED_WINDOW
#define MB_PIPED_WINDOW 8 /* published slices awaiting confirms */
#endif
/* The window, two claimed ahead, two being marked. */
#define MB_RELAY_RING (MB_PIPED_WINDOW + 4)

enum mb_piped_state {
    MB_SL_FREE,
    MB_SL_CLAIMING,  /* queued for, or in, the worker's claim */
    MB_SL_CLAIMED,   /* rows in b; not yet published */
    MB_SL_EMPTY,     /* the claim found nothing (or failed): the end */
    MB_SL_SENT,      /* published, confirms awaited */
    MB_SL_MARKING,   /* outcomes decided; queued for, or in, finish */
    MB_SL_MARKED,    /* finish done (or given up after a store error) */
};

struct mb_piped_slice {
    struct mb_relay_slice sl;
    enum mb_piped_state state;
    size_t want;
    int64_t now;
    size_t n_sent;
    bool unmarked; /* MARKED without its outcomes recorded: to be held */
};

struct mb_piped {
    msgbus_outbox_t *ob;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    size_t queue[2 * MB_RELAY_RING]; /* slice indexes, in the order asked */
    size_t qhead, qlen;
    bool stop;
    /* The worker's own state, read by the caller only under mu. */
    int64_t after;          /* last id claimed */
    bool ended;             /* a claim came back short, empty or failed */
    msgbus_err_t claim_err; /* why claiming ended, if it failed */
    char claim_why[512];
    msgbus_err_t store_err; /* the first finish that failed: later ones are skipped */
    char store_why[512];
    struct mb_piped_slice ring[MB_RELAY_RING];
};

static void *mb_piped_main(void *arg)
{
    mb_thread_name("msgbus-ostore");
    struct mb_piped *p = arg;
    msgbus_outbox_t *ob = p->ob;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->qlen == 0 && !p->stop)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->qlen == 0)
            break;
        struct mb_piped_slice *ps = &p->ring[p->queue[p->qhead]];
        p->qhead = (p->qhead + 1) % (2 * MB_RELAY_RING);
        p->qlen--;
        bool claiming = ps->state == MB_SL_CLAIMING;
        bool skip = claiming ? p->ended : p->store_err != MSGBUS_OK;
        int64_t after = p->after;
        pthread_mutex_unlock(&p->mu);

        msgbus_err_t e = MSGBUS_OK;
        char why[512] = "";
        enum mb_piped_state next;
        if (claiming) {
            if (!skip)
                e = ob->ops->claim(ob, ps->want, after, &ps->sl.b);
            if (skip || e != MSGBUS_OK || ps->sl.b.n == 0) {
                if (!skip)
                    ob->ops->abort(ob);
                if (e != MSGBUS_OK)
                    snprintf(why, sizeof why, "%s", msgbus_last_error());
                next = MB_SL_EMPTY;
            } else {
                next = MB_SL_CLAIMED;
            }
        } else {
            if (!skip && (e = ob->ops->finish(ob, &ps->sl.b, ps->now)) != MSGBUS_OK) {
                snprintf(why, sizeof why, "%s", msgbus_last_error());
                ob->ops->abort(ob);
            }
            if (skip || e != MSGBUS_OK)
                ps->unmarked = true; /* the caller holds it for marking */
            next = MB_SL_MARKED;
        }

        pthread_mutex_lock(&p->mu);
        if (claiming && next == MB_SL_CLAIMED) {
            p->after = ps->sl.b.rows[ps->sl.b.n - 1].id;
            p->ended = ps->sl.b.n < ps->want && !ps->sl.b.capped;
        } else if (claiming) {
            p->ended = true;
            if (e != MSGBUS_OK && p->claim_err == MSGBUS_OK) {
                p->claim_err = e;
                memcpy(p->claim_why, why, sizeof why);
            }
        } else if (e != MSGBUS_OK && p->store_err == MSGBUS_OK) {
            p->store_err = e;
            memcpy(p->store_why, why, sizeof why);
        }
        ps->state = next;
        pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* The rest of a pass whose first slice, `first` (full, not yet published),
 * says there is more. Leaves *started false, with nothing done to `first`,
 * when the worker cannot start: the caller then goes on alone. Returns a
 * store error only. */
static msgbus_err_t mb_relay_piped(struct mb_relay_run *run, struct mb_relay_slice *first,
                                   size_t per_slice, size_t max_rows, size_t *sent,
                                   msgbus_err_t *claim_err, char *claim_why, size_t why_size,
                                   bool *started)
{
    *started = false;
    struct mb_piped *p = calloc(1, sizeof *p);
    if (!p)
        return MSGBUS_OK;
    p->ob = run->ob;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done, NULL);
    p->after = first->b.rows[first->b.n - 1].id;
    if (pthread_create(&p->th, NULL, mb_piped_main, p) != 0) {
        pthread_cond_destroy(&p->done);
        pthread_cond_destroy(&p->work);
        pthread_mutex_destroy(&p->mu);
        free(p);
        return MSGBUS_OK;
    }
    *started = true;
    p->ring[0].sl = *first;
    p->ring[0].state = MB_SL_CLAIMED;
    p->ring[0].want = per_slice;
    memset(first, 0, sizeof *first);

    /* Monotonic counters; a slice's index is counter % MB_RELAY_RING.
     * claim_at <= pub_at <= settle_at <= reap_at, read from the right. */
    size_t claim_at = 1, pub_at = 0, settle_at = 0, reap_at = 0;
    size_t requested = per_slice;
    bool ended = false; /* seen an EMPTY slice: no more claims */
    msgbus_err_t store = MSGBUS_OK;
    char store_why[512] = "";

    pthread_mutex_lock(&p->mu);
    for (;;) {
        bool progressed = false;
        /* Reap: marked (or empty) slices, oldest first. */
        while (reap_at < settle_at) {
            struct mb_piped_slice *ps = &p->ring[reap_at % MB_RELAY_RING];
            if (ps->state != MB_SL_MARKED && ps->state != MB_SL_EMPTY)
                break;
            bool hold = ps->unmarked;
            if (!hold) {
                *sent += ps->n_sent;
                atomic_fetch_add(&run->ob->relayed, ps->n_sent);
                run->counted += ps->n_sent;
            }
            if (p->store_err != MSGBUS_OK && store == MSGBUS_OK) {
                store = p->store_err;
                memcpy(store_why, p->store_why, sizeof store_why);
            }
            pthread_mutex_unlock(&p->mu);
            if (hold) /* in id order: reaping goes oldest first */
                mb_relay_hold(run->ob, &ps->sl, ps->n_sent);
            mb_relay_slice_clear(&ps->sl);
            pthread_mutex_lock(&p->mu);
            ps->state = MB_SL_FREE;
            ps->unmarked = false;
            reap_at++;
            progressed = true;
        }
        if (p->store_err != MSGBUS_OK && store == MSGBUS_OK) {
            store = p->store_err;
            memcpy(store_why, p->store_why, sizeof store_why);
        }
        bool stopping = store != MSGBUS_OK || run->transient != MSGBUS_OK;
        /* Claim ahead: at most two slices claimed and not yet published. */
        if (!ended && !stopping && claim_at - reap_at < MB_RELAY_RING && claim_at - pub_at < 2 &&
            mb_relay_more(run, requested, max_rows)) {
            struct mb_piped_slice *ps = &p->ring[claim_at % MB_RELAY_RING];
            ps->n_sent = 0; /* the slot may have served an earlier slice */
            ps->want = requested < max_rows && max_rows - requested < per_slice
                           ? max_rows - requested
                           : per_slice;
            requested += ps->want;
            ps->state = MB_SL_CLAIMING;
            p->queue[(p->qhead + p->qlen) % (2 * MB_RELAY_RING)] = claim_at % MB_RELAY_RING;
            p->qlen++;
            pthread_cond_signal(&p->work);
            claim_at++;
            progressed = true;
        }
        /* Settle the oldest published slice once the window is full, or
         * when nothing else can move, or as soon as all its confirms are
         * in: its mark then goes to the worker between the claims, so
         * the broker and the publishing overlap the marks instead of a
         * pass ending with every mark of its slices in a row. Looked at
         * before publishing the next slice: checked only when nothing was
         * left to publish, a confirmed slice waited for the whole pass's
         * publishing, and the worker, idle meanwhile, did every mark
         * after the last publish. */
        if (settle_at < pub_at) {
            struct mb_piped_slice *ps = &p->ring[settle_at % MB_RELAY_RING];
            bool window_full = pub_at - settle_at >= MB_PIPED_WINDOW;
            bool claims_done = ended || stopping || !mb_relay_more(run, requested, max_rows);
            bool nothing_to_publish = pub_at == claim_at && claims_done;
            if (ps->state == MB_SL_EMPTY) {
                settle_at++;
                progressed = true;
                continue;
            }
            bool confirmed = false;
            if (ps->state == MB_SL_SENT && ps->sl.ctx &&
                !(window_full || nothing_to_publish || stopping)) {
                pthread_mutex_lock(&ps->sl.ctx->mu);
                confirmed = ps->sl.ctx->done >= ps->sl.npub;
                pthread_mutex_unlock(&ps->sl.ctx->mu);
            }
            if (ps->state == MB_SL_SENT &&
                (window_full || nothing_to_publish || stopping || confirmed)) {
                settle_at++;
                /* Decided even after a store error: its rows went out, so
                 * they are held for marking, not published again. */
                pthread_mutex_unlock(&p->mu);
                mb_relay_decide(run, &ps->sl, &ps->n_sent);
                bool any = ps->sl.b.outcome && ps->sl.b.error && ps->sl.published && ps->sl.ctx;
                ps->now = mb_now_ms();
                pthread_mutex_lock(&p->mu);
                if (any && store != MSGBUS_OK) {
                    ps->state = MB_SL_MARKED;
                    ps->unmarked = true;
                } else if (any) {
                    ps->state = MB_SL_MARKING;
                    p->queue[(p->qhead + p->qlen) % (2 * MB_RELAY_RING)] =
                        (settle_at - 1) % MB_RELAY_RING;
                    p->qlen++;
                    pthread_cond_signal(&p->work);
                } else {
                    ps->state = MB_SL_MARKED;
                    ps->n_sent = 0;
                }
                continue;
            }
        }
        /* Publish the next claimed slice while the confirms of at most
         * MB_PIPED_WINDOW earlier ones are awaited: with the store off this
         * thread, publishing outruns a Kafka confirm's latency (linger.ms
         * plus acks=all), and four slices left it waiting for confirms
         * half the pass. */
        if (pub_at < claim_at && pub_at - settle_at < MB_PIPED_WINDOW) {
            struct mb_piped_slice *ps = &p->ring[pub_at % MB_RELAY_RING];
            if (ps->state == MB_SL_EMPTY) {
                ended = true;
                pub_at++;
                progressed = true;
            } else if (ps->state == MB_SL_CLAIMED) {
                pub_at++;
                progressed = true;
                /* A slice capped by bytes asked for more rows than it
                 * holds: the pass may still claim the difference. */
                requested -= ps->want - ps->sl.b.n;
                if (stopping) {
                    /* Claimed after the pass stopped: left pending. */
                    ps->state = MB_SL_EMPTY;
                } else {
                    pthread_mutex_unlock(&p->mu);
                    msgbus_err_t e = mb_relay_publish(run, &ps->sl);
                    if (e != MSGBUS_OK)
                        mb_relay_stop(run, e, "%s", msgbus_last_error());
                    pthread_mutex_lock(&p->mu);
                    ps->state = MB_SL_SENT;
                }
                continue;
            }
        }
        if (reap_at == claim_at)
            break; /* everything asked for is done */
        if (!progressed)
            pthread_cond_wait(&p->done, &p->mu);
    }
    p->stop = true;
    pthread_cond_signal(&p->work);
    if (p->claim_err != MSGBUS_OK) {
        *claim_err = p->claim_err;
        snprintf(claim_why, why_size, "%s", p->claim_why);
    }
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->th, NULL);
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->mu);
    free(p);
    if (store != MSGBUS_OK)
        return mb_error(store, "%s", store_why);
    return MSGBUS_OK;
}

static msgbus_err_t mb_relay_pass_run(msgbus_outbox_t *ob, msgbus_t *bus, size_t max_rows,
                                      int timeout_ms, const atomic_bool *stop,
                                      size_t *n_published, size_t *counted);

/* One pass, counted for msgbus_outbox_relay_counters. */
static msgbus_err_t mb_relay_pass(msgbus_outbox_t *ob, msgbus_t *bus, size_t max_rows,
                                  int timeout_ms, const atomic_bool *stop, size_t *n_published)
{
    size_t n = 0, counted = 0;
    msgbus_err_t e = mb_relay_pass_run(ob, bus, max_rows, timeout_ms, stop, &n, &counted);
    atomic_fetch_add(&ob->passes, 1);
    atomic_fetch_add(&ob->relayed, n - counted);
    if (e != MSGBUS_OK)
        atomic_fetch_add(&ob->failures, 1);
    else
        atomic_store(&ob->last_success_ms, mb_now_ms());
    if (n_published)
        *n_published = n;
    return e;
}

MSGBUS_API msgbus_err_t msgbus_outbox_relay_counters(msgbus_outbox_t *ob,
                                                     msgbus_outbox_relay_counters_t *out)
{
    if (!ob || !out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay_counters: %s is NULL",
                        !ob ? "outbox" : "out");
    out->passes = atomic_load(&ob->passes);
    out->failures = atomic_load(&ob->failures);
    out->relayed = atomic_load(&ob->relayed);
    out->last_success_ms = atomic_load(&ob->last_success_ms);
    return MSGBUS_OK;
}

/* `stop` (the background relay's; NULL for msgbus_outbox_relay) makes the
 * pass a stream: on a store with a worker it claims past max_rows while
 * full slices come, for up to half of timeout_ms, so every slice still has
 * at least the other half for its confirms. */
static msgbus_err_t mb_relay_pass_run(msgbus_outbox_t *ob, msgbus_t *bus, size_t max_rows,
                                      int timeout_ms, const atomic_bool *stop,
                                      size_t *n_published, size_t *counted)
{
    msgbus_err_t e = ob->ops->check_idle(ob);
    if (e != MSGBUS_OK)
        return e;
    struct mb_relay_run run = {
        .ob = ob,
        .bus = bus,
        .timeout_ms = timeout_ms,
        .deadline = timeout_ms < 0 ? -1 : mb_mono_ms() + timeout_ms,
        .stop = stop,
        .stream_until = stop && timeout_ms > 1 ? mb_mono_ms() + timeout_ms / 2 : 0,
    };
    size_t per_slice = mb_relay_slice_rows(ob, max_rows);
    size_t depth = ob->ops->overlap ? MB_RELAY_DEPTH : 1;
    struct mb_relay_slice ring[MB_RELAY_DEPTH];
    memset(ring, 0, sizeof ring);
    size_t head = 0, count = 0, claimed = 0, sent = 0;
    int64_t after = 0;
    bool more = true;
    msgbus_err_t claim_err = MSGBUS_OK; /* no more claims; slices in flight still settle */
    char claim_why[512] = "";
    msgbus_err_t store = MSGBUS_OK;     /* marking failed: slices in flight are held */
    size_t sent_before = 0;

    /* Rows an earlier pass published but could not mark come first: while
     * any is held, a claim would read them again and publish them twice. */
    if (ob->unmarked) {
        e = mb_relay_mark_held(ob, run.deadline, &sent_before, NULL, 0);
        if (e != MSGBUS_OK) {
            if (n_published)
                *n_published = sent_before;
            return e;
        }
    }

    for (;;) {
        if (more && store == MSGBUS_OK && claim_err == MSGBUS_OK &&
            run.transient == MSGBUS_OK && claimed < max_rows && count < depth) {
            struct mb_relay_slice *sl = &ring[(head + count) % MB_RELAY_DEPTH];
            size_t want = max_rows - claimed < per_slice ? max_rows - claimed : per_slice;
            e = ob->ops->claim(ob, want, after, &sl->b);
            if (e != MSGBUS_OK || sl->b.n == 0) {
                ob->ops->abort(ob);
                mb_relay_slice_clear(sl);
                claim_err = e;
                if (e != MSGBUS_OK)
                    snprintf(claim_why, sizeof claim_why, "%s", msgbus_last_error());
                more = false;
                continue;
            }
            count++;
            claimed += sl->b.n;
            after = sl->b.rows[sl->b.n - 1].id;
            more = sl->b.n == want || sl->b.capped;
            if (depth > 1 && claimed == sl->b.n && more && claimed < max_rows) {
                /* The first slice of a long pass came back full: the rest
                 * of the pass gets a worker for the store. */
                bool started = false;
                store = mb_relay_piped(&run, sl, per_slice, max_rows, &sent, &claim_err,
                                       claim_why, sizeof claim_why, &started);
                if (started) {
                    count = 0; /* the slice went with it; the pass is done */
                    more = false;
                    continue;
                }
            }
            e = mb_relay_publish(&run, sl);
            if (e != MSGBUS_OK) /* out of memory: nothing more is published */
                mb_relay_stop(&run, e, "%s", msgbus_last_error());
            continue;
        }
        if (count == 0)
            break;
        struct mb_relay_slice *sl = &ring[head];
        size_t n = 0;
        /* After a store error the slices still in flight are decided and
         * held for marking with the one that failed. */
        msgbus_err_t se = mb_relay_settle(&run, sl, store != MSGBUS_OK, &n);
        if (store == MSGBUS_OK)
            store = se;
        sent += n;
        mb_relay_slice_clear(sl);
        head = (head + 1) % MB_RELAY_DEPTH;
        count--;
    }
    mb_relay_keys_free(&run.held);
    mb_relay_keys_free(&run.skip);
    sent += sent_before;
    if (store != MSGBUS_OK && ob->unmarked) {
        /* Retried with back-off while the pass has time; what still fails
         * stays held for the next pass, which marks it before claiming.
         * (Nothing held after a store error: holding ran out of memory,
         * and the error stands.) */
        store = mb_relay_mark_held(ob, run.deadline, &sent, NULL, 0);
    }
    if (n_published)
        *n_published = sent;
    *counted = run.counted;
    if (store != MSGBUS_OK)
        return store;
    if (claim_err != MSGBUS_OK)
        return mb_error(claim_err, "%s", claim_why);
    if (run.transient != MSGBUS_OK)
        return mb_error(run.transient, "%s", run.why);
    return MSGBUS_OK;
}

msgbus_err_t msgbus_outbox_relay(msgbus_outbox_t *ob, msgbus_t *bus, size_t max_rows,
                                 int timeout_ms, size_t *n_published)
{
    if (n_published)
        *n_published = 0;
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay: outbox is NULL");
    if (!bus)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay: bus is NULL");
    if (max_rows == 0)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay: max_rows is 0");
    if (timeout_ms < -1)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay: timeout_ms %d is invalid",
                        timeout_ms);
    if (ob->thread)
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_outbox_relay: the background relay runs on this handle");
    pthread_mutex_lock(&ob->mu);
    msgbus_err_t e = mb_relay_pass(ob, bus, max_rows, timeout_ms, NULL, n_published);
    pthread_mutex_unlock(&ob->mu);
    return e;
}

/* ---- background thread ---- */

struct mb_outbox_thread {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_bool stop; /* set under mu; a pass also reads it without */
    bool wake;
    msgbus_t *bus;
    msgbus_outbox_relay_opts_t opts;
    msgbus_err_t last;
    msgbus_outbox_t *ob;
};

/* Waits up to ms for stop (or, if `wakeable`, a wake-up). Called with t->mu held. */
static void mb_relay_wait(struct mb_outbox_thread *t, int ms, bool wakeable)
{
    struct timespec ts;
    mb_deadline(&ts, ms);
    while (!t->stop && !(wakeable && t->wake)) {
        if (pthread_cond_timedwait(&t->cv, &t->mu, &ts) == ETIMEDOUT)
            break;
    }
    if (wakeable)
        t->wake = false;
}

static void *mb_relay_main(void *arg)
{
    mb_thread_name("msgbus-relay");
    struct mb_outbox_thread *t = arg;
    msgbus_outbox_t *ob = t->ob;
    int backoff = 0;
    int64_t last_purge = mb_mono_ms();
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&ob->mu);
        msgbus_err_t e = mb_relay_pass(ob, t->bus, t->opts.batch_max, t->opts.confirm_timeout_ms,
                                       &t->stop, &n);
        int64_t keep = ob->retention_ms;
        pthread_mutex_unlock(&ob->mu);
        pthread_mutex_lock(&t->mu);
        t->last = e;
        if (t->stop) {
            pthread_mutex_unlock(&t->mu);
            break;
        }
        if (e != MSGBUS_OK) {
            backoff = backoff ? backoff * 2 : t->opts.backoff_min_ms;
            if (backoff > t->opts.backoff_max_ms)
                backoff = t->opts.backoff_max_ms;
            mb_log(MSGBUS_LOG_WARN, "outbox %s: relay pass failed (%s: %s); retrying in %d ms",
                   ob->table, msgbus_err_name(e), msgbus_last_error(), backoff);
            mb_relay_wait(t, backoff, false);
        } else {
            backoff = 0;
            if (n < t->opts.batch_max) {
                pthread_mutex_unlock(&t->mu);
                if (keep > 0 && mb_mono_ms() - last_purge > 5000) {
                    size_t purged = 0;
                    if (msgbus_outbox_purge(ob, &purged) != MSGBUS_OK)
                        mb_log(MSGBUS_LOG_WARN, "outbox %s: purge failed: %s", ob->table,
                               msgbus_last_error());
                    last_purge = mb_mono_ms();
                }
                pthread_mutex_lock(&t->mu);
                mb_relay_wait(t, t->opts.poll_interval_ms, true);
            }
        }
        bool stop = t->stop;
        pthread_mutex_unlock(&t->mu);
        if (stop)
            break;
    }
    return NULL;
}

msgbus_err_t msgbus_outbox_relay_start(msgbus_outbox_t *ob, msgbus_t *bus,
                                       const msgbus_outbox_relay_opts_t *opts)
{
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay_start: outbox is NULL");
    if (!bus)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay_start: bus is NULL");
    if (ob->thread)
        return mb_error(MSGBUS_ERR_STATE, "msgbus_outbox_relay_start: the relay already runs");
    msgbus_outbox_relay_opts_t o = {0};
    if (opts)
        o = *opts;
    if (o.confirm_timeout_ms < 0 || o.poll_interval_ms < 0 || o.backoff_min_ms < 0 ||
        o.backoff_max_ms < 0)
        return mb_error(MSGBUS_ERR_INVALID,
                        "msgbus_outbox_relay_start: negative times in options are invalid");
    if (!o.batch_max)
        o.batch_max = 10000;
    if (!o.confirm_timeout_ms)
        o.confirm_timeout_ms = 10000;
    if (!o.poll_interval_ms)
        o.poll_interval_ms = 1000;
    if (!o.backoff_min_ms)
        o.backoff_min_ms = 100;
    if (!o.backoff_max_ms)
        o.backoff_max_ms = 30000;
    if (o.backoff_max_ms < o.backoff_min_ms)
        o.backoff_max_ms = o.backoff_min_ms;
    msgbus_err_t e = ob->ops->check_idle(ob);
    if (e != MSGBUS_OK)
        return e;
    struct mb_outbox_thread *t = calloc(1, sizeof *t);
    if (!t)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory starting the outbox relay");
    pthread_mutex_init(&t->mu, NULL);
    if (mb_cond_init(&t->cv) != 0) {
        pthread_mutex_destroy(&t->mu);
        free(t);
        return mb_error(MSGBUS_ERR_INTERNAL, "outbox relay: cannot create a condition variable");
    }
    t->bus = bus;
    t->opts = o;
    t->ob = ob;
    ob->thread = t;
    if (pthread_create(&t->th, NULL, mb_relay_main, t) != 0) {
        ob->thread = NULL;
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        free(t);
        return mb_error(MSGBUS_ERR_INTERNAL, "outbox relay: cannot start a thread");
    }
    return MSGBUS_OK;
}

void msgbus_outbox_relay_wake(msgbus_outbox_t *ob)
{
    if (!ob || !ob->thread)
        return;
    struct mb_outbox_thread *t = ob->thread;
    pthread_mutex_lock(&t->mu);
    t->wake = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

msgbus_err_t msgbus_outbox_relay_stop(msgbus_outbox_t *ob)
{
    if (!ob)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_outbox_relay_stop: outbox is NULL");
    struct mb_outbox_thread *t = ob->thread;
    if (!t)
        return mb_error(MSGBUS_ERR_STATE, "msgbus_outbox_relay_stop: the relay is not running");
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->th, NULL);
    msgbus_err_t last = t->last;
    ob->thread = NULL;
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
    if (last != MSGBUS_OK)
        return mb_error(last, "the outbox relay's last pass failed with %s", msgbus_err_name(last));
    return MSGBUS_OK;
}

void mb_outbox_thread_stop_quiet(msgbus_outbox_t *ob)
{
    if (ob->thread)
        (void)msgbus_outbox_relay_stop(ob);
}
