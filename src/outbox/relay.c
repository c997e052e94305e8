/*
 * relay.c — the outbox relay: one pass (claim rows, publish them, wait for
 * confirms, record outcomes in one transaction) and the background thread
 * that repeats passes with wake-ups and failure back-off.
 *
 * Ordering rules a pass keeps, whatever the store:
 *  - rows are published in id order, which the stores make commit order;
 *  - per key, nothing is marked sent after a row of the same key that was
 *    not: a later row confirmed after an earlier one failed stays pending
 *    and is published again after it (the broker may then hold it twice,
 *    with the same id — at-least-once, never a gap in a key's order as
 *    far as the outbox can see);
 *  - a row that fails before reaching the broker stops every later row of
 *    its key in the batch from being published at all.
 * Confirms come back through per-message delivery callbacks, which the
 * core may serve on any thread that polls the bus; they write into a
 * reference-counted context so a pass that gives up waiting (timeout)
 * never leaves a callback pointing at freed memory.
 */
#include <errno.h>
#include <jansson.h>
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
            if ((e = msgbus_msg_set_header(m, name, json_string_value(v))) != MSGBUS_OK) {
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

static bool mb_relay_key_in(const struct mb_outbox_row *r, const struct mb_outbox_row **keys,
                            size_t nkeys)
{
    for (size_t i = 0; i < nkeys; i++)
        if (keys[i]->key_len == r->key_len && memcmp(keys[i]->key, r->key, r->key_len) == 0)
            return true;
    return false;
}

/* Remaining ms of a deadline (-1: none). */
static int mb_relay_left(int64_t deadline)
{
    if (deadline < 0)
        return -1;
    int64_t left = deadline - mb_mono_ms();
    return left > 0 ? (int)(left > 1000000000 ? 1000000000 : left) : 0;
}

/* ---- one pass ---- */

static msgbus_err_t mb_relay_pass(msgbus_outbox_t *ob, msgbus_t *bus, size_t max_rows,
                                  int timeout_ms, size_t *n_published)
{
    struct mb_outbox_batch b = {0};
    msgbus_err_t e = ob->ops->check_idle(ob);
    if (e != MSGBUS_OK)
        return e;
    e = ob->ops->claim(ob, max_rows, &b);
    if (e != MSGBUS_OK) {
        ob->ops->abort(ob);
        mb_outbox_batch_clear(&b);
        return e;
    }
    if (b.n == 0) {
        ob->ops->abort(ob);
        mb_outbox_batch_clear(&b);
        return MSGBUS_OK;
    }
    b.outcome = calloc(b.n, sizeof *b.outcome);
    b.error = calloc(b.n, sizeof *b.error);
    struct mb_relay_ctx *ctx = calloc(1, sizeof *ctx);
    const struct mb_outbox_row **blocked = calloc(b.n, sizeof *blocked);
    if (ctx)
        ctx->slots = calloc(b.n, sizeof *ctx->slots);
    if (!b.outcome || !b.error || !ctx || !ctx->slots || !blocked) {
        if (ctx)
            free(ctx->slots);
        free(ctx);
        free(blocked);
        ob->ops->abort(ob);
        mb_outbox_batch_clear(&b);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory in the outbox relay");
    }
    pthread_mutex_init(&ctx->mu, NULL);
    ctx->refs = 1;
    ctx->n = b.n;
    size_t nblocked = 0;
    int64_t deadline = timeout_ms < 0 ? -1 : mb_mono_ms() + timeout_ms;
    msgbus_err_t transient = MSGBUS_OK;
    char transient_why[512] = "";
    bool *published = calloc(b.n, sizeof *published);
    if (!published) { /* nothing published: every row stays pending */
        transient = mb_error(MSGBUS_ERR_NOMEM, "out of memory in the outbox relay");
        snprintf(transient_why, sizeof transient_why, "%s", msgbus_last_error());
    }

    /* Publish in id order. */
    for (size_t i = 0; published && i < b.n && transient == MSGBUS_OK; i++) {
        struct mb_outbox_row *r = &b.rows[i];
        b.outcome[i] = MB_OUTBOX_KEEP;
        if (r->key && nblocked && mb_relay_key_in(r, blocked, nblocked))
            continue;
        msgbus_msg_t *m = NULL;
        e = mb_relay_build(r, &m);
        if (e == MSGBUS_OK) {
            ctx->slots[i].ctx = ctx;
            pthread_mutex_lock(&ctx->mu);
            ctx->refs++;
            pthread_mutex_unlock(&ctx->mu);
            for (;;) {
                e = msgbus_publish(bus, r->topic, m, mb_relay_on_report, &ctx->slots[i]);
                if (e != MSGBUS_ERR_QUEUE_FULL)
                    break;
                int left = mb_relay_left(deadline);
                if (left == 0) {
                    e = mb_error(MSGBUS_ERR_TIMEOUT,
                                 "outbox relay: the bus queue stayed full for %d ms", timeout_ms);
                    break;
                }
                msgbus_poll(bus, left < 0 || left > 10 ? 10 : left, NULL);
            }
            msgbus_msg_free(m);
            if (e != MSGBUS_OK) {
                pthread_mutex_lock(&ctx->mu);
                ctx->refs--; /* no callback will come */
                pthread_mutex_unlock(&ctx->mu);
            } else {
                published[i] = true;
            }
        }
        if (e == MSGBUS_OK)
            continue;
        if (e == MSGBUS_ERR_NOMEM || !mb_relay_permanent(e)) {
            /* Broker or bus trouble: stop here, the rest waits for the
             * next pass (after a back-off). */
            transient = e;
            snprintf(transient_why, sizeof transient_why, "%s", msgbus_last_error());
            break;
        }
        b.outcome[i] = MB_OUTBOX_FAILED;
        b.error[i] = mb_strdup(msgbus_last_error());
        mb_log(MSGBUS_LOG_ERROR, "outbox %s: row %lld (id %s) moved aside as failed: %s",
               ob->table, (long long)r->id, r->msg_id ? r->msg_id : "?", msgbus_last_error());
        if (r->key)
            blocked[nblocked++] = r;
    }

    /* Wait for the confirms of what was published. One msgbus_flush with
     * timeout 0 pushes out whatever the backend batches locally; then
     * msgbus_poll serves callbacks as they come. A full flush would wait
     * for every message on the bus — with several relays or a busy
     * application on one bus, that is never — so the count in ctx is what
     * decides (another thread polling the bus may serve some of ours). */
    size_t npub = 0;
    for (size_t i = 0; published && i < b.n; i++)
        npub += published[i];
    if (npub > 0) {
        msgbus_err_t fe = msgbus_flush(bus, 0, NULL);
        if (fe != MSGBUS_OK && fe != MSGBUS_ERR_DELIVERY && fe != MSGBUS_ERR_TIMEOUT &&
            transient == MSGBUS_OK) {
            transient = fe; /* e.g. the bus is closed */
            snprintf(transient_why, sizeof transient_why, "outbox relay: flush: %s",
                     msgbus_last_error());
        }
    }
    for (;;) {
        pthread_mutex_lock(&ctx->mu);
        size_t done = ctx->done;
        pthread_mutex_unlock(&ctx->mu);
        if (done >= npub)
            break;
        int left = mb_relay_left(deadline);
        if (left == 0)
            break;
        msgbus_poll(bus, left < 0 || left > 50 ? 50 : left, NULL);
    }

    /* Outcomes, then the per-key rule. */
    pthread_mutex_lock(&ctx->mu);
    for (size_t i = 0; published && i < b.n; i++) {
        if (!published[i])
            continue;
        struct mb_relay_slot *s = &ctx->slots[i];
        if (!s->done) {
            b.outcome[i] = MB_OUTBOX_RETRY;
            b.error[i] = mb_strdup("no broker confirm within the relay timeout");
            if (transient == MSGBUS_OK) {
                transient = MSGBUS_ERR_TIMEOUT;
                snprintf(transient_why, sizeof transient_why,
                         "outbox relay: %zu of %zu messages unconfirmed after %d ms",
                         npub - ctx->done, npub, timeout_ms);
            }
        } else if (s->status == MSGBUS_OK) {
            b.outcome[i] = MB_OUTBOX_SENT;
        } else if (mb_relay_permanent(s->status)) {
            b.outcome[i] = MB_OUTBOX_FAILED;
            b.error[i] = mb_strdup(s->error);
            mb_log(MSGBUS_LOG_ERROR, "outbox %s: row %lld (id %s) moved aside as failed: %s",
                   ob->table, (long long)b.rows[i].id, b.rows[i].msg_id, s->error);
        } else {
            b.outcome[i] = MB_OUTBOX_RETRY;
            b.error[i] = mb_strdup(s->error);
            if (transient == MSGBUS_OK) {
                transient = s->status;
                snprintf(transient_why, sizeof transient_why, "outbox relay: publish failed: %s",
                         s->error ? s->error : msgbus_strerror(s->status));
            }
        }
    }
    mb_relay_ctx_unref_locked(ctx); /* pending callbacks keep it alive */
    free(published);

    nblocked = 0;
    for (size_t i = 0; i < b.n; i++) {
        const struct mb_outbox_row *r = &b.rows[i];
        if (!r->key)
            continue;
        bool broken = nblocked && mb_relay_key_in(r, blocked, nblocked);
        if (broken) {
            if (b.outcome[i] == MB_OUTBOX_SENT)
                b.outcome[i] = MB_OUTBOX_KEEP; /* re-published after the earlier one */
        } else if (b.outcome[i] != MB_OUTBOX_SENT) {
            blocked[nblocked++] = r;
        }
    }
    free(blocked);

    size_t nsent = 0;
    for (size_t i = 0; i < b.n; i++)
        nsent += b.outcome[i] == MB_OUTBOX_SENT;
    e = ob->ops->finish(ob, &b, mb_now_ms());
    mb_outbox_batch_clear(&b);
    if (e != MSGBUS_OK) {
        ob->ops->abort(ob);
        return e;
    }
    if (n_published)
        *n_published = nsent;
    if (transient != MSGBUS_OK)
        return mb_error(transient, "%s", transient_why);
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
    msgbus_err_t e = mb_relay_pass(ob, bus, max_rows, timeout_ms, n_published);
    pthread_mutex_unlock(&ob->mu);
    return e;
}

/* ---- background thread ---- */

struct mb_outbox_thread {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop, wake;
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
    struct mb_outbox_thread *t = arg;
    msgbus_outbox_t *ob = t->ob;
    int backoff = 0;
    int64_t last_purge = mb_mono_ms();
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&ob->mu);
        msgbus_err_t e = mb_relay_pass(ob, t->bus, t->opts.batch_max, t->opts.confirm_timeout_ms, &n);
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
        o.batch_max = 500;
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
