/*
 * registry.c — the table of compiled-in backends, keyed by URL scheme.
 * Adding a backend is one file plus one line here. Each entry is checked
 * once, at first use, for the members every backend must fill.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "backends/backend.h"

extern const struct mb_backend_ops mb_mem_ops;
#ifdef MSGBUS_HAVE_KAFKA
extern const struct mb_backend_ops mb_kafka_ops;
#endif
#ifdef MSGBUS_HAVE_AMQP
extern const struct mb_backend_ops mb_amqp_ops;
#endif
#ifdef MSGBUS_HAVE_SQLITE
extern const struct mb_backend_ops mb_sqlitebus_ops;
#endif

static const struct mb_backend_ops *const mb_backends[] = {
#ifdef MSGBUS_HAVE_KAFKA
    &mb_kafka_ops,
#endif
#ifdef MSGBUS_HAVE_AMQP
    &mb_amqp_ops,
#endif
#ifdef MSGBUS_HAVE_SQLITE
    &mb_sqlitebus_ops,
#endif
    &mb_mem_ops,
};

#define MB_NBACKENDS (sizeof mb_backends / sizeof mb_backends[0])

static bool mb_backend_valid(const struct mb_backend_ops *o)
{
    return o->version >= 1 && o->scheme && o->schemes && o->open && o->close && o->publish &&
           o->declare && o->subscribe && o->unsubscribe && o->settle;
}

static char mb_schemes_text[128];
static bool mb_registry_ok[MB_NBACKENDS];
static pthread_once_t mb_registry_once = PTHREAD_ONCE_INIT;

static void mb_registry_init(void)
{
    size_t used = 0;
    for (size_t i = 0; i < MB_NBACKENDS; i++) {
        mb_registry_ok[i] = mb_backend_valid(mb_backends[i]);
        if (!mb_registry_ok[i]) {
            mb_log(MSGBUS_LOG_ERROR, "backend '%s' lacks required operations; disabled",
                   mb_backends[i]->scheme ? mb_backends[i]->scheme : "?");
            continue;
        }
        for (const char *const *s = mb_backends[i]->schemes; *s; s++) {
            int n = snprintf(mb_schemes_text + used, sizeof mb_schemes_text - used, "%s%s://",
                             used ? ", " : "", *s);
            if (n > 0 && (size_t)n < sizeof mb_schemes_text - used)
                used += (size_t)n;
        }
    }
}

const struct mb_backend_ops *mb_backend_find(const char *scheme)
{
    pthread_once(&mb_registry_once, mb_registry_init);
    for (size_t i = 0; i < MB_NBACKENDS; i++) {
        if (!mb_registry_ok[i])
            continue;
        for (const char *const *s = mb_backends[i]->schemes; *s; s++)
            if (strcmp(*s, scheme) == 0)
                return mb_backends[i];
    }
    return NULL;
}

const char *mb_backend_schemes(void)
{
    pthread_once(&mb_registry_once, mb_registry_init);
    return mb_schemes_text;
}
