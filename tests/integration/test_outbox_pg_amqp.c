/*
 * test_outbox_pg_amqp.c — relay processes on the real PostgreSQL into the
 * real RabbitMQ broker: three at once on 50,000 rows, and one killed
 * with SIGKILL 20 times. The scenarios are in test_outbox_pg_common.h.
 */
#define OUTBOX_BUS_KIND "amqp"
#include "test_outbox_pg_common.h"
