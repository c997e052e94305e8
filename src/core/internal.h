/*
 * internal.h — helpers shared by every part of the library: error
 * reporting into the thread-local detail buffer, logging, clocks and small
 * allocation wrappers. Nothing here is exported.
 */
#ifndef MB_INTERNAL_H
#define MB_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msgbus/msgbus.h"

#define MB_HIDDEN __attribute__((visibility("hidden")))
#define MB_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Records `fmt` as the calling thread's msgbus_last_error() and returns
 * `err`, so a failure path reads `return mb_error(MSGBUS_ERR_X, "...")`. */
MB_HIDDEN msgbus_err_t mb_error(msgbus_err_t err, const char *fmt, ...) MB_PRINTF(2, 3);
/* Prefixes the current detail with "<prefix>: " (adds context going up). */
MB_HIDDEN msgbus_err_t mb_error_prefix(msgbus_err_t err, const char *fmt, ...) MB_PRINTF(2, 3);

/* Log through the process-wide hook; cheap when the level is filtered out. */
MB_HIDDEN void mb_log(msgbus_log_level_t level, const char *fmt, ...) MB_PRINTF(2, 3);
MB_HIDDEN bool mb_log_enabled(msgbus_log_level_t level);

/* Clocks. */
MB_HIDDEN int64_t mb_now_ms(void);        /* wall clock, ms since epoch */
MB_HIDDEN int64_t mb_mono_ms(void);       /* monotonic, ms */
/* RFC 3339 time ("2026-12-07T08:00:00.5+01:00"; 't', 'z' and a space for
 * 'T' accepted) → ms since the epoch (fractions past ms dropped); false
 * when malformed (caps.c). */
MB_HIDDEN bool mb_rfc3339_parse(const char *s, int64_t *ms);
/* ms since the epoch (>= 0) → "2026-12-07T08:00:00.500Z" (UTC, always ms;
 * at most 31 bytes with the NUL for years up to 9999). */
MB_HIDDEN void mb_rfc3339_format(int64_t ms, char out[32]);
/* Fills a struct timespec (CLOCK_MONOTONIC) `ms` from now, for condvars
 * created with mb_cond_init. */
struct timespec;
MB_HIDDEN void mb_deadline(struct timespec *ts, int64_t ms);

/* Names the calling thread (at most 15 characters shown), so top -H, perf
 * and debuggers tell msgbus's threads from the application's. */
MB_HIDDEN void mb_thread_name(const char *name);

/* Returns 0 on success like pthread_cond_init, with CLOCK_MONOTONIC. */
MB_HIDDEN int mb_cond_init(pthread_cond_t *c);

/* Duplicates; NULL on out of memory (and for NULL input). */
MB_HIDDEN char *mb_strdup(const char *s);
MB_HIDDEN char *mb_strndup(const char *s, size_t n);
MB_HIDDEN void *mb_memdup(const void *p, size_t n);

/* Fills `out` (at least 37 bytes) with a fresh UUIDv7 string. Any thread. */
MB_HIDDEN void mb_uuid7(char out[37]);
/* mb_uuid7 for a clock reading (mb_now_ms) the caller already has. */
MB_HIDDEN void mb_uuid7_at(char out[37], int64_t ms);

/* Random 64-bit value from a per-thread generator (not cryptographic). */
MB_HIDDEN uint64_t mb_random64(void);

/* Name checks used by the public API (topic, group, header name, id). */
MB_HIDDEN bool mb_valid_name(const char *s, size_t max);
MB_HIDDEN bool mb_valid_header_name(const char *s);
MB_HIDDEN bool mb_valid_id(const char *s);
/* The same rules with the API's error (MSGBUS_ERR_INVALID, a message that
 * names the value and the rule): src/core/rules.c, also behind
 * msgbus_check; mb_check_name for topics and groups. */
MB_HIDDEN msgbus_err_t mb_check_header_name(const char *name);
MB_HIDDEN msgbus_err_t mb_check_id(const char *id);
MB_HIDDEN msgbus_err_t mb_check_consumer(const char *consumer);
/* A CloudEvents type/source/subject value (`what` names it). */
MB_HIDDEN msgbus_err_t mb_ce_check(const char *what, const char *v);

/* Outbox and inbox tables (rules.c): names, and the SQL that creates them. */
#define MB_TABLE_MAX 50 /* PG identifiers are 63 bytes; room for "_claimed_idx" */
enum mb_schema { MB_SCHEMA_OUTBOX, MB_SCHEMA_INBOX };
enum mb_store { MB_STORE_SQLITE, MB_STORE_PG };
MB_HIDDEN bool mb_valid_table(const char *t, bool allow_schema);
MB_HIDDEN msgbus_err_t mb_table_error(enum mb_schema which, bool allow_schema, const char *table);
/* The number of statements that create `which` on `store`, and statement
 * `i` for `table` (malloc'd; NULL when out of memory). */
MB_HIDDEN size_t mb_schema_count(enum mb_schema which, enum mb_store store);
MB_HIDDEN char *mb_schema_stmt(enum mb_schema which, enum mb_store store, size_t i,
                               const char *table);
/* The id rule on `len` raw bytes (no NUL needed): 1..MSGBUS_MAX_ID bytes of
 * printable ASCII without spaces (0x21..0x7e). */
MB_HIDDEN bool mb_valid_id_bytes(const void *s, size_t len);
/* Length of the longest prefix of p[0..n) whose bytes are all printable
 * ASCII from `lo` (0x20 or 0x21) to 0x7e; 8 bytes a step. */
MB_HIDDEN size_t mb_ascii_span(const unsigned char *p, size_t n, unsigned char lo);

/* Whether an option or variable named `name` holds a secret, by rule, not
 * by list: its name (any case) says password, secret, token, credential,
 * private key material or a PEM. Such values are shown as "***" wherever
 * text leaves msgbus (URL accessor, logs, errors, CLI). */
MB_HIDDEN bool mb_secret_name(const char *name);

#endif
