/*
 * log.c — the process-wide log hook (one of the two pieces of global
 * mutable state, with the backend registry). Default: warnings and errors
 * to stderr.
 */
#include <stdatomic.h>
#include <stdio.h>

#include "core/internal.h"

static pthread_mutex_t mb_log_lock = PTHREAD_MUTEX_INITIALIZER;
static msgbus_log_cb mb_log_hook;
static void *mb_log_opaque;
static _Atomic int mb_log_max = MSGBUS_LOG_WARN;

static const char *const mb_level_names[] = {"error", "warn", "info", "debug"};

MSGBUS_API void msgbus_set_log(msgbus_log_cb cb, void *opaque, msgbus_log_level_t max_level)
{
    if ((int)max_level < MSGBUS_LOG_ERROR)
        max_level = MSGBUS_LOG_ERROR;
    if (max_level > MSGBUS_LOG_DEBUG)
        max_level = MSGBUS_LOG_DEBUG;
    pthread_mutex_lock(&mb_log_lock);
    mb_log_hook = cb;
    mb_log_opaque = opaque;
    atomic_store(&mb_log_max, (int)max_level);
    pthread_mutex_unlock(&mb_log_lock);
}

bool mb_log_enabled(msgbus_log_level_t level)
{
    return (int)level <= atomic_load_explicit(&mb_log_max, memory_order_relaxed);
}

void mb_log(msgbus_log_level_t level, const char *fmt, ...)
{
    if (!mb_log_enabled(level))
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* The lock keeps the hook and its opaque consistent, and lines whole. */
    pthread_mutex_lock(&mb_log_lock);
    if (mb_log_hook)
        mb_log_hook(mb_log_opaque, level, line);
    else
        fprintf(stderr, "msgbus %s: %s\n", mb_level_names[level], line);
    pthread_mutex_unlock(&mb_log_lock);
}
