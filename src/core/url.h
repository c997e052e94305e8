/*
 * url.h — a parsed bus URL:
 *   scheme://[user[:password]@]host[:port][,host[:port]…][/path][?k=v&…]
 * Every part is percent-decoded. Options are looked up by the core and the
 * backend; each lookup marks the option used, and an option nobody used is
 * a configuration error that names it.
 */
#ifndef MB_URL_H
#define MB_URL_H

#include "core/internal.h"

struct mb_url_host {
    char *host; /* "" when absent (mem://) */
    int port;   /* 0 when absent: the backend picks its default */
};

struct mb_url_opt {
    char *key;
    char *value;
    bool from_env; /* came from a MSGBUS_<SCHEME>_* variable */
    char *env_name;
    bool used;
};

struct mb_url {
    char *scheme;   /* lower case */
    char *user;     /* NULL when absent */
    char *password; /* NULL when absent; never printed */
    struct mb_url_host *hosts;
    size_t nhosts;
    bool has_path;  /* a '/' followed the authority */
    char *path;     /* decoded path after the first '/', "" when none */
    struct mb_url_opt *opts;
    size_t nopts;
    char *redacted; /* the URL as given, password replaced by *** */
};

/* Parses `text`. On failure returns MSGBUS_ERR_CONFIG with a detail that
 * names what was wrong (never the password). */
MB_HIDDEN msgbus_err_t mb_url_parse(const char *text, struct mb_url **out);
MB_HIDDEN void mb_url_free(struct mb_url *url);

/* Adds options from environment variables MSGBUS_<PREFIX>_<NAME>=value
 * (prefix upper case, e.g. "KAFKA"). <NAME> is lower-cased and each '_'
 * replaced by `sep` when sep is not '_' ("LINGER_MS" → "linger.ms"),
 * except for names in `keep` (NULL-terminated, may be NULL), which keep
 * their '_' ("QUEUE_MAX" → "queue_max": msgbus's own options).
 * An option already in the URL wins over the variable. */
MB_HIDDEN msgbus_err_t mb_url_add_env(struct mb_url *url, const char *prefix, char sep,
                                      const char *const *keep);

/* The option's value (and marks it used), or NULL when absent. */
MB_HIDDEN const char *mb_url_opt(const struct mb_url *url, const char *key);
/* Typed lookups: absent → *out = def, MSGBUS_OK. Present but malformed or
 * out of [min, max] → MSGBUS_ERR_CONFIG naming the option. */
MB_HIDDEN msgbus_err_t mb_url_opt_int(const struct mb_url *url, const char *key, long def,
                                      long min, long max, long *out);
MB_HIDDEN msgbus_err_t mb_url_opt_bool(const struct mb_url *url, const char *key, bool def,
                                       bool *out);
MB_HIDDEN msgbus_err_t mb_url_opt_double(const struct mb_url *url, const char *key, double def,
                                         double min, double max, double *out);
/* Parses a bare option list "k=v&k=v" (the query syntax; "" allowed) into
 * an mb_url with only options, for per-call options strings. */
MB_HIDDEN msgbus_err_t mb_url_parse_options(const char *text, struct mb_url **out);
/* How the option is called in messages: "option 'x'" or "MSGBUS_KAFKA_X". */
MB_HIDDEN void mb_url_opt_origin(const struct mb_url *url, const char *key, char *buf, size_t n);

/* Fails with MSGBUS_ERR_CONFIG naming the first option never looked up,
 * with a "did you mean" suggestion from `known` (NULL-terminated). */
MB_HIDDEN msgbus_err_t mb_url_check_unused(const struct mb_url *url, const char *const *known);

/* Edit distance, for suggestions. */
MB_HIDDEN size_t mb_edit_distance(const char *a, const char *b);

/* The closest name to `key` (edit distance under 3) among `nlists`
 * NULL-terminated lists, or NULL: the "did you mean" of option errors. */
MB_HIDDEN const char *mb_url_suggest(const char *key, const char *const *const *lists,
                                     size_t nlists);

#endif
