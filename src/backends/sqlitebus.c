/*
 * sqlitebus.c — sqlite:///path/to/bus.db: a broker in a file.
 *
 * Every process that opens the same file shares its topics and groups
 * (WAL mode, so readers never wait for a writer and writers take turns,
 * each waiting up to busy_timeout_ms). The model is docs/semantics.md's,
 * stored in five tables (docs/sqlite.md shows them):
 *  - msgbus_topics: one row per topic name (an integer id for the rest);
 *  - msgbus_msgs: one row per published message (seq rising over the whole
 *    file, never reused: the next value lives in msgbus_meta);
 *  - msgbus_groups: one row per group of a topic; a broadcast subscriber's
 *    private group has no name and dies with its member;
 *  - msgbus_entries: a message's place in one group (the group "holds" it):
 *    made by the publish for every group the topic has then, owner NULL
 *    while pending, a member id while in flight, deleted by the ack; a
 *    nack sets owner NULL again, so it comes back at its place in order
 *    with its delivery count raised;
 *  - msgbus_members: one row per subscriber, with its process (node, pid)
 *    and a heartbeat. A member whose process is gone (same node, pid not
 *    alive) or whose heartbeat is older than session_timeout_ms is removed
 *    by any other bus on the file, and what it held is pending again.
 * Per-key order across members: a pending entry whose key is held in
 * flight by another member of its group is not claimed (key ownership, as
 * in mem.c), so a key's next message waits for the settle of the one
 * before, whichever process holds it.
 *
 * Each bus has one connection and one I/O thread. publish and settle only
 * queue and wake the thread; the thread writes whatever is queued in one
 * transaction (publishes, settles, heartbeats, clean-up and claims for its
 * subscriptions), and confirms the publishes once it committed: confirmed
 * = committed (with synchronous=full also on disk). It sleeps in poll(2)
 * on a wake pipe and an inotify watch of the file's directory (an event
 * on the file or its -wal means another connection wrote; PRAGMA
 * data_version says whether it committed), with poll_ms as a safety net
 * and the heartbeat as the longest sleep: no busy polling.
 *
 * Retention: the messages no group holds any more are deleted, except the
 * last retain=N of each topic (a setting of the file: the last bus that
 * gives retain= sets it), which start=earliest, a time and
 * msgbus_group_reset can go back to.
 *
 * Everything read from the file is untrusted (another program may write
 * it): ids and headers go through the core's checks (mb_msg_received_*),
 * a malformed header block is counted as an invalid header, and a message
 * row that is missing is skipped with its entry.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/inotify.h>
#endif

#include <jansson.h>
#include <sqlite3.h>

#include "backends/backend.h"

#define SB_SCHEMA "msgbus-sqlitebus-1"
#define SB_SCAN_LIMIT 4096    /* pending entries a claim looks at */
#define SB_HEARTBEAT_MS 1000  /* members' heartbeat and clean-up period */
#define SB_RETAIN_MAX 100000000L
#define SB_AGAIN_NOW 1
#define SB_AGAIN_LATER 2
#define SB_FAIR_WAIT_MS 100 /* a fair share taken: the others' turn first */
#define SB_HOME_WAIT_MS 500 /* before a member takes other members' new keys */
#define SB_CLAIM_MAX 1024 /* entries one claim takes at most */

enum sb_stmt {
    SB_TOPIC_ADD,
    SB_TOPIC_GET,
    SB_MSG_ADD,
    SB_ENTRIES_ADD,
    SB_ACK,
    SB_NACK,
    SB_SEQ_GET,
    SB_SEQ_SET,
    SB_MEMBERS_COUNT,
    SB_PENDING,
    SB_CLAIM,
    SB_MSG_GET,
    SB_BEAT,
    SB_NSTMT
};

static const char *const sb_sql[SB_NSTMT] = {
    [SB_TOPIC_ADD] = "INSERT OR IGNORE INTO msgbus_topics(name) VALUES(?1)",
    [SB_TOPIC_GET] = "SELECT id FROM msgbus_topics WHERE name=?1",
    [SB_MSG_ADD] = "INSERT INTO msgbus_msgs(seq,topic,ts,id,key,headers,payload,ce_type,"
                   "ce_source,ce_subject) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)",
    [SB_ENTRIES_ADD] = "INSERT OR IGNORE INTO msgbus_entries(grp,seq,key) "
                       "SELECT id,?1,?2 FROM msgbus_groups WHERE topic=?3",
    [SB_ACK] = "DELETE FROM msgbus_entries WHERE grp=?1 AND seq=?2 AND owner=?3",
    [SB_NACK] = "UPDATE msgbus_entries SET owner=NULL WHERE grp=?1 AND seq=?2 AND owner=?3",
    [SB_SEQ_GET] = "SELECT v FROM msgbus_meta WHERE k='next_seq'",
    [SB_SEQ_SET] = "UPDATE msgbus_meta SET v=?1 WHERE k='next_seq'",
    [SB_MEMBERS_COUNT] = "SELECT COUNT(*) FROM msgbus_members WHERE grp=?1",
    /* Pending entries of a group in order, without those whose key another
     * member holds in flight (key ownership). */
    [SB_PENDING] =
        "SELECT e.seq,e.deliveries,e.key,e.key IS NOT NULL AND EXISTS (SELECT 1 FROM "
        "msgbus_entries m WHERE m.grp=?1 AND m.key=e.key AND m.owner=?2) FROM (SELECT seq,key,"
        "deliveries FROM msgbus_entries "
        "WHERE grp=?1 AND owner IS NULL ORDER BY seq LIMIT " "4096" ") e WHERE e.key IS NULL "
        "OR NOT EXISTS (SELECT 1 FROM msgbus_entries o WHERE o.grp=?1 AND o.key=e.key AND "
        "o.owner IS NOT NULL AND o.owner<>?2) ORDER BY e.seq LIMIT ?3",
    [SB_CLAIM] = "UPDATE msgbus_entries SET owner=?3, deliveries=deliveries+1 "
                 "WHERE grp=?1 AND seq=?2 AND owner IS NULL",
    [SB_MSG_GET] = "SELECT ts,id,key,headers,payload,ce_type,ce_source,ce_subject "
                   "FROM msgbus_msgs WHERE seq=?1",
    [SB_BEAT] = "UPDATE msgbus_members SET beat=?2 WHERE id=?1",
};

static const char sb_ddl[] =
    "CREATE TABLE IF NOT EXISTS msgbus_meta(k TEXT PRIMARY KEY, v);"
    "INSERT OR IGNORE INTO msgbus_meta(k,v) VALUES('schema','" SB_SCHEMA "');"
    "INSERT OR IGNORE INTO msgbus_meta(k,v) VALUES('next_seq',1);"
    "INSERT OR IGNORE INTO msgbus_meta(k,v) VALUES('retain',0);"
    "CREATE TABLE IF NOT EXISTS msgbus_topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL "
    "UNIQUE);"
    "CREATE TABLE IF NOT EXISTS msgbus_msgs(seq INTEGER PRIMARY KEY, topic INTEGER NOT NULL, "
    "ts INTEGER NOT NULL, id TEXT, key BLOB, headers BLOB, payload BLOB NOT NULL, "
    "ce_type TEXT, ce_source TEXT, ce_subject TEXT);"
    "CREATE INDEX IF NOT EXISTS msgbus_msgs_topic ON msgbus_msgs(topic, seq);"
    "CREATE TABLE IF NOT EXISTS msgbus_groups(id INTEGER PRIMARY KEY, topic INTEGER NOT NULL, "
    "name TEXT, member INTEGER);"
    "CREATE UNIQUE INDEX IF NOT EXISTS msgbus_groups_name ON msgbus_groups(topic, name) "
    "WHERE name IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS msgbus_groups_topic ON msgbus_groups(topic);"
    "CREATE TABLE IF NOT EXISTS msgbus_entries(grp INTEGER NOT NULL, seq INTEGER NOT NULL, "
    "key BLOB, owner INTEGER, deliveries INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(grp, seq)) "
    "WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS msgbus_entries_owned ON msgbus_entries(grp, key, owner) "
    "WHERE owner IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS msgbus_members(id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "grp INTEGER NOT NULL, "
    "node TEXT NOT NULL, pid INTEGER NOT NULL, beat INTEGER NOT NULL);";

struct sb_pub { /* a publish waiting for the I/O thread */
    char *topic;
    msgbus_msg_t *msg;
    struct mb_confirm *token;
    int64_t queued_us;
    struct sb_pub *next;
};

struct sb_settle { /* a settle waiting for the I/O thread */
    int64_t grp, seq, member;
    enum mb_settle how;
    struct sb_settle *next;
};

struct sb_topic { /* topic name → id, never removed (topics are not deleted) */
    char *name;
    int64_t id;
};

struct mb_backend {
    msgbus_t *bus;
    char *path;      /* the file */
    sqlite3 *db;
    sqlite3_stmt *st[SB_NSTMT];
    /* options */
    long prefetch, max_bytes, busy_ms, session_ms, poll_ms, batch_max, retain;
    bool sync_full;
    bool tx_full; /* the connection's synchronous is FULL now */
    char node[128];
    /* dbmu: the connection, the statements, subs, topics. */
    pthread_mutex_t dbmu;
    struct mb_backend_sub *subs;
    struct sb_topic *topics;
    size_t ntopics, cap_topics;
    int64_t data_version;
    int64_t last_beat_ms;
    int64_t busy_since_ms; /* the current wait for the write lock */
    /* qmu: the queues, stop. */
    pthread_mutex_t qmu;
    struct sb_pub *pub_head, *pub_tail;
    size_t npub;
    struct sb_settle *set_head, *set_tail;
    bool stop;
    _Atomic bool fetch_needed;
    _Atomic bool woken;
    int wake[2];
    int ino; /* inotify fd, -1: none */
    bool thread_started;
    pthread_t thread;
    /* figures for stats (relaxed atomics) */
    _Atomic uint64_t n_tx, n_published, n_claimed, n_acked, n_nacked, n_reclaimed, n_busy;
};

struct mb_backend_sub {
    struct mb_backend *be;
    msgbus_sub_t *sub;
    int64_t grp, member;
    bool broadcast;
    bool expired; /* its member was removed (dbmu): no claims until it joins again */
    int64_t idle_since_ms; /* claims found only others' new keys since (0: not) */
    _Atomic long ninflight;
    _Atomic bool paused;
    struct mb_backend_sub *next;
};

/* ----------------------------------------------------------- helpers */

static void sb_wake(struct mb_backend *be)
{
    if (!atomic_exchange(&be->woken, true)) {
        char c = 1;
        ssize_t r = write(be->wake[1], &c, 1);
        (void)r; /* a full pipe is already a wake-up */
    }
}

static msgbus_err_t sb_dberr(struct mb_backend *be, msgbus_err_t code, const char *what)
{
    return mb_error(code, "sqlite://%s: %s: %s", be->path, what, sqlite3_errmsg(be->db));
}

static sqlite3_stmt *sb_st(struct mb_backend *be, enum sb_stmt i)
{
    sqlite3_stmt *s = be->st[i];
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return s;
}

static int sb_exec(struct mb_backend *be, const char *sql)
{
    return sqlite3_exec(be->db, sql, NULL, NULL, NULL);
}

/* Runs a one-off statement with up to three integer parameters (NULL
 * terminates the list early: pass fewer by giving n). Returns the first
 * column of the first row as an integer in *out (when out and a row), and
 * the SQLite result. */
static int sb_run(struct mb_backend *be, const char *sql, int n, const int64_t *args,
                  int64_t *out)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(be->db, sql, -1, &s, NULL);
    if (rc != SQLITE_OK)
        return rc;
    for (int i = 0; i < n; i++)
        sqlite3_bind_int64(s, i + 1, args[i]);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (out)
            *out = sqlite3_column_int64(s, 0);
        rc = SQLITE_DONE;
    }
    sqlite3_finalize(s);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void sb_bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

/* The id of topic `name`, made when `create`; 0 when it does not exist,
 * -1 on a database error. dbmu held, inside a transaction when creating. */
static int64_t sb_topic_id(struct mb_backend *be, const char *name, bool create)
{
    for (size_t i = 0; i < be->ntopics; i++)
        if (strcmp(be->topics[i].name, name) == 0)
            return be->topics[i].id;
    sqlite3_stmt *s;
    if (create) {
        s = sb_st(be, SB_TOPIC_ADD);
        sb_bind_text(s, 1, name);
        if (sqlite3_step(s) != SQLITE_DONE)
            return -1;
    }
    s = sb_st(be, SB_TOPIC_GET);
    sb_bind_text(s, 1, name);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW)
        return -1;
    int64_t id = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    if (be->ntopics == be->cap_topics) {
        size_t cap = be->cap_topics ? be->cap_topics * 2 : 16;
        struct sb_topic *t = realloc(be->topics, cap * sizeof *t);
        if (!t)
            return id; /* not cached: looked up again next time */
        be->topics = t;
        be->cap_topics = cap;
    }
    char *copy = mb_strdup(name);
    if (copy) {
        be->topics[be->ntopics].name = copy;
        be->topics[be->ntopics++].id = id;
    }
    return id;
}

/* The header block: per header u32 name length, name, u32 value length,
 * value (little endian). */
static unsigned char *sb_headers_encode(const msgbus_msg_t *m, size_t *len)
{
    size_t n = 0;
    for (size_t i = 0; i < m->nheaders; i++)
        n += 8 + strlen(m->headers[i].name) + strlen(m->headers[i].value);
    *len = n;
    if (!n)
        return NULL;
    unsigned char *b = malloc(n), *p = b;
    if (!b)
        return NULL;
    for (size_t i = 0; i < m->nheaders; i++) {
        const char *parts[2] = {m->headers[i].name, m->headers[i].value};
        for (int k = 0; k < 2; k++) {
            uint32_t l = (uint32_t)strlen(parts[k]);
            for (int j = 0; j < 4; j++)
                *p++ = (unsigned char)(l >> (8 * j));
            memcpy(p, parts[k], l);
            p += l;
        }
    }
    return b;
}

static bool sb_take_u32(const unsigned char **p, const unsigned char *end, uint32_t *out)
{
    if (end - *p < 4)
        return false;
    *out = (uint32_t)(*p)[0] | (uint32_t)(*p)[1] << 8 | (uint32_t)(*p)[2] << 16 |
           (uint32_t)(*p)[3] << 24;
    *p += 4;
    return true;
}

/* Decodes a header block from the file (untrusted). A block that does not
 * parse to its end is counted as one invalid header. Only NOMEM fails. */
static msgbus_err_t sb_headers_decode(msgbus_msg_t *m, const unsigned char *b, size_t len)
{
    const unsigned char *p = b, *end = b + len;
    while (p < end) {
        uint32_t nl, vl;
        const unsigned char *name, *value;
        if (!sb_take_u32(&p, end, &nl) || (size_t)(end - p) < nl)
            goto bad;
        name = p;
        p += nl;
        if (!sb_take_u32(&p, end, &vl) || (size_t)(end - p) < vl)
            goto bad;
        value = p;
        p += vl;
        msgbus_err_t e = mb_msg_received_header(m, name, nl, value, vl);
        if (e)
            return e;
    }
    return MSGBUS_OK;
bad: /* an empty name is invalid: counted in msgbus-invalid-headers */
    return mb_msg_received_header(m, "", 0, NULL, 0);
}

/* ------------------------------------------------------ transactions */

/* BEGIN IMMEDIATE: the write lock, waiting up to busy_timeout_ms. */
static int sb_begin(struct mb_backend *be)
{
    int rc = sb_exec(be, "BEGIN IMMEDIATE");
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED)
        atomic_fetch_add_explicit(&be->n_busy, 1, memory_order_relaxed);
    return rc;
}

static int sb_commit(struct mb_backend *be)
{
    int rc = sb_exec(be, "COMMIT");
    if (rc != SQLITE_OK)
        sb_exec(be, "ROLLBACK");
    else
        atomic_fetch_add_explicit(&be->n_tx, 1, memory_order_relaxed);
    return rc;
}

static void sb_rollback(struct mb_backend *be)
{
    sb_exec(be, "ROLLBACK");
}

/* Stores one queued publish. Inside a transaction; *seq is the next seq. */
static int sb_store(struct mb_backend *be, const struct sb_pub *p, int64_t *seq)
{
    int64_t topic = sb_topic_id(be, p->topic, true);
    if (topic <= 0)
        return SQLITE_ERROR;
    const msgbus_msg_t *m = p->msg;
    size_t hlen;
    unsigned char *h = sb_headers_encode(m, &hlen);
    if (hlen && !h)
        return SQLITE_NOMEM;
    sqlite3_stmt *s = sb_st(be, SB_MSG_ADD);
    sqlite3_bind_int64(s, 1, *seq);
    sqlite3_bind_int64(s, 2, topic);
    sqlite3_bind_int64(s, 3, m->timestamp);
    sb_bind_text(s, 4, m->id);
    if (m->key)
        sqlite3_bind_blob(s, 5, m->key_len ? (const void *)m->key : "", (int)m->key_len,
                          SQLITE_STATIC);
    if (h)
        sqlite3_bind_blob(s, 6, h, (int)hlen, SQLITE_STATIC);
    sqlite3_bind_blob(s, 7, m->len ? (const void *)m->payload : "", (int)m->len,
                      SQLITE_STATIC);
    sb_bind_text(s, 8, m->ce_type);
    sb_bind_text(s, 9, m->ce_source);
    sb_bind_text(s, 10, m->ce_subject);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    free(h);
    if (rc != SQLITE_DONE)
        return rc;
    s = sb_st(be, SB_ENTRIES_ADD);
    sqlite3_bind_int64(s, 1, *seq);
    if (m->key)
        sqlite3_bind_blob(s, 2, m->key_len ? (const void *)m->key : "", (int)m->key_len,
                          SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, topic);
    rc = sqlite3_step(s);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return rc;
    (*seq)++;
    return SQLITE_OK;
}

static int sb_settle_one(struct mb_backend *be, const struct sb_settle *st)
{
    sqlite3_stmt *s = sb_st(be, st->how == MB_SETTLE_ACK ? SB_ACK : SB_NACK);
    sqlite3_bind_int64(s, 1, st->grp);
    sqlite3_bind_int64(s, 2, st->seq);
    sqlite3_bind_int64(s, 3, st->member);
    int rc = sqlite3_step(s);
    int changed = sqlite3_changes(be->db);
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return rc;
    if (!changed)
        mb_log(MSGBUS_LOG_DEBUG,
               "sqlite://%s: %s of message %lld went nowhere: its member no longer holds it "
               "(it comes again)",
               be->path, st->how == MB_SETTLE_ACK ? "ack" : "nack", (long long)st->seq);
    atomic_fetch_add_explicit(st->how == MB_SETTLE_ACK ? &be->n_acked : &be->n_nacked, 1,
                              memory_order_relaxed);
    return SQLITE_OK;
}

/* Makes `bs` a member of its group (bs->grp; for a broadcast subscriber
 * a new private group of `topic` first). Inside a transaction. */
static int sb_member_add(struct mb_backend *be, struct mb_backend_sub *bs, int64_t topic)
{
    int rc;
    if (bs->broadcast) {
        int64_t t[1] = {topic};
        if ((rc = sb_run(be, "INSERT INTO msgbus_groups(topic,name) VALUES(?1,NULL)", 1, t,
                         NULL)))
            return rc;
        bs->grp = sqlite3_last_insert_rowid(be->db);
    }
    sqlite3_stmt *s;
    if ((rc = sqlite3_prepare_v2(be->db,
                                 "INSERT INTO msgbus_members(grp,node,pid,beat) VALUES(?1,?2,?3,?4)",
                                 -1, &s, NULL)))
        return rc;
    sqlite3_bind_int64(s, 1, bs->grp);
    sb_bind_text(s, 2, be->node);
    sqlite3_bind_int64(s, 3, getpid());
    sqlite3_bind_int64(s, 4, mb_now_ms());
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return rc;
    bs->member = sqlite3_last_insert_rowid(be->db);
    if (bs->broadcast) {
        int64_t t[2] = {bs->grp, bs->member};
        if ((rc = sb_run(be, "UPDATE msgbus_groups SET member=?2 WHERE id=?1", 2, t, NULL)))
            return rc;
    }
    return SQLITE_OK;
}

/* Gives back what member `id` of group `grp` held and removes it (with its
 * group when that was a broadcast subscriber's). */
static int sb_member_remove(struct mb_backend *be, int64_t id, int64_t grp)
{
    int64_t a[2] = {grp, id};
    int rc;
    if ((rc = sb_run(be, "UPDATE msgbus_entries SET owner=NULL WHERE grp=?1 AND owner=?2", 2,
                     a, NULL)) ||
        (rc = sb_run(be, "DELETE FROM msgbus_members WHERE id=?2", 2, a, NULL)))
        return rc;
    int64_t bc = 0;
    if ((rc = sb_run(be, "SELECT COUNT(*) FROM msgbus_groups WHERE id=?1 AND member=?2", 2, a,
                     &bc)))
        return rc;
    if (bc && ((rc = sb_run(be, "DELETE FROM msgbus_entries WHERE grp=?1", 1, a, NULL)) ||
               (rc = sb_run(be, "DELETE FROM msgbus_groups WHERE id=?1", 1, a, NULL))))
        return rc;
    return SQLITE_OK;
}

/* Members of processes that are gone, or silent for session_timeout_ms:
 * removed, what they held pending again. Inside a transaction. */
static int sb_reclaim(struct mb_backend *be, int64_t now)
{
    sqlite3_stmt *s;
    int rc = sqlite3_prepare_v2(be->db, "SELECT id,grp,node,pid,beat FROM msgbus_members", -1,
                                &s, NULL);
    if (rc)
        return rc;
    int64_t dead[64][2];
    int ndead = 0;
    pid_t me = getpid();
    while ((rc = sqlite3_step(s)) == SQLITE_ROW && ndead < 64) {
        int64_t pid = sqlite3_column_int64(s, 3), beat = sqlite3_column_int64(s, 4);
        const char *node = (const char *)sqlite3_column_text(s, 2);
        bool gone = beat < now - be->session_ms;
        if (!gone && node && strcmp(node, be->node) == 0 && pid != me && pid > 0 &&
            pid <= INT_MAX && kill((pid_t)pid, 0) == -1 && errno == ESRCH)
            gone = true;
        if (gone) {
            dead[ndead][0] = sqlite3_column_int64(s, 0);
            dead[ndead++][1] = sqlite3_column_int64(s, 1);
        }
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        return rc;
    for (int i = 0; i < ndead; i++) {
        /* One of ours silent that long (a stalled process) is removed too;
         * it joins again at its next heartbeat. */
        for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next)
            if (bs->member == dead[i][0] && !bs->expired && (bs->expired = true))
                mb_sub_state(bs->sub, MSGBUS_STATE_DOWN,
                             "member expired: no heartbeat for %ld ms", be->session_ms);
        if ((rc = sb_member_remove(be, dead[i][0], dead[i][1])))
            return rc;
        mb_log(MSGBUS_LOG_INFO,
               "sqlite://%s: member %lld removed (its process is gone or silent); what it held "
               "is pending again",
               be->path, (long long)dead[i][0]);
        atomic_fetch_add_explicit(&be->n_reclaimed, 1, memory_order_relaxed);
    }
    if (ndead)
        atomic_store(&be->fetch_needed, true);
    return SQLITE_OK;
}

/* Deletes the messages no group holds any more beyond the last `retain` of
 * each topic: per topic, those below the lowest seq any of its groups
 * holds and not among its last `retain`. Inside a transaction. */
static int sb_gc(struct mb_backend *be)
{
    int64_t retain = 0;
    int rc = sb_run(be, "SELECT v FROM msgbus_meta WHERE k='retain'", 0, NULL, &retain);
    if (rc)
        return rc;
    be->retain = (long)retain;
    sqlite3_stmt *s;
    if ((rc = sqlite3_prepare_v2(be->db, "SELECT id FROM msgbus_topics", -1, &s, NULL)))
        return rc;
    int64_t *ids = NULL;
    size_t n = 0, cap = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (n == cap) {
            int64_t *v = realloc(ids, (cap = cap ? cap * 2 : 64) * sizeof *v);
            if (!v)
                break;
            ids = v;
        }
        ids[n++] = sqlite3_column_int64(s, 0);
    }
    sqlite3_finalize(s);
    rc = SQLITE_OK;
    for (size_t i = 0; i < n && rc == SQLITE_OK; i++) {
        int64_t a[3] = {ids[i], retain, 0}, floor = 0, cut = 0;
        if ((rc = sb_run(be,
                         "SELECT COALESCE(MIN((SELECT MIN(seq) FROM msgbus_entries WHERE "
                         "grp=g.id)), 4611686018427387904) FROM msgbus_groups g WHERE g.topic=?1",
                         1, a, &floor)) ||
            (rc = sb_run(be,
                         "SELECT seq FROM msgbus_msgs WHERE topic=?1 ORDER BY seq DESC LIMIT 1 "
                         "OFFSET ?2",
                         2, a, &cut)))
            break;
        if (floor - 1 < cut)
            cut = floor - 1;
        if (cut <= 0)
            continue;
        a[1] = cut;
        rc = sb_run(be, "DELETE FROM msgbus_msgs WHERE topic=?1 AND seq<=?2", 2, a, NULL);
    }
    free(ids);
    /* Entries owned by a member that is no longer there (removed while
     * its process still ran): pending again. */
    if (rc == SQLITE_OK)
        rc = sb_run(be,
                    "UPDATE msgbus_entries SET owner=NULL WHERE owner IS NOT NULL AND owner NOT "
                    "IN (SELECT id FROM msgbus_members)",
                    0, NULL, NULL);
    return rc;
}

/* Builds the received message for entry (grp, seq) of `bs`; NULL when its
 * row is gone (the entry is then dropped) or out of memory. */
static msgbus_msg_t *sb_make_msg(struct mb_backend *be, struct mb_backend_sub *bs, int64_t seq,
                                 int deliveries, bool *gone)
{
    *gone = false;
    sqlite3_stmt *s = sb_st(be, SB_MSG_GET);
    sqlite3_bind_int64(s, 1, seq);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        *gone = rc == SQLITE_DONE;
        sqlite3_reset(s);
        return NULL;
    }
    msgbus_msg_t *m = mb_msg_new_received(bs->sub);
    if (!m) {
        sqlite3_reset(s);
        return NULL;
    }
    m->timestamp = sqlite3_column_int64(s, 0);
    if (m->timestamp < 0)
        m->timestamp = 0;
    if (sqlite3_column_type(s, 1) != SQLITE_NULL) {
        const void *id = sqlite3_column_blob(s, 1);
        int n = sqlite3_column_bytes(s, 1);
        if (mb_msg_received_id(m, id, (size_t)n))
            goto fail;
    }
    if (sqlite3_column_type(s, 2) != SQLITE_NULL) {
        int n = sqlite3_column_bytes(s, 2);
        if (!(m->key = mb_key_dup(sqlite3_column_blob(s, 2), (size_t)n)))
            goto fail;
        m->key_len = (size_t)n;
    }
    if (sqlite3_column_type(s, 3) != SQLITE_NULL) {
        int n = sqlite3_column_bytes(s, 3);
        const unsigned char *b = sqlite3_column_blob(s, 3);
        if (n > 0 && sb_headers_decode(m, b, (size_t)n))
            goto fail;
    }
    static const char *const ce[3] = {"type", "source", "subject"};
    for (int i = 0; i < 3; i++)
        if (sqlite3_column_type(s, 5 + i) != SQLITE_NULL) {
            const void *v = sqlite3_column_blob(s, 5 + i);
            int n = sqlite3_column_bytes(s, 5 + i);
            if (mb_msg_received_ce(m, ce[i], strlen(ce[i]), v ? v : "", (size_t)n))
                goto fail;
        }
    int n = sqlite3_column_bytes(s, 4);
    if (n > 0) {
        unsigned char *p = mb_memdup(sqlite3_column_blob(s, 4), (size_t)n);
        if (!p)
            goto fail;
        mb_msg_take_payload(m, p, (size_t)n);
    }
    sqlite3_reset(s);
    m->attempt = deliveries > 0 ? deliveries : 1;
    m->redelivered = deliveries > 1;
    m->tag = (uint64_t)seq;
    m->offset = seq;
    return m;
fail:
    sqlite3_reset(s);
    m->state = MB_MSG_ACKED; /* never handed out */
    msgbus_msg_free(m);
    return NULL;
}

/* The keys of one claim's candidates (several members only): a small hash
 * table of key → state, each candidate row pointing at its key's slot. */
enum { SB_KEY_NONE = 0, SB_KEY_NEW, SB_KEY_TAKEN, SB_KEY_LEFT };
#define SB_KEY_SLOTS (2 * SB_CLAIM_MAX)
struct sb_keys {
    bool ok;          /* false: out of memory, no key fairness this pass */
    long distinct;    /* distinct keys among the candidates */
    int slot_of[SB_CLAIM_MAX]; /* per candidate: its key's slot, -1 keyless */
    struct {
        uint32_t hash;
        int len;
        unsigned char *key; /* NULL: empty slot */
        int state;
    } slot[SB_KEY_SLOTS];
};

static struct sb_keys *sb_keys_new(void)
{
    struct sb_keys *ks = calloc(1, sizeof *ks);
    if (!ks)
        return NULL;
    ks->ok = true;
    for (int i = 0; i < SB_CLAIM_MAX; i++)
        ks->slot_of[i] = -1;
    return ks;
}

static void sb_keys_free(struct sb_keys *ks)
{
    if (!ks)
        return;
    for (int i = 0; i < SB_KEY_SLOTS; i++)
        free(ks->slot[i].key);
    free(ks);
}

/* Candidate `i` has key (key, len); `mine`: this member holds that key. */
static void sb_keys_note(struct sb_keys *ks, long i, const void *key, int len, bool mine)
{
    if (!ks->ok || len < 0)
        return;
    uint32_t h = 2166136261u;
    for (int j = 0; j < len; j++)
        h = (h ^ ((const unsigned char *)key)[j]) * 16777619u;
    uint32_t at = h & (SB_KEY_SLOTS - 1);
    while (ks->slot[at].key && !(ks->slot[at].hash == h && ks->slot[at].len == len &&
                                 memcmp(ks->slot[at].key, key, (size_t)len) == 0))
        at = (at + 1) & (SB_KEY_SLOTS - 1);
    if (!ks->slot[at].key) {
        if (!(ks->slot[at].key = malloc(len ? (size_t)len : 1))) {
            ks->ok = false;
            return;
        }
        if (len)
            memcpy(ks->slot[at].key, key, (size_t)len);
        ks->slot[at].hash = h;
        ks->slot[at].len = len;
        ks->slot[at].state = mine ? SB_KEY_TAKEN : SB_KEY_NEW;
        ks->distinct++;
    }
    ks->slot_of[i] = (int)at;
}

static int sb_keys_state(const struct sb_keys *ks, long i)
{
    return ks->slot_of[i] < 0 ? SB_KEY_TAKEN : ks->slot[ks->slot_of[i]].state;
}

static int64_t sb_keys_home(const struct sb_keys *ks, long i, int64_t members)
{
    return (int64_t)(ks->slot[ks->slot_of[i]].hash % (uint64_t)members);
}

static int sb_keys_set(struct sb_keys *ks, long i, int state)
{
    return ks->slot[ks->slot_of[i]].state = state;
}

struct sb_batch {
    struct mb_backend_sub *bs;
    msgbus_msg_t *head, *tail;
    size_t n;
};

/* Claims pending entries for `bs` (room in its window, a fair share of
 * what is pending when the group has several members). Inside a
 * transaction. Returns the SQLite result. *more gets SB_AGAIN_NOW when the
 * window or batch limit left pending entries, SB_AGAIN_LATER when the fair
 * share did (the other members get a moment to take theirs). */
static int sb_claim(struct mb_backend *be, struct mb_backend_sub *bs, struct sb_batch *out,
                    int *more)
{
    long room = be->prefetch - atomic_load(&bs->ninflight);
    if (room <= 0 || atomic_load(&bs->paused) || bs->expired)
        return SQLITE_OK;
    if (room > be->batch_max)
        room = be->batch_max;
    int64_t members = 1;
    sqlite3_stmt *s = sb_st(be, SB_MEMBERS_COUNT);
    sqlite3_bind_int64(s, 1, bs->grp);
    if (sqlite3_step(s) == SQLITE_ROW)
        members = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    int64_t seqs[SB_CLAIM_MAX];
    int dels[SB_CLAIM_MAX];
    long want = room < SB_CLAIM_MAX ? room : SB_CLAIM_MAX;
    /* With several members, keys are shared out too: a key no member
     * holds goes to its "home" member (its hash modulo the number of
     * members, by rank of member id), so members start on different keys
     * whichever wakes first; a member with nothing of its own to take
     * takes up to a fair share of other new keys once it has had nothing
     * for SB_HOME_WAIT_MS (a home member that is paused, slow or dead
     * does not stall them; one that is awake has claimed them by then). A member holding a key
     * keeps it while it holds one of its messages. */
    struct sb_keys *ks = members > 1 ? sb_keys_new() : NULL;
    s = sb_st(be, SB_PENDING);
    sqlite3_bind_int64(s, 1, bs->grp);
    sqlite3_bind_int64(s, 2, bs->member);
    sqlite3_bind_int64(s, 3, want);
    int rc;
    long n = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW && n < want) {
        seqs[n] = sqlite3_column_int64(s, 0);
        dels[n] = sqlite3_column_int(s, 1);
        if (ks && sqlite3_column_type(s, 2) != SQLITE_NULL)
            sb_keys_note(ks, n, sqlite3_column_blob(s, 2), sqlite3_column_bytes(s, 2),
                         sqlite3_column_int(s, 3) != 0);
        n++;
    }
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        sb_keys_free(ks);
        return rc;
    }
    long take = n;
    if (members > 1 && n > 1) {
        long share = (long)((n + members - 1) / members);
        int64_t rank = 0, ra[2] = {bs->grp, bs->member};
        if (ks && ks->ok &&
            sb_run(be, "SELECT COUNT(*) FROM msgbus_members WHERE grp=?1 AND id<?2", 2, ra,
                   &rank) == SQLITE_OK) {
            /* Keep, in order, up to `share` entries: keyless ones, those of
             * keys it holds, and those of at most a fair share of new keys;
             * a key turned down stays turned down for this pass (its later
             * messages must not go before its earlier ones). */
            long key_share = (long)((ks->distinct + members - 1) / members), fresh = 0, k = 0;
            bool own = false; /* anything keyless, held or at home here */
            for (long i = 0; i < n && !own; i++) {
                int st = sb_keys_state(ks, i);
                own = st == SB_KEY_TAKEN ||
                      (st == SB_KEY_NEW && sb_keys_home(ks, i, members) == rank);
            }
            int64_t now = mb_mono_ms();
            if (own || !n)
                bs->idle_since_ms = 0;
            else if (!bs->idle_since_ms)
                bs->idle_since_ms = now;
            bool adopt = !own && bs->idle_since_ms && now - bs->idle_since_ms >= SB_HOME_WAIT_MS;
            for (long i = 0; i < n && k < share; i++) {
                int st = sb_keys_state(ks, i);
                if (st == SB_KEY_NEW) {
                    if (sb_keys_home(ks, i, members) == rank) {
                        st = sb_keys_set(ks, i, SB_KEY_TAKEN);
                    } else if (adopt && fresh < key_share) {
                        fresh++;
                        st = sb_keys_set(ks, i, SB_KEY_TAKEN);
                    } else {
                        st = sb_keys_set(ks, i, SB_KEY_LEFT);
                    }
                }
                if (st == SB_KEY_LEFT)
                    continue;
                seqs[k] = seqs[i];
                dels[k++] = dels[i];
            }
            if (k < n)
                *more |= SB_AGAIN_LATER;
            take = k;
            n = take; /* what is left was a choice, not the end of the backlog */
        } else if (share < take) {
            take = share;
            *more |= SB_AGAIN_LATER;
        }
    }
    sb_keys_free(ks);
    if (n == want && take == n)
        *more |= SB_AGAIN_NOW; /* maybe more pending beyond this batch */
    for (long i = 0; i < take; i++) {
        s = sb_st(be, SB_CLAIM);
        sqlite3_bind_int64(s, 1, bs->grp);
        sqlite3_bind_int64(s, 2, seqs[i]);
        sqlite3_bind_int64(s, 3, bs->member);
        rc = sqlite3_step(s);
        sqlite3_reset(s);
        if (rc != SQLITE_DONE)
            return rc;
        bool gone;
        msgbus_msg_t *m = sb_make_msg(be, bs, seqs[i], dels[i] + 1, &gone);
        if (!m) {
            int64_t a[2] = {bs->grp, seqs[i]};
            if (gone) { /* its message is not in the file: nothing to deliver */
                mb_log(MSGBUS_LOG_WARN,
                       "sqlite://%s: message %lld of group entry is missing; entry dropped",
                       be->path, (long long)seqs[i]);
                rc = sb_run(be, "DELETE FROM msgbus_entries WHERE grp=?1 AND seq=?2", 2, a,
                            NULL);
            } else { /* out of memory: stays pending */
                rc = sb_run(be, "UPDATE msgbus_entries SET owner=NULL, deliveries=deliveries-1 "
                                "WHERE grp=?1 AND seq=?2",
                            2, a, NULL);
                mb_log(MSGBUS_LOG_ERROR, "sqlite://%s: out of memory delivering", be->path);
                *more |= SB_AGAIN_LATER;
                if (rc)
                    return rc;
                break;
            }
            if (rc)
                return rc;
            continue;
        }
        if (out->tail)
            out->tail->next = m;
        else
            out->head = m;
        out->tail = m;
        out->n++;
    }
    return SQLITE_OK;
}

static void sb_batches_free(struct sb_batch *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (msgbus_msg_t *m = b[i].head, *next; m; m = next) {
            next = m->next;
            m->next = NULL;
            m->state = MB_MSG_ACKED; /* never handed out */
            msgbus_msg_free(m);
        }
}

static void sb_pubs_free(struct sb_pub *p)
{
    while (p) {
        struct sb_pub *next = p->next;
        msgbus_msg_free(p->msg);
        free(p->topic);
        free(p);
        p = next;
    }
}

static void sb_pubs_confirm(struct mb_backend *be, struct sb_pub *p, msgbus_err_t status,
                            const char *error)
{
    if (status == MSGBUS_OK) {
        struct mb_confirm *tokens[256];
        size_t n = 0;
        int64_t now = mb_mono_us();
        for (struct sb_pub *q = p; q; q = q->next) {
            mb_bus_confirm_latency(be->bus, q->token, now - q->queued_us);
            tokens[n++] = q->token;
            if (n == 256 || !q->next) {
                mb_bus_confirm_batch(be->bus, tokens, n);
                n = 0;
            }
        }
    } else {
        for (struct sb_pub *q = p; q; q = q->next)
            mb_bus_confirm(be->bus, q->token, status, error);
    }
    sb_pubs_free(p);
}

/* One pass: the queued publishes and settles, heartbeats and clean-up when
 * due, and claims for the subscriptions when `fetch`, in one transaction.
 * dbmu held. Returns SB_AGAIN_NOW when there is more to do at once,
 * SB_AGAIN_LATER when claims should run again in a moment, or 0. */
static int sb_pass(struct mb_backend *be, bool fetch)
{
    pthread_mutex_lock(&be->qmu);
    struct sb_pub *pubs = NULL;
    size_t npubs = 0;
    /* Up to batch_max publishes per transaction; the rest next pass. */
    if (be->pub_head) {
        pubs = be->pub_head;
        struct sb_pub *last = pubs;
        npubs = 1;
        while (last->next && npubs < (size_t)be->batch_max) {
            last = last->next;
            npubs++;
        }
        be->pub_head = last->next;
        if (!be->pub_head)
            be->pub_tail = NULL;
        last->next = NULL;
        be->npub -= npubs;
    }
    struct sb_settle *sets = be->set_head;
    be->set_head = be->set_tail = NULL;
    int again = be->pub_head ? SB_AGAIN_NOW : 0;
    pthread_mutex_unlock(&be->qmu);

    int64_t now = mb_now_ms();
    bool beat = now - be->last_beat_ms >= SB_HEARTBEAT_MS || now < be->last_beat_ms;
    if (!pubs && !sets && !fetch && !beat)
        return again;

    size_t nb = 0;
    for (struct mb_backend_sub *bs = be->subs; bs; bs = bs->next)
        nb++;
    struct sb_batch *batches = fetch && nb ? calloc(nb, sizeof *batches) : NULL;
    int more = 0;
    const char *step = "begin";
    /* Only a publish's commit must reach the disk before it is confirmed:
     * a claim or a settle lost with the machine (not the process) means a
     * delivery again, which at-least-once allows. So with
     * synchronous=full, transactions without publishes commit without
     * waiting for the disk (the next synced commit covers them). */
    bool want_full = be->sync_full && pubs;
    if (be->sync_full && want_full != be->tx_full &&
        sb_exec(be, want_full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL") ==
            SQLITE_OK)
        be->tx_full = want_full;
    int rc = sb_begin(be);
    if (rc == SQLITE_OK && pubs) {
        step = "publish";
        int64_t seq = 0;
        sqlite3_stmt *s = sb_st(be, SB_SEQ_GET);
        rc = sqlite3_step(s) == SQLITE_ROW ? SQLITE_OK : SQLITE_CORRUPT;
        seq = sqlite3_column_int64(s, 0);
        sqlite3_reset(s);
        for (struct sb_pub *p = pubs; p && rc == SQLITE_OK; p = p->next)
            rc = sb_store(be, p, &seq);
        if (rc == SQLITE_OK) {
            s = sb_st(be, SB_SEQ_SET);
            sqlite3_bind_int64(s, 1, seq);
            rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(be->db);
            sqlite3_reset(s);
        }
    }
    if (rc == SQLITE_OK && sets) {
        step = "settle";
        for (struct sb_settle *st = sets; st && rc == SQLITE_OK; st = st->next)
            rc = sb_settle_one(be, st);
    }
    if (rc == SQLITE_OK && beat) {
        step = "heartbeat";
        for (struct mb_backend_sub *bs = be->subs; bs && rc == SQLITE_OK; bs = bs->next) {
            sqlite3_stmt *s = sb_st(be, SB_BEAT);
            sqlite3_bind_int64(s, 1, bs->member);
            sqlite3_bind_int64(s, 2, now);
            rc = sqlite3_step(s) == SQLITE_DONE ? SQLITE_OK : sqlite3_errcode(be->db);
            bool gone = rc == SQLITE_OK && sqlite3_changes(be->db) == 0;
            sqlite3_reset(s);
            if (gone) {
                /* Removed by another bus (our heartbeat was older than
                 * session_timeout_ms, e.g. the process was stopped): join
                 * again. What it held went back to the group; settles of
                 * those go nowhere and they come again. */
                int64_t topic = sb_topic_id(be, mb_sub_topic(bs->sub), true);
                rc = topic > 0 ? sb_member_add(be, bs, topic) : SQLITE_ERROR;
                if (rc == SQLITE_OK) {
                    bs->expired = false;
                    mb_sub_state(bs->sub, MSGBUS_STATE_UP,
                                 "member joined the group again after its heartbeat expired%s",
                                 bs->broadcast ? " (broadcast: what was published meanwhile is "
                                                 "not delivered)"
                                               : "");
                    atomic_store(&be->fetch_needed, true);
                }
            }
        }
        if (rc == SQLITE_OK)
            rc = sb_reclaim(be, now);
        if (rc == SQLITE_OK)
            rc = sb_gc(be);
    }
    if (rc == SQLITE_OK && batches) {
        step = "claim";
        size_t i = 0;
        for (struct mb_backend_sub *bs = be->subs; bs && rc == SQLITE_OK; bs = bs->next, i++) {
            batches[i].bs = bs;
            rc = sb_claim(be, bs, &batches[i], &more);
        }
    }
    if (rc == SQLITE_OK) {
        step = "commit";
        rc = sb_commit(be);
    } else if (rc != SQLITE_BUSY || strcmp(step, "begin") != 0) {
        sb_rollback(be);
    }
    if (rc != SQLITE_OK) {
        char why[600];
        snprintf(why, sizeof why, "sqlite://%s: %s failed: %s", be->path, step,
                 sqlite3_errstr(rc));
        mb_log(MSGBUS_LOG_WARN, "%s", why);
        if (batches)
            sb_batches_free(batches, nb);
        free(batches);
        bool transient = rc == SQLITE_BUSY || rc == SQLITE_LOCKED;
        /* Settles go back to the queue (they are kept until they land);
         * publishes too when the file was only busy, else they fail. */
        pthread_mutex_lock(&be->qmu);
        if (sets) {
            struct sb_settle *last = sets;
            while (last->next)
                last = last->next;
            last->next = be->set_head;
            if (!be->set_head)
                be->set_tail = last;
            be->set_head = sets;
        }
        if (pubs && transient) {
            struct sb_pub *last = pubs;
            while (last->next)
                last = last->next;
            last->next = be->pub_head;
            if (!be->pub_head)
                be->pub_tail = last;
            be->pub_head = pubs;
            be->npub += npubs;
            pubs = NULL;
        }
        pthread_mutex_unlock(&be->qmu);
        if (pubs)
            sb_pubs_confirm(be, pubs, MSGBUS_ERR_BROKER, why);
        return transient ? SB_AGAIN_NOW : SB_AGAIN_LATER; /* no spin on a broken file */
    }
    if (beat)
        be->last_beat_ms = now;
    if (pubs) {
        atomic_fetch_add_explicit(&be->n_published, npubs, memory_order_relaxed);
        atomic_store(&be->fetch_needed, true); /* a sub of ours may want them */
        more |= SB_AGAIN_NOW;
    }
    if (sets) {
        struct sb_settle *st = sets;
        while (st) {
            struct sb_settle *next = st->next;
            free(st);
            st = next;
        }
        atomic_store(&be->fetch_needed, true); /* room in a window, or a nack */
        more |= SB_AGAIN_NOW;
    }
    for (size_t i = 0; batches && i < nb; i++) {
        if (!batches[i].n)
            continue;
        atomic_fetch_add(&batches[i].bs->ninflight, (long)batches[i].n);
        atomic_fetch_add_explicit(&be->n_claimed, batches[i].n, memory_order_relaxed);
        mb_sub_push(batches[i].bs->sub, batches[i].head, batches[i].n);
    }
    free(batches);
    if (pubs)
        sb_pubs_confirm(be, pubs, MSGBUS_OK, NULL);
    return again | more;
}

/* ------------------------------------------------------- I/O thread */

static int64_t sb_data_version(struct mb_backend *be)
{
    sqlite3_stmt *s;
    int64_t v = -1;
    if (sqlite3_prepare_v2(be->db, "PRAGMA data_version", -1, &s, NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW)
            v = sqlite3_column_int64(s, 0);
        sqlite3_finalize(s);
    }
    return v;
}

static void *sb_thread(void *arg)
{
    struct mb_backend *be = arg;
    mb_thread_name("msgbus-sqlite");
    int64_t refetch_at = 0; /* mb_mono_ms; 0: none due */
    int stopping = 0;
    for (;;) {
        pthread_mutex_lock(&be->qmu);
        bool stop = be->stop;
        pthread_mutex_unlock(&be->qmu);
        pthread_mutex_lock(&be->dbmu);
        /* Another connection committed (data_version moved): what it
         * wrote may be for us. Our own commits do not move it. */
        int64_t v = sb_data_version(be);
        bool changed = v != be->data_version;
        be->data_version = v;
        int64_t now = mb_mono_ms();
        bool fetch = atomic_exchange(&be->fetch_needed, false) || changed ||
                     (refetch_at && now >= refetch_at);
        if (fetch)
            refetch_at = 0;
        int r = sb_pass(be, fetch && be->subs);
        pthread_mutex_unlock(&be->dbmu);
        if (stop) {
            pthread_mutex_lock(&be->qmu);
            bool empty = !be->pub_head && !be->set_head;
            pthread_mutex_unlock(&be->qmu);
            if (empty || ++stopping > 50)
                break;
            if (!(r & SB_AGAIN_NOW))
                usleep(20000);
            continue;
        }
        if ((r & SB_AGAIN_LATER) && !refetch_at)
            refetch_at = now + SB_FAIR_WAIT_MS;
        int timeout = (int)(be->poll_ms < SB_HEARTBEAT_MS ? be->poll_ms : SB_HEARTBEAT_MS);
        if (refetch_at && refetch_at - now < timeout)
            timeout = refetch_at > now ? (int)(refetch_at - now) : 0;
        if ((r & SB_AGAIN_NOW) || atomic_load(&be->fetch_needed))
            timeout = 0;
        struct pollfd pf[2] = {{.fd = be->wake[0], .events = POLLIN},
                               {.fd = be->ino, .events = POLLIN}};
        int npf = be->ino >= 0 ? 2 : 1;
        if (poll(pf, (nfds_t)npf, timeout) > 0) {
            if (pf[0].revents & POLLIN) {
                /* Drained first, then re-armed: a wake-up between the two
                 * found `woken` set and wrote nothing, but queued its work
                 * before, so the pass that follows sees it. */
                char buf[64];
                while (read(be->wake[0], buf, sizeof buf) > 0) {
                }
                atomic_store(&be->woken, false);
            }
#ifdef __linux__
            /* Only a wake-up: data_version says whether anyone committed. */
            if (npf == 2 && (pf[1].revents & POLLIN)) {
                char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
                while (read(be->ino, buf, sizeof buf) > 0) {
                }
            }
#endif
        }
    }
    return NULL;
}

/* ------------------------------------------------------------- open */

static const char *const sb_options[] = {
    "prefetch",     "max_message_bytes", "retain",   "synchronous", "busy_timeout_ms",
    "session_timeout_ms", "poll_ms",     "batch_max", NULL};

static void sb_close(struct mb_backend *be);

/* Waiting for another connection's write lock: short, even sleeps (SQLite's
 * own handler sleeps longer and longer, up to 100 ms, so a process that
 * waited once keeps losing the lock to those that commit in a loop), up
 * to busy_timeout_ms. Called on the thread that holds dbmu. */
static int sb_busy(void *arg, int count)
{
    struct mb_backend *be = arg;
    int64_t now = mb_mono_ms();
    if (count == 0)
        be->busy_since_ms = now;
    else if (now - be->busy_since_ms >= be->busy_ms)
        return 0;
    usleep(count < 50 ? 200 : 1000);
    return 1;
}

static msgbus_err_t sb_open_db(struct mb_backend *be)
{
    int rc = sqlite3_open_v2(be->path, &be->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             NULL);
    if (rc != SQLITE_OK)
        return mb_error(MSGBUS_ERR_CONNECT, "cannot open sqlite://%s: %s", be->path,
                        be->db ? sqlite3_errmsg(be->db) : sqlite3_errstr(rc));
    sqlite3_busy_handler(be->db, sb_busy, be);
    sqlite3_extended_result_codes(be->db, 0);
    char sql[160];
    snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", be->sync_full ? "FULL" : "NORMAL");
    sqlite3_stmt *s;
    rc = sqlite3_prepare_v2(be->db, "PRAGMA journal_mode=WAL", -1, &s, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(s);
        const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(s, 0) : NULL;
        bool wal = mode && strcmp(mode, "wal") == 0;
        sqlite3_finalize(s);
        if (!wal)
            return mb_error(MSGBUS_ERR_CONNECT,
                            "cannot open sqlite://%s: the file cannot be put in WAL mode (%s); "
                            "several processes need it",
                            be->path, mode ? mode : sqlite3_errmsg(be->db));
    } else {
        return sb_dberr(be, MSGBUS_ERR_CONNECT, "cannot open the file");
    }
    if (sb_exec(be, sql) != SQLITE_OK)
        return sb_dberr(be, MSGBUS_ERR_CONNECT, "cannot set synchronous");
    be->tx_full = be->sync_full;
    if ((rc = sb_begin(be)) != SQLITE_OK)
        return sb_dberr(be, MSGBUS_ERR_CONNECT, "cannot lock the file to set it up");
    if (sb_exec(be, sb_ddl) != SQLITE_OK) {
        msgbus_err_t e = sb_dberr(be, MSGBUS_ERR_CONNECT, "cannot set up the file");
        sb_rollback(be);
        return e;
    }
    char schema[64] = "";
    if (sqlite3_prepare_v2(be->db, "SELECT v FROM msgbus_meta WHERE k='schema'", -1, &s,
                           NULL) == SQLITE_OK) {
        if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0))
            snprintf(schema, sizeof schema, "%s", (const char *)sqlite3_column_text(s, 0));
        sqlite3_finalize(s);
    }
    if (strcmp(schema, SB_SCHEMA) != 0) {
        sb_rollback(be);
        return mb_error(MSGBUS_ERR_CONFIG,
                        "sqlite://%s holds a msgbus_meta of another kind (schema '%.60s', this "
                        "msgbus reads '%s')",
                        be->path, schema, SB_SCHEMA);
    }
    if (be->retain >= 0) {
        int64_t a[1] = {be->retain};
        if (sb_run(be, "UPDATE msgbus_meta SET v=?1 WHERE k='retain'", 1, a, NULL)) {
            msgbus_err_t e = sb_dberr(be, MSGBUS_ERR_CONNECT, "cannot set retain");
            sb_rollback(be);
            return e;
        }
    } else {
        int64_t r = 0;
        sb_run(be, "SELECT v FROM msgbus_meta WHERE k='retain'", 0, NULL, &r);
        be->retain = (long)r;
    }
    if (sb_commit(be) != SQLITE_OK)
        return sb_dberr(be, MSGBUS_ERR_CONNECT, "cannot set up the file");
    for (int i = 0; i < SB_NSTMT; i++)
        if (sqlite3_prepare_v3(be->db, sb_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &be->st[i],
                               NULL) != SQLITE_OK)
            return sb_dberr(be, MSGBUS_ERR_CONNECT, "cannot prepare statements");
    be->data_version = sb_data_version(be);
    return MSGBUS_OK;
}

static void sb_node(char *out, size_t n)
{
    char host[64] = "";
    gethostname(host, sizeof host - 1);
    struct stat st;
    unsigned long long ns = stat("/proc/self/ns/pid", &st) == 0 ? (unsigned long long)st.st_ino
                                                                : 0;
    snprintf(out, n, "%s/%llu", host, ns);
}

static msgbus_err_t sb_open(msgbus_t *bus, struct mb_url *url, struct mb_backend **out)
{
    if (url->nhosts > 1 || (url->nhosts == 1 && (url->hosts[0].port ||
                                                 (url->hosts[0].host[0] &&
                                                  strcmp(url->hosts[0].host, "localhost")))))
        return mb_error(MSGBUS_ERR_CONFIG,
                        "malformed URL '%s': sqlite:// takes a local file, no host or port "
                        "(sqlite:///path/to/bus.db)",
                        url->redacted);
    if (url->user)
        return mb_error(MSGBUS_ERR_CONFIG, "malformed URL '%s': sqlite:// takes no credentials",
                        url->redacted);
    if (!url->path[0] || url->path[strlen(url->path) - 1] == '/')
        return mb_error(MSGBUS_ERR_CONFIG,
                        "malformed URL '%s': sqlite:// needs the file's absolute path "
                        "(sqlite:///path/to/bus.db)",
                        url->redacted);
    struct mb_backend *be = calloc(1, sizeof *be);
    if (!be)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory opening sqlite://");
    be->wake[0] = be->wake[1] = be->ino = -1;
    pthread_mutex_init(&be->dbmu, NULL);
    pthread_mutex_init(&be->qmu, NULL);
    be->bus = bus;
    msgbus_err_t e;
    const char *sync = mb_url_opt(url, "synchronous");
    if ((e = mb_url_opt_int(url, "prefetch", 1000, 1, 1000000, &be->prefetch)) ||
        (e = mb_url_opt_int(url, "max_message_bytes", 64L << 20, 1, 512L << 20,
                            &be->max_bytes)) ||
        (e = mb_url_opt_int(url, "retain", -1, 0, SB_RETAIN_MAX, &be->retain)) ||
        (e = mb_url_opt_int(url, "busy_timeout_ms", 10000, 0, 3600000, &be->busy_ms)) ||
        (e = mb_url_opt_int(url, "session_timeout_ms", 10000, 2 * SB_HEARTBEAT_MS, 86400000,
                            &be->session_ms)) ||
        (e = mb_url_opt_int(url, "poll_ms", 200, 1, 60000, &be->poll_ms)) ||
        (e = mb_url_opt_int(url, "batch_max", 2000, 1, 100000, &be->batch_max)))
        goto fail;
    if (sync && strcmp(sync, "full") && strcmp(sync, "normal")) {
        e = mb_error(MSGBUS_ERR_CONFIG,
                     "option 'synchronous=%.40s' in URL '%s': give full (a confirmed message "
                     "is on disk) or normal (it survives a crash of the process, not of the "
                     "machine)",
                     sync, url->redacted);
        goto fail;
    }
    be->sync_full = !sync || strcmp(sync, "full") == 0;
    if ((e = mb_url_check_unused(url, sb_options)))
        goto fail;
    size_t plen = strlen(url->path);
    if (!(be->path = malloc(plen + 2))) {
        e = mb_error(MSGBUS_ERR_NOMEM, "out of memory opening sqlite://");
        goto fail;
    }
    be->path[0] = '/';
    memcpy(be->path + 1, url->path, plen + 1);
    if (url->path[0] == '/') /* sqlite:////abs also means /abs */
        memmove(be->path, be->path + 1, plen + 1);
    const char *base = strrchr(be->path, '/') + 1;
    sb_node(be->node, sizeof be->node);
    if ((e = sb_open_db(be)))
        goto fail;
    if (pipe(be->wake) != 0) {
        e = mb_error(MSGBUS_ERR_NOMEM, "sqlite://%s: cannot make a pipe: %s", be->path,
                     strerror(errno));
        goto fail;
    }
    for (int i = 0; i < 2; i++) {
        fcntl(be->wake[i], F_SETFL, fcntl(be->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(be->wake[i], F_SETFD, FD_CLOEXEC);
    }
#ifdef __linux__
    be->ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (be->ino >= 0) {
        size_t dlen = (size_t)(base - be->path);
        char *dir = mb_strndup(be->path, dlen > 1 ? dlen - 1 : 1);
        if (!dir || inotify_add_watch(be->ino, dir, IN_MODIFY | IN_CREATE) < 0) {
            mb_log(MSGBUS_LOG_WARN,
                   "sqlite://%s: no inotify watch on its directory (%s): other processes' "
                   "messages are noticed within poll_ms=%ld",
                   be->path, strerror(errno), be->poll_ms);
            close(be->ino);
            be->ino = -1;
        }
        free(dir);
    }
#endif
    be->last_beat_ms = mb_now_ms();
    if (pthread_create(&be->thread, NULL, sb_thread, be) != 0) {
        e = mb_error(MSGBUS_ERR_NOMEM, "sqlite://%s: cannot start its thread", be->path);
        goto fail;
    }
    be->thread_started = true;
    mb_bus_state(bus, MSGBUS_STATE_UP, "file open");
    *out = be;
    return MSGBUS_OK;
fail:
    sb_close(be);
    return e;
}

static void sb_close(struct mb_backend *be)
{
    if (be->thread_started) {
        pthread_mutex_lock(&be->qmu);
        be->stop = true;
        pthread_mutex_unlock(&be->qmu);
        sb_wake(be);
        pthread_join(be->thread, NULL);
    }
    /* What could not be written: closed without a confirm of success. */
    struct sb_pub *left = be->pub_head;
    be->pub_head = be->pub_tail = NULL;
    if (left)
        sb_pubs_confirm(be, left, MSGBUS_ERR_CLOSED,
                        "the bus closed before the message was written to the file");
    for (struct sb_settle *s = be->set_head, *next; s; s = next) {
        next = s->next;
        free(s);
    }
    for (int i = 0; i < SB_NSTMT; i++)
        sqlite3_finalize(be->st[i]);
    if (be->db)
        sqlite3_close_v2(be->db);
    for (size_t i = 0; i < be->ntopics; i++)
        free(be->topics[i].name);
    free(be->topics);
    for (int i = 0; i < 2; i++)
        if (be->wake[i] >= 0)
            close(be->wake[i]);
    if (be->ino >= 0)
        close(be->ino);
    pthread_mutex_destroy(&be->dbmu);
    pthread_mutex_destroy(&be->qmu);
    free(be->path);
    free(be);
}

/* ---------------------------------------------------- publish, settle */

static msgbus_err_t sb_publish(struct mb_backend *be, const char *topic, const msgbus_msg_t *m,
                               struct mb_confirm *token)
{
    size_t size = mb_msg_wire_size(m);
    if ((long)size > be->max_bytes)
        return mb_error(MSGBUS_ERR_TOO_LARGE,
                        "message of %zu bytes to '%s' exceeds max_message_bytes=%ld", size, topic,
                        be->max_bytes);
    struct sb_pub *p = calloc(1, sizeof *p);
    if (!p || !(p->topic = mb_strdup(topic)) || !(p->msg = mb_msg_clone(m))) {
        if (p)
            free(p->topic);
        free(p);
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
    }
    /* As the brokers' bindings do, a receiver sees the CloudEvents type and
     * source the publish wrote: the message's own, else the defaults. */
    if (mb_bus_ce_mode(be->bus) != MB_CE_OFF && (!m->ce_type || !m->ce_source)) {
        struct mb_ce_attrs a;
        mb_ce_attrs(be->bus, topic, m, &a);
        if ((!m->ce_type && msgbus_msg_set_type(p->msg, a.type)) ||
            (!m->ce_source && msgbus_msg_set_source(p->msg, a.source))) {
            sb_pubs_free(p);
            return mb_error(MSGBUS_ERR_NOMEM, "out of memory publishing to '%s'", topic);
        }
    }
    p->token = token;
    p->queued_us = mb_mono_us();
    pthread_mutex_lock(&be->qmu);
    if (be->pub_tail)
        be->pub_tail->next = p;
    else
        be->pub_head = p;
    be->pub_tail = p;
    be->npub++;
    pthread_mutex_unlock(&be->qmu);
    sb_wake(be);
    return MSGBUS_OK;
}

static msgbus_err_t sb_settle(struct mb_backend_sub *bs, msgbus_msg_t *m, enum mb_settle how)
{
    struct mb_backend *be = bs->be;
    struct sb_settle *st = malloc(sizeof *st);
    if (!st)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory settling a message");
    st->grp = bs->grp;
    st->seq = (int64_t)m->tag;
    st->member = bs->member;
    st->how = how;
    st->next = NULL;
    atomic_fetch_sub(&bs->ninflight, 1);
    pthread_mutex_lock(&be->qmu);
    if (be->set_tail)
        be->set_tail->next = st;
    else
        be->set_head = st;
    be->set_tail = st;
    pthread_mutex_unlock(&be->qmu);
    sb_wake(be);
    return MSGBUS_OK;
}

/* Writes what is queued now (publishes and settles), so what follows sees
 * it. dbmu held. */
static void sb_drain(struct mb_backend *be)
{
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&be->qmu);
        bool empty = !be->pub_head && !be->set_head;
        pthread_mutex_unlock(&be->qmu);
        if (empty)
            return;
        sb_pass(be, false);
    }
}

/* ------------------------------------------ declare, subscribe, reset */

/* Runs `fn` in a write transaction (retrying while the file is busy), dbmu
 * held. fn returns a SQLite code and may set *e for an error of its own. */
static msgbus_err_t sb_tx(struct mb_backend *be, const char *what,
                          int (*fn)(struct mb_backend *, void *, msgbus_err_t *), void *arg)
{
    msgbus_err_t e = MSGBUS_OK;
    int rc = sb_begin(be);
    if (rc == SQLITE_OK) {
        rc = fn(be, arg, &e);
        if (rc == SQLITE_OK && !e)
            rc = sb_commit(be);
        else
            sb_rollback(be);
    }
    if (e)
        return e;
    if (rc != SQLITE_OK)
        return mb_error(rc == SQLITE_BUSY ? MSGBUS_ERR_TIMEOUT : MSGBUS_ERR_BROKER,
                        "sqlite://%s: %s: %s", be->path, what, sqlite3_errstr(rc));
    return MSGBUS_OK;
}

/* The group's id, made when missing (0 when !create and missing). */
static int sb_group_id(struct mb_backend *be, int64_t topic, const char *name, bool create,
                       int64_t *out, bool *made)
{
    sqlite3_stmt *s;
    *out = 0;
    *made = false;
    int rc = sqlite3_prepare_v2(be->db, "SELECT id FROM msgbus_groups WHERE topic=?1 AND name=?2",
                                -1, &s, NULL);
    if (rc)
        return rc;
    sqlite3_bind_int64(s, 1, topic);
    sb_bind_text(s, 2, name);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return rc;
    if (*out || !create)
        return SQLITE_OK;
    rc = sqlite3_prepare_v2(be->db, "INSERT INTO msgbus_groups(topic,name) VALUES(?1,?2)", -1,
                            &s, NULL);
    if (rc)
        return rc;
    sqlite3_bind_int64(s, 1, topic);
    sb_bind_text(s, 2, name);
    rc = sqlite3_step(s);
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return rc;
    *out = sqlite3_last_insert_rowid(be->db);
    *made = true;
    return SQLITE_OK;
}

/* Fills group `grp`'s pending entries with the retained messages of
 * `topic` from `from` (EARLIEST or TIME). */
static int sb_fill_from(struct mb_backend *be, int64_t grp, int64_t topic,
                        const struct mb_start *from)
{
    int64_t a[4] = {grp, topic, be->retain,
                    from->kind == MB_START_TIME ? from->time_ms : INT64_MIN};
    return sb_run(be,
                  "INSERT OR IGNORE INTO msgbus_entries(grp,seq,key) SELECT ?1,seq,key FROM "
                  "msgbus_msgs WHERE topic=?2 AND ts>=?4 AND seq > COALESCE((SELECT seq FROM "
                  "msgbus_msgs WHERE topic=?2 ORDER BY seq DESC LIMIT 1 OFFSET ?3),0)",
                  4, a, NULL);
}

struct sb_declare_arg {
    const char *topic, *group;
};

static int sb_declare_fn(struct mb_backend *be, void *arg, msgbus_err_t *e)
{
    (void)e;
    struct sb_declare_arg *d = arg;
    int64_t topic = sb_topic_id(be, d->topic, true);
    if (topic <= 0)
        return SQLITE_ERROR;
    if (!d->group)
        return SQLITE_OK;
    int64_t g;
    bool made;
    return sb_group_id(be, topic, d->group, true, &g, &made);
}

static msgbus_err_t sb_declare(struct mb_backend *be, const char *topic, const char *group)
{
    struct sb_declare_arg d = {topic, group};
    pthread_mutex_lock(&be->dbmu);
    sb_drain(be);
    msgbus_err_t e = sb_tx(be, "declare", sb_declare_fn, &d);
    pthread_mutex_unlock(&be->dbmu);
    return e;
}

struct sb_sub_arg {
    struct mb_backend_sub *bs;
    const char *topic, *group;
    const struct mb_start *start;
};

static int sb_subscribe_fn(struct mb_backend *be, void *arg, msgbus_err_t *e)
{
    (void)e;
    struct sb_sub_arg *a = arg;
    struct mb_backend_sub *bs = a->bs;
    int64_t topic = sb_topic_id(be, a->topic, true);
    if (topic <= 0)
        return SQLITE_ERROR;
    bool made = true;
    int rc;
    if (a->group && (rc = sb_group_id(be, topic, a->group, true, &bs->grp, &made)))
        return rc;
    if ((rc = sb_member_add(be, bs, topic)))
        return rc;
    if (made && (a->start->kind == MB_START_EARLIEST || a->start->kind == MB_START_TIME))
        return sb_fill_from(be, bs->grp, topic, a->start);
    return SQLITE_OK;
}

static msgbus_err_t sb_subscribe(struct mb_backend *be, msgbus_sub_t *sub,
                                 struct mb_backend_sub **out)
{
    struct mb_backend_sub *bs = calloc(1, sizeof *bs);
    if (!bs)
        return mb_error(MSGBUS_ERR_NOMEM, "out of memory subscribing");
    bs->be = be;
    bs->sub = sub;
    bs->broadcast = mb_sub_group(sub) == NULL;
    struct sb_sub_arg a = {bs, mb_sub_topic(sub), mb_sub_group(sub), mb_sub_start(sub)};
    pthread_mutex_lock(&be->dbmu);
    sb_drain(be); /* a broadcast subscriber sees only what is published after */
    msgbus_err_t e = sb_tx(be, "subscribe", sb_subscribe_fn, &a);
    if (!e) {
        bs->next = be->subs;
        be->subs = bs;
    }
    pthread_mutex_unlock(&be->dbmu);
    if (e) {
        free(bs);
        return e;
    }
    atomic_store(&be->fetch_needed, true);
    sb_wake(be);
    *out = bs;
    return MSGBUS_OK;
}

static int sb_unsubscribe_fn(struct mb_backend *be, void *arg, msgbus_err_t *e)
{
    (void)e;
    struct mb_backend_sub *bs = arg;
    return sb_member_remove(be, bs->member, bs->grp);
}

static void sb_unsubscribe(struct mb_backend_sub *bs)
{
    struct mb_backend *be = bs->be;
    pthread_mutex_lock(&be->dbmu);
    sb_drain(be); /* its settles first */
    for (struct mb_backend_sub **pp = &be->subs; *pp; pp = &(*pp)->next)
        if (*pp == bs) {
            *pp = bs->next;
            break;
        }
    msgbus_err_t e = sb_tx(be, "unsubscribe", sb_unsubscribe_fn, bs);
    pthread_mutex_unlock(&be->dbmu);
    if (e)
        mb_log(MSGBUS_LOG_WARN,
               "%s; the member is removed by the other buses after session_timeout_ms=%ld",
               msgbus_last_error(), be->session_ms);
    free(bs);
}

static msgbus_err_t sb_pause(struct mb_backend_sub *bs, bool paused)
{
    atomic_store(&bs->paused, paused);
    if (!paused) {
        atomic_store(&bs->be->fetch_needed, true);
        sb_wake(bs->be);
    }
    return MSGBUS_OK;
}

struct sb_reset_arg {
    const char *topic, *group;
    const struct mb_start *to;
};

static int sb_reset_fn(struct mb_backend *be, void *arg, msgbus_err_t *e)
{
    struct sb_reset_arg *r = arg;
    int rc = sb_reclaim(be, mb_now_ms());
    if (rc)
        return rc;
    int64_t topic = sb_topic_id(be, r->topic, false);
    if (topic < 0)
        return SQLITE_ERROR;
    if (!topic) {
        *e = mb_error(MSGBUS_ERR_NOT_FOUND,
                      "msgbus_group_reset: topic '%s' does not exist in sqlite://%s", r->topic,
                      be->path);
        return SQLITE_OK;
    }
    int64_t g;
    bool made;
    if ((rc = sb_group_id(be, topic, r->group, true, &g, &made)))
        return rc;
    int64_t a[1] = {g}, members = 0;
    if ((rc = sb_run(be, "SELECT COUNT(*) FROM msgbus_members WHERE grp=?1", 1, a, &members)))
        return rc;
    if (members) {
        *e = mb_error(MSGBUS_ERR_STATE,
                      "msgbus_group_reset: group '%s' on '%s' has %lld active member%s: close %s "
                      "first",
                      r->group, r->topic, (long long)members, members == 1 ? "" : "s",
                      members == 1 ? "it" : "them");
        return SQLITE_OK;
    }
    if ((rc = sb_run(be, "DELETE FROM msgbus_entries WHERE grp=?1", 1, a, NULL)))
        return rc;
    if (r->to->kind == MB_START_EARLIEST || r->to->kind == MB_START_TIME)
        return sb_fill_from(be, g, topic, r->to);
    return SQLITE_OK;
}

static msgbus_err_t sb_group_reset(struct mb_backend *be, const char *topic, const char *group,
                                   const struct mb_start *to, int timeout_ms)
{
    (void)timeout_ms; /* bounded by busy_timeout_ms */
    struct sb_reset_arg r = {topic, group, to};
    pthread_mutex_lock(&be->dbmu);
    sb_drain(be);
    msgbus_err_t e = sb_tx(be, "msgbus_group_reset", sb_reset_fn, &r);
    pthread_mutex_unlock(&be->dbmu);
    return e;
}

/* ------------------------------------------------ stats, inspection */

static int64_t sb_count(struct mb_backend *be, const char *sql, int64_t a1)
{
    int64_t a[1] = {a1}, n = 0;
    sb_run(be, sql, 1, a, &n);
    return n;
}

static void sb_sub_stats(struct mb_backend_sub *bs, json_t *sub, int timeout_ms)
{
    (void)timeout_ms;
    struct mb_backend *be = bs->be;
    pthread_mutex_lock(&be->dbmu);
    int64_t ready =
        sb_count(be, "SELECT COUNT(*) FROM msgbus_entries WHERE grp=?1 AND owner IS NULL", bs->grp);
    int64_t unacked = sb_count(
        be, "SELECT COUNT(*) FROM msgbus_entries WHERE grp=?1 AND owner IS NOT NULL", bs->grp);
    pthread_mutex_unlock(&be->dbmu);
    json_object_set_new(sub, "lag", json_integer((json_int_t)ready));
    json_t *d = json_object();
    json_object_set_new(d, "group", bs->broadcast ? json_null() : json_string(mb_sub_group(bs->sub)));
    json_object_set_new(d, "ready", json_integer((json_int_t)ready));
    json_object_set_new(d, "unacked", json_integer((json_int_t)unacked));
    json_object_set_new(sub, "lag_detail", d);
}

static void sb_stats(struct mb_backend *be, json_t *detail)
{
    json_object_set_new(detail, "file", json_string(be->path));
    json_object_set_new(detail, "prefetch", json_integer(be->prefetch));
    json_object_set_new(detail, "synchronous", json_string(be->sync_full ? "full" : "normal"));
    json_object_set_new(detail, "inotify", json_boolean(be->ino >= 0));
#define SB_J(name) json_object_set_new(detail, #name, json_integer((json_int_t)atomic_load(&be->n_##name)))
    SB_J(tx);
    SB_J(published);
    SB_J(claimed);
    SB_J(acked);
    SB_J(nacked);
    SB_J(reclaimed);
    SB_J(busy);
#undef SB_J
}

static json_t *sb_inspect_group(struct mb_backend *be, int64_t g, const char *name)
{
    int64_t members = sb_count(be, "SELECT COUNT(*) FROM msgbus_members WHERE grp=?1", g);
    int64_t ready =
        sb_count(be, "SELECT COUNT(*) FROM msgbus_entries WHERE grp=?1 AND owner IS NULL", g);
    int64_t unacked =
        sb_count(be, "SELECT COUNT(*) FROM msgbus_entries WHERE grp=?1 AND owner IS NOT NULL", g);
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(name));
    json_object_set_new(o, "members", json_integer((json_int_t)members));
    json_object_set_new(o, "ready", json_integer((json_int_t)ready));
    json_object_set_new(o, "unacked", json_integer((json_int_t)unacked));
    json_object_set_new(o, "lag", json_integer((json_int_t)ready));
    return o;
}

static msgbus_err_t sb_inspect(struct mb_backend *be, const char *topic, const char *group,
                               int timeout_ms, json_t *out)
{
    (void)timeout_ms;
    json_t *topics = json_object_get(out, "topics");
    if (!json_is_array(topics)) {
        topics = json_array();
        json_object_set_new(out, "topics", topics);
    }
    msgbus_err_t e = MSGBUS_OK;
    pthread_mutex_lock(&be->dbmu);
    sb_drain(be);
    sqlite3_stmt *ts = NULL;
    if (sqlite3_prepare_v2(be->db,
                           topic ? "SELECT id,name FROM msgbus_topics WHERE name=?1"
                                 : "SELECT id,name FROM msgbus_topics ORDER BY name",
                           -1, &ts, NULL) != SQLITE_OK) {
        e = sb_dberr(be, MSGBUS_ERR_BROKER, "msgbus_inspect_json");
        goto out;
    }
    if (topic)
        sb_bind_text(ts, 1, topic);
    bool any = false;
    while (sqlite3_step(ts) == SQLITE_ROW) {
        int64_t tid = sqlite3_column_int64(ts, 0);
        const char *tname = (const char *)sqlite3_column_text(ts, 1);
        json_t *groups = json_array();
        sqlite3_stmt *gs = NULL;
        if (sqlite3_prepare_v2(be->db,
                               "SELECT id,name FROM msgbus_groups WHERE topic=?1 AND name IS NOT "
                               "NULL AND (?2 IS NULL OR name=?2) ORDER BY name",
                               -1, &gs, NULL) == SQLITE_OK) {
            sqlite3_bind_int64(gs, 1, tid);
            sb_bind_text(gs, 2, group);
            while (sqlite3_step(gs) == SQLITE_ROW)
                json_array_append_new(groups,
                                      sb_inspect_group(be, sqlite3_column_int64(gs, 0),
                                                       (const char *)sqlite3_column_text(gs, 1)));
            sqlite3_finalize(gs);
        }
        if (group && json_array_size(groups) == 0) {
            json_decref(groups);
            continue;
        }
        any = true;
        json_t *o = json_object();
        json_object_set_new(o, "name", json_string(tname ? tname : ""));
        json_object_set_new(o, "partitions", json_integer(1));
        json_object_set_new(
            o, "retained",
            json_integer((json_int_t)sb_count(
                be, "SELECT COUNT(*) FROM msgbus_msgs WHERE topic=?1", tid)));
        json_object_set_new(o, "retention_messages", json_integer(be->retain));
        json_object_set_new(o, "groups", groups);
        json_object_set_new(
            o, "broadcast_subscribers",
            json_integer((json_int_t)sb_count(
                be, "SELECT COUNT(*) FROM msgbus_groups WHERE topic=?1 AND name IS NULL", tid)));
        json_array_append_new(topics, o);
    }
    sqlite3_finalize(ts);
    if (topic && !any)
        e = group ? mb_error(MSGBUS_ERR_NOT_FOUND,
                             "msgbus_inspect_json: group '%s' does not exist on topic '%s' of "
                             "sqlite://%s",
                             group, topic, be->path)
                  : mb_error(MSGBUS_ERR_NOT_FOUND,
                             "msgbus_inspect_json: topic '%s' does not exist in sqlite://%s",
                             topic, be->path);
out:
    pthread_mutex_unlock(&be->dbmu);
    return e;
}


static void sb_capabilities(struct mb_backend *be, struct mb_caps *out)
{
    /* Key ownership gives per-key order across members; a publish is
     * written once, in one transaction, and confirmed by its commit (never
     * retried, so never doubled); every topic and group is in the file. */
    out->bits = MSGBUS_CAP_KEY_ORDER | MSGBUS_CAP_NO_DUPLICATE_PUBLISH | MSGBUS_CAP_LIST |
                MSGBUS_CAP_LAG | MSGBUS_CAP_SHARED | MSGBUS_CAP_REDELIVERED;
    if (be->sync_full)
        out->bits |= MSGBUS_CAP_DURABLE;
    else
        out->why_not[MB_CAP_INDEX(MSGBUS_CAP_DURABLE)] =
            "sqlite:// with synchronous=normal: a confirmed message survives a crash of the "
            "process, not of the machine (power loss)";
    if (be->retain > 0)
        out->bits |= MSGBUS_CAP_REPLAY;
    else
        out->why_not[MB_CAP_INDEX(MSGBUS_CAP_REPLAY)] =
            "sqlite:// keeps no messages once every group has them: open it with retain=N";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_POSITIONS)] = "sqlite:// has no partitions or offsets";
    out->why_not[MB_CAP_INDEX(MSGBUS_CAP_DELAYED)] =
        "sqlite:// delivers at once: it has no delayed delivery of its own";
    out->max_message = (size_t)be->max_bytes;
}

static const char *const sb_schemes[] = {"sqlite", NULL};

MB_HIDDEN const struct mb_backend_ops mb_sqlitebus_ops = {
    .version = MB_BACKEND_VERSION,
    .scheme = "sqlite",
    .schemes = sb_schemes,
    .caps = 0,
    .options = sb_options,
    .env_prefix = "SQLITE",
    .env_separator = '_',
    .open = sb_open,
    .close = sb_close,
    .publish = sb_publish,
    .flush = NULL,
    .declare = sb_declare,
    .subscribe = sb_subscribe,
    .unsubscribe = sb_unsubscribe,
    .settle = sb_settle,
    .release = NULL,
    .stats = sb_stats,
    .sub_stats = sb_sub_stats,
    .capabilities = sb_capabilities,
    .pause = sb_pause,
    .group_reset = sb_group_reset,
    .inspect = sb_inspect,
};
