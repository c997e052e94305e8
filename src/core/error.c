/*
 * error.c — error codes, their fixed texts, and the thread-local detail
 * buffer behind msgbus_last_error().
 */
#include <stdio.h>
#include <string.h>

#include "core/internal.h"

static _Thread_local char mb_detail[1024];

static const struct {
    const char *name;
    const char *text;
} mb_errors[] = {
    [MSGBUS_OK] = {"MSGBUS_OK", "success"},
    [MSGBUS_ERR_INVALID] = {"MSGBUS_ERR_INVALID", "invalid argument"},
    [MSGBUS_ERR_CONFIG] = {"MSGBUS_ERR_CONFIG", "configuration error"},
    [MSGBUS_ERR_NOMEM] = {"MSGBUS_ERR_NOMEM", "out of memory"},
    [MSGBUS_ERR_TIMEOUT] = {"MSGBUS_ERR_TIMEOUT", "timed out"},
    [MSGBUS_ERR_QUEUE_FULL] = {"MSGBUS_ERR_QUEUE_FULL", "local queue full"},
    [MSGBUS_ERR_CONNECT] = {"MSGBUS_ERR_CONNECT", "cannot reach the broker"},
    [MSGBUS_ERR_AUTH] = {"MSGBUS_ERR_AUTH", "authentication refused"},
    [MSGBUS_ERR_TOO_LARGE] = {"MSGBUS_ERR_TOO_LARGE", "message too large"},
    [MSGBUS_ERR_BROKER] = {"MSGBUS_ERR_BROKER", "the broker refused the request"},
    [MSGBUS_ERR_CLOSED] = {"MSGBUS_ERR_CLOSED", "closed"},
    [MSGBUS_ERR_DUPLICATE] = {"MSGBUS_ERR_DUPLICATE", "message already processed"},
    [MSGBUS_ERR_STATE] = {"MSGBUS_ERR_STATE", "not valid in the current state"},
    [MSGBUS_ERR_UNSUPPORTED] = {"MSGBUS_ERR_UNSUPPORTED", "not supported by this backend"},
    [MSGBUS_ERR_DELIVERY] = {"MSGBUS_ERR_DELIVERY", "some messages were not delivered"},
    [MSGBUS_ERR_STORE] = {"MSGBUS_ERR_STORE", "database error"},
    [MSGBUS_ERR_NOT_FOUND] = {"MSGBUS_ERR_NOT_FOUND", "not found"},
    [MSGBUS_ERR_INTERNAL] = {"MSGBUS_ERR_INTERNAL", "internal error"},
};

#define MB_NERRORS (sizeof mb_errors / sizeof mb_errors[0])

MSGBUS_API const char *msgbus_strerror(msgbus_err_t err)
{
    if ((unsigned)err < MB_NERRORS && mb_errors[err].text)
        return mb_errors[err].text;
    return "unknown error code";
}

MSGBUS_API const char *msgbus_err_name(msgbus_err_t err)
{
    if ((unsigned)err < MB_NERRORS && mb_errors[err].name)
        return mb_errors[err].name;
    return "MSGBUS_ERR_UNKNOWN";
}

MSGBUS_API const char *msgbus_last_error(void)
{
    return mb_detail;
}

msgbus_err_t mb_error(msgbus_err_t err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(mb_detail, sizeof mb_detail, fmt, ap);
    va_end(ap);
    return err;
}

msgbus_err_t mb_error_prefix(msgbus_err_t err, const char *fmt, ...)
{
    char prefix[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    /* "<prefix>: <old detail>", cut to the buffer, never overrun. */
    size_t plen = strlen(prefix), olen = strlen(mb_detail);
    size_t sep = olen ? 2 : 0;
    if (plen + sep >= sizeof mb_detail)
        plen = sizeof mb_detail - 1 - sep;
    size_t keep = sizeof mb_detail - 1 - plen - sep;
    if (olen > keep)
        olen = keep;
    memmove(mb_detail + plen + sep, mb_detail, olen);
    memcpy(mb_detail, prefix, plen);
    if (sep)
        memcpy(mb_detail + plen, ": ", 2);
    mb_detail[plen + sep + olen] = '\0';
    return err;
}
