/*
 * rules.c — the rules for names and attribute values, and the SQL of the
 * outbox and inbox tables, in one place.
 *
 * The API checks its arguments through these functions and the stores run
 * these statements; the bindings ask for the same through msgbus_check and
 * msgbus_outbox_schema / msgbus_inbox_schema instead of keeping copies of
 * their own, so a rule or a column cannot drift between languages
 * (docs/outbox.md "The table", docs/inbox.md "The table").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/bus.h"
#include "core/internal.h"
#include "msgbus/inbox.h"
#include "msgbus/outbox.h"

/* ---- names and values --------------------------------------------------- */

msgbus_err_t mb_check_name(const char *what, const char *s)
{
    if (mb_valid_name(s, MB_TOPIC_MAX))
        return MSGBUS_OK;
    return mb_error(MSGBUS_ERR_INVALID,
                    "invalid %s name '%.64s': use 1..%d characters of A-Z a-z 0-9 . _ -, not "
                    "\".\", \"..\" or \"amq.*\"",
                    what, s ? s : "", MB_TOPIC_MAX);
}

msgbus_err_t mb_check_header_name(const char *name)
{
    if (!mb_valid_header_name(name))
        return mb_error(MSGBUS_ERR_INVALID,
                        "invalid header name '%.64s': use 1..%d characters of A-Z a-z 0-9 . _ : -",
                        name ? name : "", MSGBUS_MAX_HEADER_NAME);
    if (strncmp(name, "msgbus-", 7) == 0)
        return mb_error(MSGBUS_ERR_INVALID, "header name '%s' is reserved for msgbus", name);
    if (mb_ce_reserved_header(name))
        return mb_error(MSGBUS_ERR_INVALID,
                        "header name '%s' is reserved: a CloudEvents attribute msgbus writes "
                        "itself from the message's id, type, source, subject and timestamp "
                        "(msgbus_msg_set_id, _set_type, _set_source, _set_subject) or its "
                        "content-type header",
                        name);
    return MSGBUS_OK;
}

msgbus_err_t mb_check_id(const char *id)
{
    if (mb_valid_id(id))
        return MSGBUS_OK;
    return mb_error(MSGBUS_ERR_INVALID,
                    "invalid message id '%.64s': use 1..%d printable ASCII characters, no spaces",
                    id ? id : "", MSGBUS_MAX_ID);
}

msgbus_err_t mb_check_consumer(const char *consumer)
{
    if (mb_valid_name(consumer, 255))
        return MSGBUS_OK;
    return mb_error(MSGBUS_ERR_INVALID,
                    "invalid consumer name '%.64s': use 1..255 characters of A-Z a-z 0-9 . _ -",
                    consumer ? consumer : "");
}

MSGBUS_API msgbus_err_t msgbus_check(msgbus_check_t what, const char *text)
{
    if (!text)
        return mb_error(MSGBUS_ERR_INVALID, "msgbus_check: text is NULL");
    switch (what) {
    case MSGBUS_CHECK_TOPIC:
        return mb_check_name("topic", text);
    case MSGBUS_CHECK_GROUP:
        return mb_check_name("group", text);
    case MSGBUS_CHECK_HEADER_NAME:
        return mb_check_header_name(text);
    case MSGBUS_CHECK_ID:
        return mb_check_id(text);
    case MSGBUS_CHECK_CONSUMER:
        return mb_check_consumer(text);
    case MSGBUS_CHECK_CE_TYPE:
        return mb_ce_check("type", text);
    case MSGBUS_CHECK_CE_SOURCE:
        return mb_ce_check("source", text);
    case MSGBUS_CHECK_CE_SUBJECT:
        return mb_ce_check("subject", text);
    }
    return mb_error(MSGBUS_ERR_INVALID, "msgbus_check: unknown check %d", (int)what);
}

/* ---- table names -------------------------------------------------------- */

/* Table names are spliced into SQL text (identifiers cannot be bound), so
 * only plain identifiers are accepted: no quoting games, no injection; and
 * short enough for PostgreSQL's 63-byte limit once "_pending" or
 * "_claimed_idx" is appended to name the indexes. */
static bool mb_valid_ident(const char *s, size_t n)
{
    if (n == 0 || n > MB_TABLE_MAX || (s[0] >= '0' && s[0] <= '9'))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_'))
            return false;
    }
    return true;
}

bool mb_valid_table(const char *t, bool allow_schema)
{
    if (!t)
        return false;
    const char *dot = strchr(t, '.');
    if (!dot)
        return mb_valid_ident(t, strlen(t));
    if (!allow_schema || strchr(dot + 1, '.'))
        return false;
    return mb_valid_ident(t, (size_t)(dot - t)) && mb_valid_ident(dot + 1, strlen(dot + 1));
}

/* ---- the tables' SQL ---------------------------------------------------- */

/* Templates: "@T" is the table name, "@B" its name without a schema (the
 * index names). The outbox quotes its name ("@T" inside quotes), the inbox
 * does not (PostgreSQL folds it to lower case); both as they always did, so
 * existing tables are found again. */
static const char *const mb_outbox_sqlite_sql[] = {
    "CREATE TABLE IF NOT EXISTS \"@T\" ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT,"
    " msg_id TEXT NOT NULL DEFAULT (lower(hex(randomblob(16)))),"
    " topic TEXT NOT NULL,"
    " msg_key BLOB,"
    " headers TEXT NOT NULL DEFAULT '{}',"
    " payload BLOB NOT NULL,"
    " msg_ts INTEGER,"
    " created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),"
    " state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','sent','failed')),"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " sent_at INTEGER,"
    " error TEXT)",
    "CREATE INDEX IF NOT EXISTS \"@B_pending\" ON \"@T\" (id) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS \"@B_failed_key\" ON \"@T\" (msg_key, id) WHERE state = 'failed'",
    "CREATE INDEX IF NOT EXISTS \"@B_sent\" ON \"@T\" (sent_at) WHERE state = 'sent'",
    NULL};

static const char *const mb_outbox_pg_sql[] = {
    "CREATE TABLE IF NOT EXISTS \"@T\" ("
    " id bigserial PRIMARY KEY,"
    " msg_id text NOT NULL DEFAULT gen_random_uuid()::text,"
    " topic text NOT NULL,"
    " msg_key bytea,"
    " headers jsonb NOT NULL DEFAULT '{}',"
    " payload bytea NOT NULL,"
    " msg_ts bigint,"
    " created_at bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint,"
    " state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending','sent','failed')),"
    " attempts integer NOT NULL DEFAULT 0,"
    " sent_at bigint,"
    " error text)",
    "CREATE INDEX IF NOT EXISTS \"@B_pending\" ON \"@T\" (id) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS \"@B_failed_key\" ON \"@T\" (msg_key, id) WHERE state = 'failed'",
    "CREATE INDEX IF NOT EXISTS \"@B_sent\" ON \"@T\" (sent_at) WHERE state = 'sent'",
    NULL};

static const char *const mb_inbox_sqlite_sql[] = {
    "CREATE TABLE IF NOT EXISTS @T ("
    " consumer TEXT NOT NULL,"
    " message_id TEXT NOT NULL,"
    " claimed_at INTEGER NOT NULL"
    "  DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)),"
    " PRIMARY KEY (consumer, message_id)"
    ") WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS @B_claimed_idx ON @T (consumer, claimed_at)",
    NULL};

static const char *const mb_inbox_pg_sql[] = {
    "CREATE TABLE IF NOT EXISTS @T ("
    " consumer TEXT NOT NULL,"
    " message_id TEXT NOT NULL,"
    " claimed_at BIGINT NOT NULL"
    "  DEFAULT (extract(epoch FROM clock_timestamp()) * 1000)::bigint,"
    " PRIMARY KEY (consumer, message_id))",
    "CREATE INDEX IF NOT EXISTS @B_claimed_idx ON @T (consumer, claimed_at)",
    NULL};

static const char *const *mb_schema_of(enum mb_schema which, enum mb_store store)
{
    if (which == MB_SCHEMA_OUTBOX)
        return store == MB_STORE_PG ? mb_outbox_pg_sql : mb_outbox_sqlite_sql;
    return store == MB_STORE_PG ? mb_inbox_pg_sql : mb_inbox_sqlite_sql;
}

size_t mb_schema_count(enum mb_schema which, enum mb_store store)
{
    const char *const *s = mb_schema_of(which, store);
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

char *mb_schema_stmt(enum mb_schema which, enum mb_store store, size_t i, const char *table)
{
    const char *tpl = mb_schema_of(which, store)[i];
    const char *dot = strrchr(table, '.');
    const char *base = dot ? dot + 1 : table;
    size_t tn = strlen(table), bn = strlen(base), n = 0;
    for (const char *p = tpl; *p; p++)
        n += p[0] == '@' && p[1] == 'T' ? tn : p[0] == '@' && p[1] == 'B' ? bn : 1;
    char *out = malloc(n + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p = tpl; *p; p++) {
        if (p[0] == '@' && (p[1] == 'T' || p[1] == 'B')) {
            const char *v = p[1] == 'T' ? table : base;
            size_t vn = p[1] == 'T' ? tn : bn;
            memcpy(o, v, vn);
            o += vn;
            p++;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

msgbus_err_t mb_table_error(enum mb_schema which, bool allow_schema, const char *table)
{
    return mb_error(MSGBUS_ERR_INVALID,
                    "invalid %s table name '%.80s': use 1..%d bytes of [A-Za-z0-9_], not "
                    "starting with a digit%s",
                    which == MB_SCHEMA_OUTBOX ? "outbox" : "inbox", table, MB_TABLE_MAX,
                    allow_schema ? ", optionally schema." : "");
}

static msgbus_err_t mb_schema_text(enum mb_schema which, const char *fn, const char *store,
                                   const char *table, char **sql)
{
    if (!sql)
        return mb_error(MSGBUS_ERR_INVALID, "%s: sql is NULL", fn);
    *sql = NULL;
    if (!store)
        return mb_error(MSGBUS_ERR_INVALID, "%s: store is NULL", fn);
    enum mb_store st;
    if (strcmp(store, "sqlite") == 0)
        st = MB_STORE_SQLITE;
    else if (strcmp(store, "pg") == 0)
        st = MB_STORE_PG;
    else
        return mb_error(MSGBUS_ERR_INVALID, "%s: unknown store '%.40s' (use \"sqlite\" or \"pg\")",
                        fn, store);
    if (!table)
        table = which == MB_SCHEMA_OUTBOX ? MSGBUS_OUTBOX_TABLE : MSGBUS_INBOX_TABLE;
    /* Only an inbox on PostgreSQL may name a schema (msgbus_inbox_open_pg). */
    bool allow_schema = which == MB_SCHEMA_INBOX && st == MB_STORE_PG;
    if (!mb_valid_table(table, allow_schema))
        return mb_error_prefix(mb_table_error(which, allow_schema, table), "%s", fn);
    size_t n = mb_schema_count(which, st), len = 0;
    char *parts[8];
    for (size_t i = 0; i < n; i++) {
        parts[i] = mb_schema_stmt(which, st, i, table);
        if (!parts[i]) {
            while (i > 0)
                free(parts[--i]);
            return mb_error(MSGBUS_ERR_NOMEM, "%s: out of memory", fn);
        }
        len += strlen(parts[i]) + 2;
    }
    char *out = malloc(len + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (out) {
            size_t k = strlen(parts[i]);
            memcpy(o, parts[i], k);
            o += k;
            *o++ = ';';
            *o++ = '\n';
        }
        free(parts[i]);
    }
    if (!out)
        return mb_error(MSGBUS_ERR_NOMEM, "%s: out of memory", fn);
    *o = '\0';
    *sql = out;
    return MSGBUS_OK;
}

MSGBUS_API msgbus_err_t msgbus_outbox_schema(const char *store, const char *table, char **sql)
{
    return mb_schema_text(MB_SCHEMA_OUTBOX, "msgbus_outbox_schema", store, table, sql);
}

MSGBUS_API msgbus_err_t msgbus_inbox_schema(const char *store, const char *table, char **sql)
{
    return mb_schema_text(MB_SCHEMA_INBOX, "msgbus_inbox_schema", store, table, sql);
}
