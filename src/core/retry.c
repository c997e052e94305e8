/*
 * retry.c — what happens to a message its handler failed: retry after a
 * backoff, then the dead-letter topic; and the replay that moves dead
 * letters back. One implementation for every backend (docs/semantics.md,
 * "Retry and dead letters").
 *
 * How a retry works. msgbus_nack does not give the message back to the
 * backend at once: the core keeps a reference and a timer (the "worker"
 * thread, one per bus, started on first use). While the timer runs the
 * message stays unsettled at the broker, so a crash loses nothing. When it
 * fires the core calls the backend's nack, which delivers the message
 * again with its attempt raised (Kafka and mem push it straight back; AMQP
 * through the broker).
 *
 * Holding back what must stay behind. While a message with key K waits,
 * further messages with key K for the same subscription are parked in a
 * "hold" instead of the receive queue (those already queued are moved
 * there too). The hold ends when the retried message comes back (matched
 * by id in mb_sub_push) or, if the backend hands it to another consumer,
 * after MB_HOLD_TIMEOUT_MS. Messages with other keys, or none, flow on.
 *
 * Dead letters. After the last attempt (or msgbus_dead_letter) the worker
 * declares the dead-letter topic and its group once, publishes a copy with
 * the msgbus-dlq-* headers, and acks the original only when the broker has
 * confirmed the copy. A crash in between leaves the original unacked: it
 * comes back and is dead-lettered again — at least once, never lost.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/bus.h"

#define MB_HOLD_TIMEOUT_MS 5000
#define MB_DLQ_RETRY_MIN_MS 200
#define MB_DLQ_RETRY_MAX_MS 30000
#define MB_REPLAY_BATCH 500

static const char *const mb_sub_options[] = {
    "retry_max_attempts", "retry_initial_ms", "retry_multiplier", "retry_max_ms", "retry_jitter",
    "dlq",                "dlq_topic",        "dlq_group",        "start",
    NULL};

/* ------------------------------------------------------------------ policy */

void mb_retry_policy_free(struct mb_retry_policy *p)
{
    free(p->dlq_topic);
    free(p->dlq_group);
    free(p->start);
    p->dlq_topic = p->dlq_group = p->start = NULL;
}

static msgbus_err_t mb_policy_read(struct mb_url *u, const struct mb_retry_policy *def,
                                   bool allow_topic, struct mb_retry_policy *out)
{
    struct mb_retry_policy p = {0};
    msgbus_err_t e;
    if ((e = mb_url_opt_int(u, "retry_max_attempts", def->max_attempts, 0, 1000000,
                            &p.max_attempts)) ||
        (e = mb_url_opt_int(u, "retry_initial_ms", def->initial_ms, 0, 86400000, &p.initial_ms)) ||
        (e = mb_url_opt_double(u, "retry_multiplier", def->multiplier, 1.0, 100.0,
                               &p.multiplier)) ||
        (e = mb_url_opt_int(u, "retry_max_ms", def->max_ms, 0, 86400000, &p.max_ms)) ||
        (e = mb_url_opt_double(u, "retry_jitter", def->jitter, 0.0, 1.0, &p.jitter)) ||
        (e = mb_url_opt_bool(u, "dlq", def->dlq, &p.dlq)))
        return e;
    if (p.max_ms < p.initial_ms)
        return mb_error(MSGBUS_ERR_CONFIG, "retry_max_ms (%ld) is below retry_initial_ms (%ld)",
                        p.max_ms, p.initial_ms);
    if (!p.dlq && p.max_attempts != 0)
        return mb_error(MSGBUS_ERR_CONFIG,
                        "dlq=off needs retry_max_attempts=0 (retry forever): with dead letters off "
                        "msgbus has nowhere to put a message after its last attempt, and it never "
                        "drops one");
    const char *g = mb_url_opt(u, "dlq_group");
    if (g && (e = mb_check_name("dead-letter group (dlq_group)", g)))
        return mb_error_prefix(MSGBUS_ERR_CONFIG, "bad option");
    const char *t = allow_topic ? mb_url_opt(u, "dlq_topic") : NULL;
    if (t && (e = mb_check_name("dead-letter topic (dlq_topic)", t)))
        return mb_error_prefix(MSGBUS_ERR_CONFIG, "bad option");
    /* start= is checked here (so a typo fails at once) and parsed again at
     * each subscribe, where a duration counts back from. */
    const char *st = mb_url_opt(u, "start");
    struct mb_start parsed;
    if (st && (e = mb_start_parse("option 'start'", st, &parsed)))
        return e;
    if (!st)
        st = def->start;
    p.dlq_group = mb_strdup(g ? g : def->dlq_group ? def->dlq_group : "dlq");
    p.dlq_topic = t ? mb_strdup(t) : NULL;
    p.start = st ? mb_strdup(st) : NULL;
    if (!p.dlq_group || (t && !p.dlq_topic) || (st && !p.start)) {
        mb_retry_policy_free(&p);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory reading retry options");
    }
    *out = p;
    return MSGBUS_OK;
}

static const struct mb_retry_policy mb_default_policy = {
    .max_attempts = 5,
    .initial_ms = 200,
    .multiplier = 2.0,
    .max_ms = 10000,
    .jitter = 0.2,
    .dlq = true,
};

msgbus_err_t mb_retry_policy_from_url(struct mb_url *url, struct mb_retry_policy *out)
{
    return mb_policy_read(url, &mb_default_policy, false, out);
}

/* The delay before delivery attempt + 1. */
static int64_t mb_backoff_ms(const struct mb_retry_policy *p, int attempt)
{
    double d = (double)p->initial_ms;
    for (int i = 1; i < attempt && d < (double)p->max_ms; i++)
        d *= p->multiplier;
    if (d > (double)p->max_ms)
        d = (double)p->max_ms;
    if (p->jitter > 0) {
        double r = (double)(mb_random64() >> 11) / 9007199254740992.0; /* [0, 1) */
        d *= 1.0 + p->jitter * (2.0 * r - 1.0);
    }
    return d < 0 ? 0 : (int64_t)(d + 0.5);
}

/* ------------------------------------------------------------------- holds */

struct mb_hold {
    unsigned char *key;
    size_t key_len;
    long pending;   /* nacked messages of this key whose timer runs */
    char **await;   /* ids handed back to the backend, expected back */
    size_t nawait, cap;
    msgbus_msg_t *ph, *pt; /* parked messages, in arrival order */
    size_t nparked;
    struct mb_hold *next;
};

static struct mb_hold *mb_hold_find(msgbus_sub_t *sub, const unsigned char *key, size_t len)
{
    for (struct mb_hold *h = sub->holds; h; h = h->next)
        if (h->key_len == len && memcmp(h->key, key, len) == 0)
            return h;
    return NULL;
}

static void mb_hold_park(struct mb_hold *h, msgbus_msg_t *m)
{
    m->next = NULL;
    if (h->pt)
        h->pt->next = m;
    else
        h->ph = m;
    h->pt = m;
    h->nparked++;
}

/* Takes the parked message with id `id` out of `h` (NULL: none). */
static msgbus_msg_t *mb_hold_unpark_id(struct mb_hold *h, const char *id)
{
    msgbus_msg_t *prev = NULL;
    for (msgbus_msg_t *p = h->ph; p; prev = p, p = p->next) {
        if (!p->id || strcmp(p->id, id) != 0)
            continue;
        if (prev)
            prev->next = p->next;
        else
            h->ph = p->next;
        if (h->pt == p)
            h->pt = prev;
        p->next = NULL;
        h->nparked--;
        return p;
    }
    return NULL;
}

size_t mb_holds_drop(msgbus_sub_t *sub, bool (*pred)(const msgbus_msg_t *, void *), void *arg,
                     msgbus_msg_t **dropped)
{
    size_t n = 0;
    for (struct mb_hold *h = sub->holds; h; h = h->next) {
        msgbus_msg_t **pp = &h->ph, *prev = NULL;
        while (*pp) {
            msgbus_msg_t *m = *pp;
            if (pred(m, arg)) {
                *pp = m->next;
                m->next = *dropped;
                *dropped = m;
                h->nparked--;
                n++;
            } else {
                prev = m;
                pp = &m->next;
            }
        }
        h->pt = prev;
    }
    return n;
}

static bool mb_hold_awaits(const struct mb_hold *h, const char *id)
{
    for (size_t i = 0; i < h->nawait; i++)
        if (strcmp(h->await[i], id) == 0)
            return true;
    return false;
}

static bool mb_hold_take_await(struct mb_hold *h, const char *id)
{
    for (size_t i = 0; i < h->nawait; i++) {
        if (strcmp(h->await[i], id) == 0) {
            free(h->await[i]);
            h->await[i] = h->await[--h->nawait];
            return true;
        }
    }
    return false;
}

static void mb_hold_unlink(msgbus_sub_t *sub, struct mb_hold *h)
{
    for (struct mb_hold **pp = &sub->holds; *pp; pp = &(*pp)->next) {
        if (*pp == h) {
            *pp = h->next;
            break;
        }
    }
    for (size_t i = 0; i < h->nawait; i++)
        free(h->await[i]);
    free(h->await);
    free(h->key);
    free(h);
}

/* Under sub->mu: when nothing of `h` is outstanding any more, appends its
 * parked messages to the receive queue and removes it. Returns how many
 * messages became receivable (the caller adds them to the work count after
 * unlocking). */
static size_t mb_hold_maybe_release(msgbus_sub_t *sub, struct mb_hold *h)
{
    if (h->pending > 0 || h->nawait > 0)
        return 0;
    size_t n = h->nparked;
    if (h->ph) {
        if (sub->tail)
            sub->tail->next = h->ph;
        else
            sub->head = h->ph;
        sub->tail = h->pt;
        sub->qlen += n;
        pthread_cond_broadcast(&sub->cond);
    }
    mb_hold_unlink(sub, h);
    return n;
}

size_t mb_hold_filter(msgbus_sub_t *sub, msgbus_msg_t **first, msgbus_msg_t **last)
{
    msgbus_msg_t *oh = NULL, *ot = NULL, *m = *first;
    size_t n = 0;
    while (m) {
        msgbus_msg_t *next = m->next;
        m->next = NULL;
        struct mb_hold *h = m->key ? mb_hold_find(sub, m->key, m->key_len) : NULL;
        if (h && !(m->id && mb_hold_take_await(h, m->id))) {
            mb_hold_park(h, m);
        } else {
            if (ot)
                ot->next = m;
            else
                oh = m;
            ot = m;
            n++;
            if (h && h->pending == 0 && h->nawait == 0) {
                /* The retried message is back: what waited behind it follows. */
                if (h->ph) {
                    ot->next = h->ph;
                    ot = h->pt;
                    n += h->nparked;
                }
                mb_hold_unlink(sub, h);
            }
        }
        m = next;
    }
    *first = oh;
    *last = ot;
    return n;
}

void mb_holds_free(msgbus_sub_t *sub)
{
    pthread_mutex_lock(&sub->mu);
    msgbus_msg_t *all = NULL;
    while (sub->holds) {
        struct mb_hold *h = sub->holds;
        if (h->pt) {
            h->pt->next = all;
            all = h->ph;
        }
        mb_hold_unlink(sub, h);
    }
    pthread_mutex_unlock(&sub->mu);
    while (all) { /* never given to the application: the broker redelivers */
        msgbus_msg_t *next = all->next;
        msgbus_msg_free(all);
        all = next;
    }
}

/* ------------------------------------------------------------------ worker */

enum mb_job_kind { MB_JOB_RETRY, MB_JOB_DLQ, MB_JOB_EXPIRE };

struct mb_job {
    enum mb_job_kind kind;
    int64_t due;      /* monotonic ms */
    msgbus_msg_t *m;  /* RETRY, DLQ: a reference of the core's */
    msgbus_sub_t *sub;/* EXPIRE: a reference */
    char *id;         /* EXPIRE: the awaited id */
    unsigned char *key; /* EXPIRE */
    size_t key_len;
    char *reason;     /* DLQ */
    char *dlq_topic;  /* DLQ */
    int tries;        /* DLQ publishes that failed */
    struct mb_job *next;
};

struct mb_retry_worker {
    msgbus_t *bus;
    pthread_t thread;
    bool running, stop;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct mb_job *timers;     /* by due time */
    struct mb_confirm *done;   /* internal confirms to handle */
    char **declared;           /* "topic\ngroup" of dead-letter storage made */
    size_t ndeclared;
};

static void mb_job_free(struct mb_job *j)
{
    if (!j)
        return;
    if (j->kind == MB_JOB_DLQ)
        atomic_fetch_sub(&j->m->sub->dead_letters, 1);
    if (j->m)
        msgbus_msg_free(j->m); /* drops the core's reference */
    if (j->sub)
        mb_sub_unref(j->sub);
    free(j->id);
    free(j->key);
    free(j->reason);
    free(j->dlq_topic);
    free(j);
}

static void mb_worker_schedule_locked(struct mb_retry_worker *w, struct mb_job *j)
{
    struct mb_job **pp = &w->timers;
    while (*pp && (*pp)->due <= j->due)
        pp = &(*pp)->next;
    j->next = *pp;
    *pp = j;
    pthread_cond_signal(&w->cond);
}

static void mb_worker_schedule(struct mb_retry_worker *w, struct mb_job *j)
{
    pthread_mutex_lock(&w->mu);
    mb_worker_schedule_locked(w, j);
    pthread_mutex_unlock(&w->mu);
}

static void mb_run_retry(struct mb_retry_worker *w, struct mb_job *j);
static void mb_run_dlq(struct mb_retry_worker *w, struct mb_job *j);
static void mb_run_expire(struct mb_job *j);
static void mb_dlq_confirmed(struct mb_retry_worker *w, struct mb_confirm *c);

static void *mb_worker_main(void *arg)
{
    mb_thread_name("msgbus-retry");
    struct mb_retry_worker *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        if (w->done) {
            struct mb_confirm *c = w->done;
            w->done = NULL;
            pthread_mutex_unlock(&w->mu);
            /* Confirms were pushed newest first: handle them oldest first. */
            struct mb_confirm *rev = NULL;
            while (c) {
                struct mb_confirm *next = c->next;
                c->next = rev;
                rev = c;
                c = next;
            }
            while (rev) {
                struct mb_confirm *next = rev->next;
                mb_dlq_confirmed(w, rev);
                rev = next;
            }
            pthread_mutex_lock(&w->mu);
            continue;
        }
        int64_t now = mb_mono_ms();
        if (w->timers && w->timers->due <= now) {
            struct mb_job *j = w->timers;
            w->timers = j->next;
            j->next = NULL;
            pthread_mutex_unlock(&w->mu);
            if (j->kind == MB_JOB_RETRY)
                mb_run_retry(w, j);
            else if (j->kind == MB_JOB_DLQ)
                mb_run_dlq(w, j);
            else
                mb_run_expire(j);
            pthread_mutex_lock(&w->mu);
            continue;
        }
        if (w->timers) {
            struct timespec dl;
            mb_deadline(&dl, w->timers->due - now);
            pthread_cond_timedwait(&w->cond, &w->mu, &dl);
        } else {
            pthread_cond_wait(&w->cond, &w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* The bus's worker, started on first use; NULL (error set) on failure. */
static struct mb_retry_worker *mb_worker_get(msgbus_t *bus)
{
    pthread_mutex_lock(&bus->worker_mu);
    struct mb_retry_worker *w = bus->worker;
    if (!w) {
        w = calloc(1, sizeof *w);
        if (!w) {
            pthread_mutex_unlock(&bus->worker_mu);
            mb_error(MSGBUS_ERR_NOMEM, "out of memory starting the retry worker");
            return NULL;
        }
        w->bus = bus;
        pthread_mutex_init(&w->mu, NULL);
        mb_cond_init(&w->cond);
        int rc = pthread_create(&w->thread, NULL, mb_worker_main, w);
        if (rc != 0) {
            pthread_mutex_destroy(&w->mu);
            pthread_cond_destroy(&w->cond);
            free(w);
            pthread_mutex_unlock(&bus->worker_mu);
            mb_error(MSGBUS_ERR_INTERNAL, "cannot start the retry worker thread: %s",
                     strerror(rc));
            return NULL;
        }
        w->running = true;
        bus->worker = w;
    }
    pthread_mutex_unlock(&bus->worker_mu);
    return w;
}

void mb_retry_confirmed(msgbus_t *bus, struct mb_confirm *token)
{
    struct mb_retry_worker *w = bus->worker; /* set before any internal publish */
    pthread_mutex_lock(&w->mu);
    token->next = w->done;
    w->done = token;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
    atomic_fetch_sub(&bus->outstanding, 1);
    pthread_mutex_lock(&bus->mu); /* flush waits for this too */
    pthread_cond_broadcast(&bus->cond);
    pthread_mutex_unlock(&bus->mu);
}

void mb_retry_stop(msgbus_t *bus)
{
    struct mb_retry_worker *w = bus->worker;
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->mu);
    if (w->running)
        pthread_join(w->thread, NULL);
    w->running = false;
}

/* After the backend closed: whatever the worker still holds is released
 * (unsettled messages go back to the broker). */
static void mb_retry_free(msgbus_t *bus)
{
    struct mb_retry_worker *w = bus->worker;
    if (!w)
        return;
    while (w->timers) {
        struct mb_job *j = w->timers;
        w->timers = j->next;
        mb_job_free(j);
    }
    while (w->done) {
        struct mb_confirm *c = w->done;
        w->done = c->next;
        mb_job_free(c->opaque);
        free(c->error);
        free(c);
    }
    for (size_t i = 0; i < w->ndeclared; i++)
        free(w->declared[i]);
    free(w->declared);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cond);
    free(w);
    bus->worker = NULL;
}

void mb_retry_release(msgbus_t *bus)
{
    mb_retry_stop(bus);
    mb_retry_free(bus);
}

/* ------------------------------------------------------------------ retries */

static void mb_run_retry(struct mb_retry_worker *w, struct mb_job *j)
{
    msgbus_msg_t *m = j->m;
    msgbus_sub_t *sub = m->sub;
    bool awaited = false;
    if (m->key) {
        pthread_mutex_lock(&sub->mu);
        struct mb_hold *h = mb_hold_find(sub, m->key, m->key_len);
        if (h)
            h->pending--;
        msgbus_msg_t *back = h && m->id ? mb_hold_unpark_id(h, m->id) : NULL;
        if (back) {
            /* It is back already: the backend delivered it again before
             * the timer fired (a connection lost and made again gives
             * everything unsettled back). That copy is the return; it
             * goes first, the rest after it once the hold ends. */
            back->next = h->ph;
            h->ph = back;
            if (!h->pt)
                h->pt = back;
            h->nparked++;
        } else if (h && m->id) {
            char *id = mb_strdup(m->id);
            if (id && h->nawait == h->cap) {
                size_t cap = h->cap ? h->cap * 2 : 2;
                char **na = realloc(h->await, cap * sizeof *na);
                if (na) {
                    h->await = na;
                    h->cap = cap;
                }
            }
            if (id && h->nawait < h->cap) {
                h->await[h->nawait++] = id;
                awaited = true;
            } else {
                free(id);
            }
        }
        pthread_mutex_unlock(&sub->mu);
    }
    msgbus_err_t e = mb_sub_settle(sub, m, MB_SETTLE_NACK);
    if (e && e != MSGBUS_ERR_CLOSED)
        mb_log(MSGBUS_LOG_ERROR,
               "retry of message %s on '%s' failed (%s): %s; it stays unsettled and the broker "
               "delivers it again when the subscription closes",
               m->id ? m->id : "(no id)", sub->topic, msgbus_err_name(e), msgbus_last_error());
    if (m->key) {
        /* Watch for the message to come back; if it went to another
         * consumer (or the nack failed) the hold ends on a timer. */
        size_t released = 0;
        pthread_mutex_lock(&sub->mu);
        /* Looked up again: the message may already be back (Kafka and mem
         * push it during the nack), which ends the hold. */
        struct mb_hold *h = mb_hold_find(sub, m->key, m->key_len);
        bool still = false;
        if (h) {
            if (awaited && e)
                mb_hold_take_await(h, m->id);
            still = awaited && !e && mb_hold_awaits(h, m->id);
            released = mb_sub_work(sub, mb_hold_maybe_release(sub, h));
        }
        pthread_mutex_unlock(&sub->mu);
        if (released)
            mb_work_add(sub->bus, (long)released);
        if (still) {
            struct mb_job *x = calloc(1, sizeof *x);
            if (x) {
                x->kind = MB_JOB_EXPIRE;
                x->due = mb_mono_ms() + MB_HOLD_TIMEOUT_MS;
                x->id = mb_strdup(m->id);
                x->key = mb_key_dup(m->key, m->key_len);
                x->key_len = m->key_len;
                atomic_fetch_add(&sub->refs, 1);
                x->sub = sub;
                if (x->id && x->key)
                    mb_worker_schedule(w, x);
                else
                    mb_job_free(x); /* no timer: the hold ends when the message returns */
            }
        }
    }
    mb_job_free(j);
}

static void mb_run_expire(struct mb_job *j)
{
    msgbus_sub_t *sub = j->sub;
    size_t released = 0;
    pthread_mutex_lock(&sub->mu);
    struct mb_hold *h = mb_hold_find(sub, j->key, j->key_len);
    if (h && mb_hold_take_await(h, j->id)) {
        mb_log(MSGBUS_LOG_DEBUG,
               "retried message %s did not come back to this consumer of '%s' within %d ms: "
               "releasing the messages held behind it",
               j->id, sub->topic, MB_HOLD_TIMEOUT_MS);
        released = mb_sub_work(sub, mb_hold_maybe_release(sub, h));
    }
    bool closed = sub->closed;
    pthread_mutex_unlock(&sub->mu);
    if (released && !closed)
        mb_work_add(sub->bus, (long)released);
    mb_job_free(j);
}

static msgbus_err_t mb_check_settle(msgbus_msg_t *m, const char *verb)
{
    if (!m)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_%s: message is NULL", verb);
    if (!m->sub)
        return mb_error(MSGBUS_ERR_STATE, "msgbus_%s: not a received message", verb);
    int expect = MB_MSG_RECEIVED;
    if (!atomic_compare_exchange_strong(&m->state, &expect, MB_MSG_NACKED))
        return mb_error(MSGBUS_ERR_STATE, "msgbus_%s: message %s was already %s", verb,
                        m->id ? m->id : "(no id)", expect == MB_MSG_ACKED ? "acked" : "nacked");
    return MSGBUS_OK;
}

static msgbus_err_t mb_closed_error(msgbus_sub_t *sub, const char *verb)
{
    return mb_error(MSGBUS_ERR_CLOSED,
                    "msgbus_%s: the subscription to '%s' is closed; the broker delivers the "
                    "message again",
                    verb, sub->topic);
}

/* Hands `m` to the worker for dead-lettering (takes a reference). */
static msgbus_err_t mb_dead_letter_submit(msgbus_msg_t *m, const char *reason, const char *verb)
{
    msgbus_sub_t *sub = m->sub;
    pthread_mutex_lock(&sub->mu);
    bool closed = sub->closed;
    pthread_mutex_unlock(&sub->mu);
    if (closed)
        return mb_closed_error(sub, verb);
    struct mb_retry_worker *w = mb_worker_get(sub->bus);
    if (!w)
        return mb_error_prefix(MSGBUS_ERR_INTERNAL, "msgbus_%s", verb);
    struct mb_job *j = calloc(1, sizeof *j);
    char *topic = NULL;
    if (j) {
        if (sub->policy.dlq_topic) {
            topic = mb_strdup(sub->policy.dlq_topic);
        } else if ((topic = malloc(strlen(sub->topic) + 5))) {
            strcpy(topic, sub->topic);
            strcat(topic, ".dlq");
        }
    }
    char *why = mb_strdup(reason ? reason : strcmp(verb, "nack") == 0 ? "nacked"
                                                                      : "dead-lettered");
    if (!j || !topic || !why) {
        free(j);
        free(topic);
        free(why);
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_%s: out of memory", verb);
    }
    j->kind = MB_JOB_DLQ;
    atomic_fetch_add(&sub->dead_letters, 1);
    j->due = mb_mono_ms();
    j->reason = why;
    j->dlq_topic = topic;
    mb_msg_ref(m);
    j->m = m;
    mb_worker_schedule(w, j);
    return MSGBUS_OK;
}

static msgbus_err_t mb_nack(msgbus_msg_t *m, const char *reason, bool *retried);

MSGBUS_API msgbus_err_t msgbus_nack_reason(msgbus_msg_t *m, const char *reason)
{
    bool retried = false;
    msgbus_err_t e = mb_nack(m, reason, &retried);
    if (e == MSGBUS_OK) {
        if (retried)
            atomic_fetch_add_explicit(&m->sub->st.retried, 1, memory_order_relaxed);
        mb_stats_settled(m, MSGBUS_SETTLED_NACK);
    }
    return e;
}

/* msgbus_nack_reason; *retried: the message goes back for another attempt
 * (not to the dead-letter topic). */
static msgbus_err_t mb_nack(msgbus_msg_t *m, const char *reason, bool *retried)
{
    msgbus_err_t e = mb_check_settle(m, "nack");
    if (e)
        return e;
    msgbus_sub_t *sub = m->sub;
    const struct mb_retry_policy *pol = &sub->policy;
    if (pol->dlq && pol->max_attempts > 0 && m->attempt >= pol->max_attempts) {
        if ((e = mb_dead_letter_submit(m, reason, "nack")))
            atomic_store(&m->state, MB_MSG_RECEIVED);
        return e;
    }
    *retried = true;
    int64_t delay = mb_backoff_ms(pol, m->attempt);
    /* After msgbus_close(bus) the subscription is closed and sub->bus is
     * gone: look before touching the bus's worker. */
    pthread_mutex_lock(&sub->mu);
    bool closed = sub->closed;
    pthread_mutex_unlock(&sub->mu);
    if (closed) {
        atomic_store(&m->state, MB_MSG_RECEIVED);
        return mb_closed_error(sub, "nack");
    }
    struct mb_retry_worker *w = delay > 0 ? mb_worker_get(sub->bus) : NULL;
    struct mb_job *j = w ? calloc(1, sizeof *j) : NULL;
    if (!j) {
        /* No delay wanted (or no memory for the timer): give it back now. */
        if ((e = mb_sub_settle(sub, m, MB_SETTLE_NACK)))
            atomic_store(&m->state, MB_MSG_RECEIVED);
        return e;
    }
    size_t moved = 0;
    pthread_mutex_lock(&sub->mu);
    if (sub->closed) {
        pthread_mutex_unlock(&sub->mu);
        free(j);
        atomic_store(&m->state, MB_MSG_RECEIVED);
        return mb_closed_error(sub, "nack");
    }
    if (m->key) {
        struct mb_hold *h = mb_hold_find(sub, m->key, m->key_len);
        if (!h && (h = calloc(1, sizeof *h))) {
            if (!(h->key = mb_key_dup(m->key, m->key_len))) {
                free(h);
                h = NULL;
            } else {
                h->key_len = m->key_len;
                h->next = sub->holds;
                sub->holds = h;
            }
        }
        if (h) {
            h->pending++;
            /* Messages with this key already queued go behind the retry. */
            msgbus_msg_t **pp = &sub->head, *prev = NULL;
            while (*pp) {
                msgbus_msg_t *q = *pp;
                if (q->key && q->key_len == h->key_len && memcmp(q->key, h->key, h->key_len) == 0) {
                    *pp = q->next;
                    mb_hold_park(h, q);
                    moved++;
                } else {
                    prev = q;
                    pp = &q->next;
                }
            }
            sub->tail = prev;
            sub->qlen -= moved;
        }
    }
    long unwork = mb_sub_work(sub, moved);
    pthread_mutex_unlock(&sub->mu);
    if (unwork)
        mb_work_sub(sub->bus, unwork);
    j->kind = MB_JOB_RETRY;
    j->due = mb_mono_ms() + delay;
    mb_msg_ref(m);
    j->m = m;
    mb_log(MSGBUS_LOG_DEBUG, "message %s on '%s' nacked (attempt %d%s%s): retry in %lld ms",
           m->id ? m->id : "(no id)", sub->topic, m->attempt, reason ? "): " : "",
           reason ? reason : "", (long long)delay);
    mb_worker_schedule(w, j);
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_dead_letter(msgbus_msg_t *m, const char *reason)
{
    if (m && m->sub && !m->sub->policy.dlq)
        return mb_error(MSGBUS_ERR_STATE,
                        "msgbus_dead_letter: dead letters are off for the subscription to '%s' "
                        "(dlq=off)",
                        m->sub->topic);
    msgbus_err_t e = mb_check_settle(m, "dead_letter");
    if (e)
        return e;
    if ((e = mb_dead_letter_submit(m, reason, "dead_letter")))
        atomic_store(&m->state, MB_MSG_RECEIVED);
    else
        mb_stats_settled(m, MSGBUS_SETTLED_DEAD_LETTER);
    return e;
}

/* ------------------------------------------------------------ dead letters */

static bool mb_is_msgbus_header(const char *name)
{
    /* The invalid-id and invalid-headers records describe what arrived
     * with the message, not a delivery: they travel with its letters. */
    return strncmp(name, "msgbus-", 7) == 0 && strcmp(name, MB_H_INVALID_ID) != 0 &&
           strcmp(name, MB_H_INVALID_HEADERS) != 0;
}

/* Drops every msgbus-* header (attempt counters, earlier dead-letter
 * headers): they describe a delivery, not the message. */
static void mb_strip_msgbus_headers(msgbus_msg_t *m)
{
    size_t k = 0;
    for (size_t i = 0; i < m->nheaders; i++) {
        if (mb_is_msgbus_header(m->headers[i].name)) {
            free(m->headers[i].name);
            free(m->headers[i].value);
        } else {
            m->headers[k++] = m->headers[i];
        }
    }
    m->nheaders = k;
    mb_msg_headers_changed(m);
}

static msgbus_err_t mb_put(msgbus_msg_t *m, const char *name, const char *value)
{
    return mb_msg_put_header(m, name, strlen(name), value, strlen(value));
}

static void mb_dlq_again(struct mb_retry_worker *w, struct mb_job *j, const char *why)
{
    int64_t d = MB_DLQ_RETRY_MIN_MS;
    for (int i = 0; i < j->tries && d < MB_DLQ_RETRY_MAX_MS; i++)
        d *= 2;
    if (d > MB_DLQ_RETRY_MAX_MS)
        d = MB_DLQ_RETRY_MAX_MS;
    j->tries++;
    mb_log(MSGBUS_LOG_ERROR,
           "dead letter of message %s to '%s' failed (%s); trying again in %lld ms (the original "
           "stays unacked meanwhile)",
           j->m->id ? j->m->id : "(no id)", j->dlq_topic, why, (long long)d);
    j->due = mb_mono_ms() + d;
    mb_worker_schedule(w, j);
}

static bool mb_declared(struct mb_retry_worker *w, const char *topic, const char *group)
{
    size_t tl = strlen(topic);
    for (size_t i = 0; i < w->ndeclared; i++)
        if (strncmp(w->declared[i], topic, tl) == 0 && w->declared[i][tl] == '\n' &&
            strcmp(w->declared[i] + tl + 1, group) == 0)
            return true;
    return false;
}

static void mb_note_declared(struct mb_retry_worker *w, const char *topic, const char *group)
{
    char **nd = realloc(w->declared, (w->ndeclared + 1) * sizeof *nd);
    if (!nd)
        return; /* declared again next time: harmless */
    w->declared = nd;
    size_t tl = strlen(topic), gl = strlen(group);
    char *s = malloc(tl + gl + 2);
    if (!s)
        return;
    memcpy(s, topic, tl);
    s[tl] = '\n';
    memcpy(s + tl + 1, group, gl + 1);
    w->declared[w->ndeclared++] = s;
}

static void mb_run_dlq(struct mb_retry_worker *w, struct mb_job *j)
{
    msgbus_msg_t *m = j->m;
    msgbus_sub_t *sub = m->sub;
    msgbus_t *bus = w->bus;
    pthread_mutex_lock(&sub->mu);
    bool closed = sub->closed;
    pthread_mutex_unlock(&sub->mu);
    if (closed) {
        /* Unacked: the broker gives it to another consumer, which will
         * dead-letter it in turn. */
        mb_job_free(j);
        return;
    }
    const char *group = sub->policy.dlq_group;
    if (!mb_declared(w, j->dlq_topic, group)) {
        msgbus_err_t e = bus->ops->declare(bus->be, j->dlq_topic, group);
        if (e) {
            char why[300];
            snprintf(why, sizeof why, "declaring it: %s", msgbus_last_error());
            mb_dlq_again(w, j, why);
            return;
        }
        mb_note_declared(w, j->dlq_topic, group);
    }
    msgbus_msg_t *d = mb_msg_clone(m);
    char attempts[24], when[40];
    snprintf(attempts, sizeof attempts, "%d", m->attempt);
    mb_rfc3339_format(mb_now_ms(), when);
    msgbus_err_t e = d ? MSGBUS_OK : MSGBUS_ERR_NOMEM;
    if (d)
        mb_strip_msgbus_headers(d);
    if (!e && (e = mb_put(d, "msgbus-dlq-topic", sub->topic)) == MSGBUS_OK &&
        (e = mb_put(d, "msgbus-dlq-group", sub->group ? sub->group : "")) == MSGBUS_OK &&
        (e = mb_put(d, "msgbus-dlq-attempts", attempts)) == MSGBUS_OK &&
        (e = mb_put(d, "msgbus-dlq-error", j->reason)) == MSGBUS_OK)
        e = mb_put(d, "msgbus-dlq-time", when);
    /* A foreign message without an id gives letters without one: every
     * letter of one message shares its id, and "none" is shared too (a
     * fresh id per letter would make one message look like several). */
    size_t tl = strlen(j->dlq_topic) + 1, il = d && d->id ? strlen(d->id) + 1 : 1;
    struct mb_confirm *t = e ? NULL : calloc(1, sizeof *t + tl + il);
    if (!t) {
        msgbus_msg_free(d);
        mb_dlq_again(w, j, "out of memory");
        return;
    }
    t->topic = (char *)(t + 1);
    t->id = t->topic + tl;
    memcpy(t->topic, j->dlq_topic, tl);
    if (d->id)
        memcpy(t->id, d->id, il);
    else
        t->id[0] = '\0';
    t->internal = true;
    t->opaque = j;
    atomic_fetch_add(&bus->outstanding, 1);
    e = bus->ops->publish(bus->be, j->dlq_topic, d, t);
    msgbus_msg_free(d);
    if (e) {
        free(t);
        atomic_fetch_sub(&bus->outstanding, 1);
        char why[300];
        snprintf(why, sizeof why, "%s: %s", msgbus_err_name(e), msgbus_last_error());
        mb_dlq_again(w, j, why);
    }
}

static void mb_dlq_confirmed(struct mb_retry_worker *w, struct mb_confirm *c)
{
    struct mb_job *j = c->opaque;
    if (c->status != MSGBUS_OK) {
        char why[300];
        snprintf(why, sizeof why, "%s: %s", msgbus_err_name(c->status),
                 c->error ? c->error : "");
        free(c->error);
        free(c);
        mb_dlq_again(w, j, why);
        return;
    }
    free(c->error);
    free(c);
    msgbus_msg_t *m = j->m;
    msgbus_sub_t *sub = m->sub;
    mb_log(MSGBUS_LOG_INFO,
           "dead letter of message %s confirmed on '%s' (from '%s', group %s, attempt %d: %s); "
           "acking the original",
           m->id ? m->id : "(no id)", j->dlq_topic, sub->topic, sub->group ? sub->group : "-",
           m->attempt, j->reason);
    atomic_fetch_add_explicit(&sub->st.dead_lettered, 1, memory_order_relaxed);
    msgbus_err_t e = mb_sub_settle(sub, m, MB_SETTLE_ACK);
    if (e)
        mb_log(MSGBUS_LOG_WARN,
               "ack of dead-lettered message %s on '%s' failed (%s): it will be delivered and "
               "dead-lettered again",
               m->id ? m->id : "(no id)", sub->topic, msgbus_last_error());
    mb_job_free(j);
}

/* ------------------------------------------------------------ subscribing */

MSGBUS_API msgbus_err_t msgbus_subscribe_ex(msgbus_t *bus, const char *topic, const char *group,
                                            const char *options, msgbus_sub_t **out)
{
    if (!bus || !topic || !out)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_subscribe: %s is NULL",
                        !bus ? "bus" : !topic ? "topic" : "out");
    msgbus_err_t e;
    if ((e = mb_check_name("topic", topic)) || (group && (e = mb_check_name("group", group))))
        return e;
    struct mb_url *u;
    if ((e = mb_url_parse_options(options ? options : "", &u)))
        return mb_error_prefix(MSGBUS_ERR_CONFIG, "subscription options");
    struct mb_retry_policy pol;
    e = mb_policy_read(u, &bus->policy, true, &pol);
    for (size_t i = 0; !e && i < u->nopts; i++) {
        if (u->opts[i].used)
            continue;
        const char *const *lists[1] = {mb_sub_options};
        const char *best = mb_url_suggest(u->opts[i].key, lists, 1);
        e = mb_error(MSGBUS_ERR_CONFIG, "unknown subscription option '%s' in '%s'%s%s%s",
                     u->opts[i].key, u->redacted, best ? "; did you mean '" : "", best ? best : "",
                     best ? "'?" : "");
        mb_retry_policy_free(&pol);
    }
    mb_url_free(u);
    if (e)
        return e;
    if (pol.dlq && !pol.dlq_topic) {
        size_t n = strlen(topic);
        if (n + 4 > 249) {
            mb_retry_policy_free(&pol);
            return mb_error(MSGBUS_ERR_CONFIG,
                            "topic '%.64s…' is too long to add '.dlq' for its dead-letter topic: "
                            "set dlq_topic",
                            topic);
        }
    }
    return mb_subscribe_policy(bus, topic, group, &pol, out);
}

/* ------------------------------------------------------------------ replay */

struct mb_replay_item {
    msgbus_msg_t *m;
    msgbus_err_t status;
    char error[200];
    bool published;
};

static void mb_replay_cb(void *opaque, const msgbus_report_t *r)
{
    struct mb_replay_item *it = opaque;
    it->status = r->status;
    if (r->status != MSGBUS_OK)
        snprintf(it->error, sizeof it->error, "%s", r->error);
}

MSGBUS_API msgbus_err_t msgbus_dlq_replay(msgbus_t *bus, const char *dlq_topic,
                                          const char *dlq_group, size_t max, int idle_ms,
                                          size_t *moved)
{
    if (moved)
        *moved = 0;
    if (!bus || !dlq_topic)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_dlq_replay: %s is NULL",
                        !bus ? "bus" : "dlq_topic");
    if (idle_ms < 0)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_dlq_replay: idle_ms must be 0 or more");
    msgbus_sub_t *sub;
    msgbus_err_t e = msgbus_subscribe_ex(bus, dlq_topic, dlq_group ? dlq_group : "dlq",
                                         "dlq=off&retry_max_attempts=0&retry_initial_ms=0", &sub);
    if (e)
        return mb_error_prefix(e, "msgbus_dlq_replay");
    struct mb_replay_item *items = calloc(MB_REPLAY_BATCH, sizeof *items);
    msgbus_msg_t *kept = NULL; /* without a msgbus-dlq-topic header: left alone */
    size_t total = 0, nkept = 0, nfailed = 0;
    char first_error[300] = "";
    if (!items) {
        msgbus_sub_close(sub);
        return mb_error(MSGBUS_ERR_NOMEM, "msgbus_dlq_replay: out of memory");
    }
    bool done = false;
    while (!done) {
        size_t n = 0;
        while (n < MB_REPLAY_BATCH && (max == 0 || total + n < max)) {
            msgbus_msg_t *m;
            e = msgbus_receive(sub, n == 0 ? idle_ms : 0, &m);
            if (e) {
                if (n == 0 || e != MSGBUS_ERR_TIMEOUT)
                    done = true;
                break;
            }
            const char *to = msgbus_msg_header(m, "msgbus-dlq-topic");
            msgbus_msg_t *copy = NULL;
            if (to && mb_valid_name(to, 249))
                copy = mb_msg_clone(m);
            if (!copy) {
                if (!to || !mb_valid_name(to, 249))
                    mb_log(MSGBUS_LOG_WARN,
                           "dlq replay: message %s on '%s' has no valid msgbus-dlq-topic header; "
                           "left on the dead-letter topic",
                           m->id ? m->id : "(no id)", dlq_topic);
                m->next = kept;
                kept = m;
                nkept++;
                continue;
            }
            mb_strip_msgbus_headers(copy);
            items[n] = (struct mb_replay_item){.m = m, .status = MSGBUS_OK};
            e = msgbus_publish(bus, to, copy, mb_replay_cb, &items[n]);
            while (e == MSGBUS_ERR_QUEUE_FULL) {
                msgbus_poll(bus, 100, NULL);
                e = msgbus_publish(bus, to, copy, mb_replay_cb, &items[n]);
            }
            msgbus_msg_free(copy);
            items[n].published = e == MSGBUS_OK;
            if (e) {
                items[n].status = e;
                snprintf(items[n].error, sizeof items[n].error, "%s", msgbus_last_error());
            }
            n++;
        }
        if (n == 0)
            break;
        msgbus_flush(bus, -1, NULL); /* outcomes land in items[] via the callbacks */
        for (size_t i = 0; i < n; i++) {
            if (items[i].status == MSGBUS_OK && msgbus_ack(items[i].m) == MSGBUS_OK) {
                total++;
            } else {
                nfailed++;
                if (!*first_error)
                    snprintf(first_error, sizeof first_error, "message %s: %s",
                             items[i].m->id ? items[i].m->id : "(no id)",
                             items[i].status ? items[i].error : msgbus_last_error());
            }
            msgbus_msg_free(items[i].m); /* unacked ones stay on the dead-letter topic */
        }
        if (max && total >= max)
            break;
    }
    free(items);
    while (kept) {
        msgbus_msg_t *next = kept->next;
        msgbus_msg_free(kept);
        kept = next;
    }
    msgbus_sub_close(sub);
    if (moved)
        *moved = total;
    mb_log(MSGBUS_LOG_INFO, "dlq replay from '%s': %zu moved, %zu failed, %zu without origin",
           dlq_topic, total, nfailed, nkept);
    if (nfailed)
        return mb_error(MSGBUS_ERR_DELIVERY,
                        "msgbus_dlq_replay: %zu moved, %zu could not be republished (first: %s); "
                        "they stay on '%s'",
                        total, nfailed, first_error, dlq_topic);
    if (nkept)
        return mb_error(MSGBUS_ERR_NOT_FOUND,
                        "msgbus_dlq_replay: %zu moved; %zu message(s) on '%s' have no "
                        "msgbus-dlq-topic header and were left there",
                        total, nkept, dlq_topic);
    return MSGBUS_OK;
}
