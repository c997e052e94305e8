/*
 * format.c — `msgbus sub --format`: kcat's -f output strings. A format is
 * checked once, before anything is consumed, so a typo in it is a usage
 * error and not a stream of half-printed messages.
 */
#define _POSIX_C_SOURCE 200809L
#include <inttypes.h>
#include <string.h>

#include "cli.h"

/* The conversions, as kcat spells them where kcat has them; msgbus's own
 * take letters kcat does not use (kcat: s S R k K T h t p o), so a kcat
 * format means the same here: %i id, %g group, %a attempt, and the
 * CloudEvents attributes %y type, %u source (a URI reference), %j subject. */
static const char conversions[] = "tkshpoTiSKgayuj%";

int cli_format_check(const char *cmd, const char *f)
{
    for (const char *p = f; *p; p++) {
        if (*p == '%') {
            if (!p[1])
                return cli_usage_error(cmd, "--format ends with a lone '%%' (write %%%% for '%%')");
            if (!strchr(conversions, p[1]))
                return cli_usage_error(cmd,
                                       "--format: unknown conversion '%%%c' (known: %%t %%k %%s "
                                       "%%h %%p %%o %%T %%i %%S %%K %%g %%a %%y %%u %%j %%%%)",
                                       p[1]);
            p++;
        } else if (*p == '\\') {
            if (!p[1] || !strchr("ntr\\0", p[1]))
                return cli_usage_error(cmd, "--format: unknown escape '\\%c' (known: \\n \\t \\r "
                                            "\\\\ \\0)",
                                       p[1] ? p[1] : ' ');
            p++;
        }
    }
    return CLI_OK;
}

int cli_format_write(FILE *out, const char *f, const msgbus_msg_t *m)
{
    for (const char *p = f; *p; p++) {
        if (*p == '\\') {
            p++;
            int c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p == 'r' ? '\r' : *p == '0' ? '\0' : '\\';
            if (putc(c, out) == EOF)
                return -1;
            continue;
        }
        if (*p != '%') {
            if (putc(*p, out) == EOF)
                return -1;
            continue;
        }
        p++;
        size_t len = 0;
        const void *bytes = NULL;
        const char *s = NULL;
        switch (*p) {
        case 't': s = msgbus_msg_topic(m); break;
        case 'g': s = msgbus_msg_group(m); break;
        case 'i': s = msgbus_msg_id(m); break;
        case 'y': s = msgbus_msg_type(m); break;
        case 'u': s = msgbus_msg_source(m); break;
        case 'j': s = msgbus_msg_subject(m); break;
        case 'k': bytes = msgbus_msg_key(m, &len); break;
        case 's': bytes = msgbus_msg_payload(m, &len); break;
        case 'K': /* -1 without a key, as kcat prints a NULL key's length */
            if (fprintf(out, "%lld", msgbus_msg_key(m, &len) ? (long long)len : -1LL) < 0)
                return -1;
            continue;
        case 'S':
            msgbus_msg_payload(m, &len);
            if (fprintf(out, "%zu", len) < 0)
                return -1;
            continue;
        case 'p':
            if (fprintf(out, "%" PRId32, msgbus_msg_partition(m)) < 0)
                return -1;
            continue;
        case 'o':
            if (fprintf(out, "%" PRId64, msgbus_msg_offset(m)) < 0)
                return -1;
            continue;
        case 'T':
            if (fprintf(out, "%" PRId64, msgbus_msg_timestamp(m)) < 0)
                return -1;
            continue;
        case 'a':
            if (fprintf(out, "%d", msgbus_msg_attempt(m)) < 0)
                return -1;
            continue;
        case 'h': {
            /* kcat's form: name=value pairs separated by commas. */
            size_t n = msgbus_msg_header_count(m);
            for (size_t i = 0; i < n; i++) {
                const char *name, *value;
                if (msgbus_msg_header_at(m, i, &name, &value) != MSGBUS_OK)
                    continue;
                if (fprintf(out, "%s%s=%s", i ? "," : "", name, value) < 0)
                    return -1;
            }
            continue;
        }
        default: /* '%' */
            if (putc('%', out) == EOF)
                return -1;
            continue;
        }
        if (s) {
            bytes = s;
            len = strlen(s);
        }
        /* A missing key, id, group, type, source or subject prints as
         * nothing, as kcat prints a NULL key. */
        if (bytes && len && fwrite(bytes, 1, len, out) != len)
            return -1;
    }
    return 0;
}
