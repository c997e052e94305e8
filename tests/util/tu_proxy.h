/*
 * tu_proxy.h — a TCP proxy for tests that stands between msgbus and the
 * test RabbitMQ (MSGBUS_TEST_AMQP_URL): it forwards both ways, cuts every
 * link on demand (msgbus sees its connection lost and reconnects) and, with
 * a hook on the AMQP frames msgbus sends, can freeze a link — nothing
 * forwarded either way, sockets left open — to stall an RPC mid-way.
 * One proxy at a time per test process.
 */
#ifndef TU_PROXY_H
#define TU_PROXY_H

#include <stdbool.h>
#include <stddef.h>

/* Called with each whole AMQP frame msgbus sends (after the protocol
 * header): true freezes its link from that frame on. */
typedef bool (*tu_proxy_freeze_fn)(void *arg, const unsigned char *frame, size_t len);

/* Starts the proxy in front of the test RabbitMQ. *url gets msgbus's URL
 * through it (the broker's user, password and vhost) with `query` (may be
 * NULL) as its query string. `freeze` may be NULL: plain forwarding. */
void tu_proxy_start_amqp(tu_proxy_freeze_fn freeze, void *arg, const char *query, char *url,
                         size_t n);
/* The proxy's port on 127.0.0.1. */
int tu_proxy_port(void);
/* Links frozen so far. */
int tu_proxy_frozen(void);
/* Cuts every open link. */
void tu_proxy_cut_all(void);
/* Stops accepting, cuts every link and waits for the pumps to close. */
void tu_proxy_stop(void);

/* A freeze hook: the link freezes when msgbus sends exchange.declare
 * (class 40, method 10) — re-declaring its topology after a reconnect. */
bool tu_proxy_on_exchange_declare(void *arg, const unsigned char *frame, size_t len);

#endif
