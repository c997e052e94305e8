/*
 * test_e2e_kafka.c — the end-to-end "effectively once" proof against the real
 * Kafka broker: outbox (SQLite) → relay → kafka → inbox (SQLite) → ledger,
 * with the relay and the consumer SIGKILLed several times and the broker
 * restarted once. All the logic is in e2e_common.h.
 */
#include "e2e_common.h"

int main(int argc, char **argv)
{
    return e2e_main(argc, argv, "kafka", __FILE__);
}
