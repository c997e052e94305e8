/*
 * amqp_conn.c — connecting (TCP or TLS, login, the publish and control
 * channels, failover between the URL's hosts), turning rabbitmq-c replies
 * into msgbus errors that carry the broker's own text, and declaring topic
 * exchanges once per connection. Runs on the I/O thread, and in open for
 * the first connection.
 */
#include "backends/amqp.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- errors ----------------------------------------------------------------- */

void mb_amqp_send_close_ok(struct mb_backend *be, amqp_channel_t ch)
{
    if (ch == 0) {
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(be->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    } else {
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(be->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    }
}

static msgbus_err_t mb_amqp_code_err(int code)
{
    switch (code) {
    case 403: /* ACCESS_REFUSED */
    case 530: /* NOT_ALLOWED (e.g. no access to the vhost) */
        return MSGBUS_ERR_AUTH;
    case 404:
        return MSGBUS_ERR_NOT_FOUND;
    case 320: /* CONNECTION_FORCED: broker shutting down */
        return MSGBUS_ERR_CONNECT;
    default:
        return MSGBUS_ERR_BROKER;
    }
}

msgbus_err_t mb_amqp_reply_error(struct mb_backend *be, amqp_rpc_reply_t r, amqp_channel_t ch,
                                 const char *what, char *detail, size_t n, bool *conn_lost)
{
    *conn_lost = false;
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return MSGBUS_OK;
    case AMQP_RESPONSE_NONE:
        snprintf(detail, n, "%s: no reply from the broker", what);
        *conn_lost = true;
        return MSGBUS_ERR_CONNECT;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(detail, n, "%s: %s", what, amqp_error_string2(r.library_error));
        *conn_lost = true;
        return r.library_error == AMQP_STATUS_TIMEOUT ? MSGBUS_ERR_TIMEOUT : MSGBUS_ERR_CONNECT;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *c = r.reply.decoded;
            snprintf(detail, n, "%s: the broker closed the channel: %u %.*s", what,
                     c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
            mb_amqp_send_close_ok(be, ch);
            if (ch == MB_AMQP_PUB_CHANNEL)
                be->pub_channel_ok = false;
            if (ch == MB_AMQP_CTL_CHANNEL)
                be->ctl_channel_ok = false;
            return mb_amqp_code_err(c->reply_code);
        }
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *c = r.reply.decoded;
            snprintf(detail, n, "%s: the broker closed the connection: %u %.*s", what,
                     c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
            mb_amqp_send_close_ok(be, 0);
            *conn_lost = true;
            return mb_amqp_code_err(c->reply_code);
        }
        snprintf(detail, n, "%s: unexpected method 0x%08x from the broker", what,
                 (unsigned)r.reply.id);
        *conn_lost = true;
        return MSGBUS_ERR_BROKER;
    }
    snprintf(detail, n, "%s: unknown failure", what);
    *conn_lost = true;
    return MSGBUS_ERR_INTERNAL;
}

/* ---- connecting ----------------------------------------------------------------- */

static void mb_amqp_lower(char *out, size_t n, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[i] = '\0';
}

/* rabbitmq-c 0.11 keeps a failed connect's reason (SO_ERROR) to itself:
 * one plain connect of our own to the first address, bounded by the
 * connect timeout, recovers it (ECONNREFUSED, EHOSTUNREACH, ETIMEDOUT...).
 * 0 when it connects after all or the name does not resolve. */
static int mb_amqp_probe_errno(const char *host, int port, long timeout_ms)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0 || !ai)
        return 0;
    int err = 0;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd < 0) {
        err = errno;
    } else if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            struct pollfd p = {fd, POLLOUT, 0};
            int rc = poll(&p, 1, (int)(timeout_ms > 2000 ? 2000 : timeout_ms));
            socklen_t len = sizeof err;
            if (rc == 0)
                err = ETIMEDOUT;
            else if (rc < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
        }
    }
    if (fd >= 0)
        close(fd);
    freeaddrinfo(ai);
    return err;
}

static struct timeval mb_amqp_tv(long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    return tv;
}

msgbus_err_t mb_amqp_open_channel(struct mb_backend *be, amqp_channel_t ch, bool confirm,
                                         char *detail, size_t n, bool *conn_lost)
{
    amqp_channel_open(be->conn, ch);
    msgbus_err_t e = mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, "channel.open",
                                         detail, n, conn_lost);
    if (e || !confirm)
        return e;
    amqp_confirm_select(be->conn, ch);
    return mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, "confirm.select", detail,
                               n, conn_lost);
}

/* ---- TLS errors ------------------------------------------------------------ */

/* rabbitmq-c's TLS socket reduces every failure to "a SSL error occurred"
 * (or "SSL handshake failed"); the reason stays in OpenSSL's error queue of
 * this thread, which rabbitmq-c clears before each TLS call, so what is
 * there after a failure is that call's. OpenSSL (libssl, libcrypto) is
 * already librabbitmq's own dependency and on our link line through its
 * CMake target. Writes the reason's text to out and the TLS alert the peer
 * sent (0 if none) to *alert; false when OpenSSL has nothing to say. */
static bool mb_amqp_ssl_reason(char *out, size_t n, int *alert, int *reason)
{
    /* The queue runs from the root cause to the wrappers ("No such file or
     * directory" then "system lib"; "no start line" then "PEM lib"), so the
     * first entry is the reader's reason; a peer's alert or an errno wins. */
    unsigned long e, first = 0, sys = 0;
    *alert = 0;
    out[0] = '\0';
    while ((e = ERR_get_error()) != 0) {
        int r = ERR_GET_REASON(e);
        if (!first)
            first = e;
        if (ERR_GET_LIB(e) == ERR_LIB_SYS && !sys)
            sys = e;
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && r >= SSL_AD_REASON_OFFSET &&
            r < SSL_AD_REASON_OFFSET + 256 && !*alert)
            *alert = r - SSL_AD_REASON_OFFSET;
    }
    if (!first)
        return false;
    if (reason)
        *reason = ERR_GET_LIB(first) == ERR_LIB_SSL ? ERR_GET_REASON(first) : 0;
    if (sys) {
        mb_amqp_lower(out, n, strerror(ERR_GET_REASON(sys)));
        return true;
    }
    const char *s = ERR_reason_error_string(first);
    if (s)
        snprintf(out, n, "%s", s);
    else
        ERR_error_string_n(first, out, n);
    return true;
}

static const char *mb_amqp_alert_name(int alert)
{
    switch (alert) {
    case 116: /* TLS 1.3; OpenSSL 3.0's table does not know it */
        return "certificate required";
    default:
        return SSL_alert_desc_string_long(alert);
    }
}

/* Alerts by which a server refuses the client's certificate (or its
 * absence): 42 bad certificate, 43 unsupported, 44 revoked, 45 expired,
 * 46 unknown, 48 unknown CA, 49 access denied, 116 certificate required.
 * RabbitMQ with fail_if_no_peer_cert sends 116 over TLS 1.3; over TLS 1.2
 * it sends 40 (handshake failure), which is also what a cipher mismatch
 * gets, so 40 stays a connection error with a hint. */
static bool mb_amqp_alert_refuses_cert(int alert)
{
    return (alert >= 42 && alert <= 46) || alert == 48 || alert == 49 || alert == 116;
}

/* A TLS failure at h:p after the handshake began (open or the first reads
 * of the login): the broker's reason when OpenSSL kept one. Returns 0 when
 * OpenSSL has nothing, else the error to report with detail written. With
 * TLS 1.3 the client's handshake completes before the server has looked at
 * the client certificate, so a refused certificate shows up only as an
 * alert on the first read, i.e. during the AMQP login. */
static msgbus_err_t mb_amqp_tls_failure(const struct mb_amqp_conf *c,
                                        const struct mb_url_host *h, char *detail, size_t n)
{
    char why[256];
    int alert, reason = 0;
    if (!mb_amqp_ssl_reason(why, sizeof why, &alert, &reason))
        return MSGBUS_OK;
    if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_PACKET_LENGTH_TOO_LONG) {
        /* What OpenSSL makes of a plaintext server's first bytes. */
        snprintf(detail, n,
                 "%s:%d does not answer in TLS (%s): is it a plain amqp:// port? "
                 "(amqps:// defaults to 5671)",
                 h->host, h->port, why);
        return MSGBUS_ERR_CONNECT;
    }
    if (alert == 116 || (alert && mb_amqp_alert_refuses_cert(alert) && !c->cert)) {
        snprintf(detail, n,
                 "%s:%d refused the TLS connection with alert %d '%s': the broker requires "
                 "a client certificate (options cert= and key=)",
                 h->host, h->port, alert, mb_amqp_alert_name(alert));
        return MSGBUS_ERR_AUTH;
    }
    if (alert && mb_amqp_alert_refuses_cert(alert)) {
        snprintf(detail, n,
                 "%s:%d refused the client certificate cert='%s' with TLS alert %d '%s'",
                 h->host, h->port, c->cert, alert, mb_amqp_alert_name(alert));
        return MSGBUS_ERR_AUTH;
    }
    if (alert == 40) {
        snprintf(detail, n,
                 "%s:%d ended the TLS handshake with alert 40 'handshake failure' (no common "
                 "cipher or protocol, or, over TLS 1.2, a client certificate it wants%s)",
                 h->host, h->port, c->cert ? " and does not accept" : " and did not get");
        return MSGBUS_ERR_CONNECT;
    }
    if (alert) {
        snprintf(detail, n, "%s:%d ended the TLS connection with alert %d '%s'", h->host,
                 h->port, alert, mb_amqp_alert_name(alert));
        return MSGBUS_ERR_CONNECT;
    }
    snprintf(detail, n, "TLS with %s:%d failed: %s", h->host, h->port, why);
    return MSGBUS_ERR_CONNECT;
}

/* An encrypted key would make OpenSSL prompt on the terminal for its
 * passphrase: msgbus takes unencrypted keys, so it fails instead. */
static int mb_amqp_no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return 0;
}

/* A TCP connection to host:port (non-blocking fd) within timeout_ms, or -1. */
static int mb_amqp_dial(const char *host, int port, long timeout_ms)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &ai) != 0 || !ai)
        return -1;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        struct pollfd p = {fd, POLLOUT, 0};
        int err = 0;
        socklen_t len = sizeof err;
        if (errno != EINPROGRESS || poll(&p, 1, (int)timeout_ms) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err) {
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(ai);
    return fd;
}

/* A TLS login that failed without a reason. With TLS 1.3 a broker refusing
 * the client certificate sends its alert after the client's handshake has
 * finished and closes; the client has meanwhile sent the AMQP header, which
 * the broker never reads, so its close is a reset that can destroy the
 * alert before rabbitmq-c reads it (then OpenSSL has only "connection
 * reset"). This asks again without sending anything: a handshake with the
 * same TLS context, then one read within timeout_ms (at most 2 s), which
 * gets the alert if there is one. Returns 0 when there is none (the broker
 * accepted the certificate: the failure was something else). Only on the
 * failure path, so a successful connect costs nothing. */
static msgbus_err_t mb_amqp_tls_probe(const struct mb_amqp_conf *c, const struct mb_url_host *h,
                                      amqp_socket_t *s, char *detail, size_t n)
{
    SSL_CTX *ctx = amqp_ssl_socket_get_context(s);
    long budget = c->connect_timeout_ms > 2000 ? 2000 : c->connect_timeout_ms;
    int64_t deadline = mb_mono_ms() + budget;
    if (!ctx)
        return MSGBUS_OK;
    int fd = mb_amqp_dial(h->host, h->port, budget);
    if (fd < 0)
        return MSGBUS_OK;
    msgbus_err_t e = MSGBUS_OK;
    SSL *ssl = SSL_new(ctx);
    if (ssl && SSL_set_fd(ssl, fd) == 1) {
        ERR_clear_error();
        bool handshaken = false;
        for (;;) {
            char buf[64];
            int rc = handshaken ? SSL_read(ssl, buf, sizeof buf) : SSL_connect(ssl);
            if (rc > 0 && !handshaken) {
                handshaken = true;
                continue;
            }
            if (rc > 0)
                continue; /* session tickets and the like: read on */
            int why = SSL_get_error(ssl, rc);
            int64_t left = deadline - mb_mono_ms();
            if ((why == SSL_ERROR_WANT_READ || why == SSL_ERROR_WANT_WRITE) && left > 0) {
                struct pollfd p = {fd, why == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, 0};
                if (poll(&p, 1, (int)left) > 0)
                    continue;
            }
            if (why == SSL_ERROR_SSL)
                e = mb_amqp_tls_failure(c, h, detail, n);
            break;
        }
    }
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return e;
}

/* Loads the TLS files into rabbitmq-c's SSL_CTX. The certificate and the
 * key are loaded one after the other (as amqp_ssl_socket_set_key does) so
 * that the error names the option at fault, with OpenSSL's reason ("key
 * values mismatch", "no such file"...). Never prints file contents. */
static msgbus_err_t mb_amqp_tls_setup(struct mb_backend *be, amqp_socket_t *s, char *detail,
                                      size_t n)
{
    const struct mb_amqp_conf *c = &be->conf;
    char why[256];
    int alert;
    amqp_ssl_socket_set_verify_peer(s, c->verify_peer);
    amqp_ssl_socket_set_verify_hostname(s, c->verify_hostname);
    ERR_clear_error();
    if (c->cacert && amqp_ssl_socket_set_cacert(s, c->cacert) != AMQP_STATUS_OK) {
        mb_amqp_ssl_reason(why, sizeof why, &alert, NULL);
        snprintf(detail, n, "option 'cacert': cannot load CA certificates from '%s': %s",
                 c->cacert, why[0] ? why : "unreadable");
        return MSGBUS_ERR_CONFIG;
    }
    if (!c->cert)
        return MSGBUS_OK;
    SSL_CTX *ctx = amqp_ssl_socket_get_context(s);
    if (!ctx) {
        snprintf(detail, n, "no TLS context to load the client certificate into");
        return MSGBUS_ERR_INTERNAL;
    }
    SSL_CTX_set_default_passwd_cb(ctx, mb_amqp_no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(ctx, c->cert) != 1) {
        mb_amqp_ssl_reason(why, sizeof why, &alert, NULL);
        snprintf(detail, n, "option 'cert': cannot load the client certificate '%s': %s",
                 c->cert, why[0] ? why : "unreadable");
        return MSGBUS_ERR_CONFIG;
    }
    /* Also checks that the key belongs to the certificate. */
    if (SSL_CTX_use_PrivateKey_file(ctx, c->key, SSL_FILETYPE_PEM) != 1) {
        mb_amqp_ssl_reason(why, sizeof why, &alert, NULL);
        snprintf(detail, n,
                 "option 'key': cannot use '%s' as the key of the client certificate '%s': "
                 "%s (an unencrypted PEM key matching the certificate is needed)",
                 c->key, c->cert, why[0] ? why : "unreadable");
        return MSGBUS_ERR_CONFIG;
    }
    return MSGBUS_OK;
}

static msgbus_err_t mb_amqp_connect_host(struct mb_backend *be, const struct mb_url_host *h,
                                         char *detail, size_t n)
{
    const struct mb_amqp_conf *c = &be->conf;
    amqp_connection_state_t conn = amqp_new_connection();
    if (!conn) {
        snprintf(detail, n, "out of memory");
        return MSGBUS_ERR_NOMEM;
    }
    be->conn = conn;
    msgbus_err_t e = MSGBUS_OK;
    bool lost;
    amqp_socket_t *s = c->tls ? amqp_ssl_socket_new(conn) : amqp_tcp_socket_new(conn);
    if (!s) {
        snprintf(detail, n, "cannot create a %s socket", c->tls ? "TLS" : "TCP");
        e = MSGBUS_ERR_CONNECT;
        goto fail;
    }
    if (c->tls && (e = mb_amqp_tls_setup(be, s, detail, n)))
        goto fail;
    struct timeval tv = mb_amqp_tv(c->connect_timeout_ms);
    errno = 0;
    int st = amqp_socket_open_noblock(s, h->host, h->port, &tv);
    int err = errno;
    if (st == AMQP_STATUS_SOCKET_ERROR || st == AMQP_STATUS_TCP_ERROR) {
        /* rabbitmq-c says only "a socket error occurred"; the system's
         * reason is what a reader needs ("connection refused at h:p"). */
        if (!err || err == EINPROGRESS)
            err = mb_amqp_probe_errno(h->host, h->port, c->connect_timeout_ms);
        if (err && err != EINPROGRESS) {
            char why[128];
            mb_amqp_lower(why, sizeof why, strerror(err));
            snprintf(detail, n, "%s at %s:%d%s", why, h->host, h->port,
                     c->tls ? " (TLS)" : "");
            e = MSGBUS_ERR_CONNECT;
            goto fail;
        }
    }
    if (c->tls && (st == AMQP_STATUS_SSL_CONNECTION_FAILED || st == AMQP_STATUS_SSL_ERROR) &&
        (e = mb_amqp_tls_failure(c, h, detail, n)))
        goto fail;
    if (st != AMQP_STATUS_OK) {
        const char *extra = "";
        if (st == AMQP_STATUS_SSL_PEER_VERIFY_FAILED)
            /* rabbitmq-c 0.11 never loads the system's CAs: without
             * cacert nothing is trusted. */
            extra = c->cacert ? " (the server certificate is not signed by a CA in cacert)"
                              : " (no cacert= given, and without it no CA is trusted)";
        else if (st == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED)
            extra = " (the certificate does not name this host; tls_verify_hostname=false "
                    "turns the check off)";
        snprintf(detail, n, "cannot connect to %s:%d%s: %s%s", h->host, h->port,
                 c->tls ? " over TLS" : "", amqp_error_string2(st), extra);
        e = MSGBUS_ERR_CONNECT;
        goto fail;
    }
    mb_amqp_set_sockfd(be, amqp_get_sockfd(conn));
    amqp_set_handshake_timeout(conn, &tv);
    struct timeval rpc = mb_amqp_tv(c->rpc_timeout_ms);
    amqp_set_rpc_timeout(conn, &rpc);
    /* Announce connection.blocked: without it RabbitMQ stalls publishers in
     * a resource alarm without telling them; and consumer_cancel_notify
     * (not among rabbitmq-c 0.11's defaults): without it a consumer whose
     * queue is deleted hears nothing and waits forever, instead of getting
     * basic.cancel (its subscription then reports DOWN). rabbitmq-c merges
     * this table into its own default capabilities. */
    amqp_table_entry_t caps_e[] = {
        {.key = amqp_cstring_bytes("connection.blocked"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value = {.boolean = 1}}},
        {.key = amqp_cstring_bytes("authentication_failure_close"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value = {.boolean = 1}}},
        {.key = amqp_cstring_bytes("consumer_cancel_notify"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value = {.boolean = 1}}},
    };
    amqp_table_entry_t props_e[] = {
        {.key = amqp_cstring_bytes("capabilities"),
         .value = {.kind = AMQP_FIELD_KIND_TABLE,
                   .value = {.table = {.num_entries = 3, .entries = caps_e}}}},
        {.key = amqp_cstring_bytes("product"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value = {.bytes = amqp_cstring_bytes("msgbus")}}},
    };
    amqp_table_t props = {.num_entries = 2, .entries = props_e};
    amqp_rpc_reply_t r = amqp_login_with_properties(conn, c->vhost, 0, (int)c->frame_max,
                                                    (int)c->heartbeat_s, &props,
                                                    AMQP_SASL_METHOD_PLAIN, c->user, c->password);
    if (c->tls && r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error != AMQP_STATUS_TIMEOUT &&
        ((e = mb_amqp_tls_failure(c, h, detail, n)) ||
         (e = mb_amqp_tls_probe(c, h, s, detail, n))))
        goto fail;
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char what[300];
        snprintf(what, sizeof what, "login to %s:%d as '%s' (vhost '%s')", h->host, h->port,
                 c->user, c->vhost);
        e = mb_amqp_reply_error(be, r, 0, what, detail, n, &lost);
        if (!c->tls && r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            (r.library_error == AMQP_STATUS_SOCKET_ERROR ||
             r.library_error == AMQP_STATUS_CONNECTION_CLOSED ||
             r.library_error == AMQP_STATUS_BAD_AMQP_DATA ||
             r.library_error == AMQP_STATUS_UNEXPECTED_STATE)) {
            /* A TLS listener drops a plaintext client's AMQP header (or
             * answers it with a TLS alert), which rabbitmq-c reports as a
             * bare socket error. */
            snprintf(detail, n,
                     "%s: the server dropped the connection at the AMQP header (%s): if %d "
                     "is a TLS port, use amqps://",
                     what,
                     r.library_error == AMQP_STATUS_CONNECTION_CLOSED ? "closed" : "reset",
                     h->port);
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            e = MSGBUS_ERR_CONNECT;
        goto fail;
    }
    be->channel_max = amqp_get_channel_max(conn);
    if (be->channel_max <= 0)
        be->channel_max = 65535;
    if ((e = mb_amqp_open_channel(be, MB_AMQP_PUB_CHANNEL, true, detail, n, &lost)) ||
        (e = mb_amqp_open_channel(be, MB_AMQP_CTL_CHANNEL, false, detail, n, &lost)))
        goto fail;
    be->pub_channel_ok = be->ctl_channel_ok = true;
    be->next_seq = 0;
    return MSGBUS_OK;
fail:
    mb_amqp_set_sockfd(be, -1);
    amqp_destroy_connection(conn);
    be->conn = NULL;
    return e;
}

msgbus_err_t mb_amqp_connect(struct mb_backend *be)
{
    char detail[MB_AMQP_DETAIL] = "", all[MB_AMQP_DETAIL * 2] = "";
    msgbus_err_t e = MSGBUS_ERR_CONNECT;
    for (size_t k = 0; k < be->conf.nhosts; k++) {
        size_t i = (be->host_index + k) % be->conf.nhosts;
        pthread_mutex_lock(&be->lock);
        bool cut = k > 0 && (be->kick_pending || be->stopping);
        pthread_mutex_unlock(&be->lock);
        if (cut)
            break; /* closing (or a kick): the other hosts can wait */
        e = mb_amqp_connect_host(be, &be->conf.hosts[i], detail, sizeof detail);
        if (e == MSGBUS_OK) {
            be->host_index = i;
            return MSGBUS_OK;
        }
        size_t used = strlen(all);
        snprintf(all + used, sizeof all - used, "%s%s", used ? "; " : "", detail);
        /* Refused credentials or a bad TLS file will not get better on the
         * next host of the same cluster. */
        if (e == MSGBUS_ERR_AUTH || e == MSGBUS_ERR_CONFIG || e == MSGBUS_ERR_NOMEM)
            break;
    }
    /* Failover: the next attempt starts with the host after the failed one. */
    be->host_index = (be->host_index + 1) % be->conf.nhosts;
    return mb_error(e, "%s: %s", mb_bus_url(be->bus), all);
}

/* ---- topology ---------------------------------------------------------------------- */

bool mb_amqp_ensure_ctl(struct mb_backend *be, char *detail, size_t n, bool *conn_lost)
{
    if (be->ctl_channel_ok)
        return true;
    if (mb_amqp_open_channel(be, MB_AMQP_CTL_CHANNEL, false, detail, n, conn_lost))
        return false;
    be->ctl_channel_ok = true;
    return true;
}

msgbus_err_t mb_amqp_declare_exchange(struct mb_backend *be, amqp_channel_t ch,
                                      const char *topic, char *detail, size_t n,
                                      bool *conn_lost)
{
    amqp_exchange_declare(be->conn, ch, amqp_cstring_bytes(topic), amqp_cstring_bytes("topic"),
                          0, 1, 0, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "declaring exchange '%s'", topic);
    return mb_amqp_reply_error(be, amqp_get_rpc_reply(be->conn), ch, what, detail, n, conn_lost);
}

static struct mb_amqp_topic *mb_amqp_topic_find(struct mb_backend *be, const char *name)
{
    for (struct mb_amqp_topic *t = be->topics; t; t = t->next)
        if (strcmp(t->name, name) == 0)
            return t;
    return NULL;
}

void mb_amqp_topics_clear(struct mb_backend *be)
{
    while (be->topics) {
        struct mb_amqp_topic *t = be->topics;
        be->topics = t->next;
        free(t->name);
        free(t->failure);
        free(t);
    }
}

bool mb_amqp_topic_known(struct mb_backend *be, const char *topic)
{
    struct mb_amqp_topic *t = mb_amqp_topic_find(be, topic);
    return t && !t->failure;
}

/* The topic's exchange exists on this connection (declared once per
 * connection, on the control channel so that a refusal — an exchange of
 * another type by that name — cannot close the publish channel). Returns
 * false and a detail when publishes to it must fail. */
bool mb_amqp_topic_ready(struct mb_backend *be, const char *topic, char *detail, size_t n)
{
    struct mb_amqp_topic *t = mb_amqp_topic_find(be, topic);
    int64_t now = mb_mono_ms();
    if (t && !t->failure)
        return true;
    if (t && t->failed_until_ms > now) {
        snprintf(detail, n, "%s", t->failure);
        return false;
    }
    bool lost = false;
    msgbus_err_t e = MSGBUS_ERR_CONNECT;
    if (mb_amqp_ensure_ctl(be, detail, n, &lost))
        e = mb_amqp_declare_exchange(be, MB_AMQP_CTL_CHANNEL, topic, detail, n, &lost);
    if (lost) {
        mb_amqp_conn_lost(be, detail);
        return false;
    }
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t || !(t->name = mb_strdup(topic))) {
            free(t);
            snprintf(detail, n, "out of memory");
            return false;
        }
        t->next = be->topics;
        be->topics = t;
    }
    free(t->failure);
    t->failure = NULL;
    if (e == MSGBUS_OK)
        return true;
    t->failure = mb_strdup(detail);
    t->failed_until_ms = now + 1000;
    return false;
}

