#!/usr/bin/env python3
"""Order service: writes each order and its "order placed" message in ONE
SQLite transaction (the transactional outbox); the C relay publishes
committed messages.

    MSGBUS_URL=amqp://guest:guest@127.0.0.1:5672/ python3 producer_outbox.py --orders 100

The message exists exactly when the order does: a rolled-back transaction
leaves neither (the script rolls one back on purpose to show it).
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys

import msgbus
from msgbus import outbox

TOPIC = "orders"


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")  # the relay reads while we write
    db.execute("CREATE TABLE IF NOT EXISTS orders ("
               " id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total_cents INTEGER NOT NULL)")
    outbox.create_table(db)  # the contract of docs/outbox.md (the relay would create it too)
    db.commit()
    return db


def place_order(db: sqlite3.Connection, order_id: int, customer: str, total_cents: int,
                topic: str = TOPIC) -> str:
    """The business change and its message, in the application's transaction."""
    with db:  # sqlite3: BEGIN … COMMIT, or ROLLBACK if the block raises
        db.execute("INSERT INTO orders (id, customer, total_cents) VALUES (?, ?, ?)",
                   (order_id, customer, total_cents))
        return outbox.put(db, topic,
                          json.dumps({"order": order_id, "total_cents": total_cents}).encode(),
                          key=f"customer-{customer}",
                          headers={"content-type": "application/json", "type": "order.placed"})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="orders.db")
    ap.add_argument("--url", default=None, help="broker URL (default: $MSGBUS_URL)")
    ap.add_argument("--topic", default=TOPIC)
    ap.add_argument("--orders", type=int, default=10)
    ap.add_argument("--declare-group", default="billing",
                    help="group to declare before publishing, so it keeps every message")
    args = ap.parse_args(argv)

    db = open_db(args.db)
    start = (db.execute("SELECT max(id) FROM orders").fetchone()[0] or 0) + 1

    with msgbus.Bus(args.url) as bus, outbox.Relay.sqlite(args.db, bus) as relay:
        if args.declare_group:
            bus.declare(args.topic, args.declare_group)
        relay.start(poll_interval_ms=200)  # background C relay on its own connection
        for i in range(start, start + args.orders):
            place_order(db, i, f"c{i % 7}", 100 * i, args.topic)
            relay.wake()

        # A failed transaction: no order, and no message.
        try:
            with db:
                db.execute("INSERT INTO orders (id, customer, total_cents) VALUES (?, 'x', 1)",
                           (start + args.orders,))
                outbox.put(db, args.topic, b"never sent")
                raise RuntimeError("payment declined")
        except RuntimeError:
            pass

        import time
        deadline = time.monotonic() + 30
        while relay.stats()["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
        relay.stop()
        st = relay.stats()
    print(f"producer: {args.orders} orders committed, outbox pending={st['pending']} "
          f"failed={st['failed']}")
    db.close()
    return 0 if st["pending"] == 0 and st["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
