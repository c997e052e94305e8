/*
 * test_e2e_amqp.c — the end-to-end "effectively once" proof against the real
 * RabbitMQ broker: outbox (SQLite) → relay → amqp → inbox (SQLite) → ledger,
 * with the relay and the consumer SIGKILLed several times and the broker
 * restarted once. All the logic is in e2e_common.h.
 */
#include "e2e_common.h"

int main(int argc, char **argv)
{
    return e2e_main(argc, argv, "amqp", __FILE__);
}
