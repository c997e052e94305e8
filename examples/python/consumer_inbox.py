#!/usr/bin/env python3
"""Billing service: applies each "order placed" message once, whatever the
broker repeats — the inbox claim commits in the same SQLite transaction as
the ledger row.

    MSGBUS_URL=amqp://guest:guest@127.0.0.1:5672/ python3 consumer_inbox.py --idle-exit 5
"""
from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections import Counter
from typing import Optional

import msgbus
from msgbus.inbox import Inbox, Outcome

TOPIC, GROUP = "orders", "billing"


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS ledger ("
               " order_id INTEGER NOT NULL, amount_cents INTEGER NOT NULL)")
    db.commit()
    return db


def run(bus: msgbus.Bus, db: sqlite3.Connection, topic: str = TOPIC, group: str = GROUP,
        idle_exit: Optional[float] = None) -> Counter:
    inbox = Inbox(db, group)  # consumer name = the group: every instance shares it

    def apply(m: msgbus.Message) -> None:
        # Runs inside the inbox's transaction on `db`: do not commit here.
        order = json.loads(m.payload)
        db.execute("INSERT INTO ledger (order_id, amount_cents) VALUES (?, ?)",
                   (order["order"], order["total_cents"]))

    seen: Counter = Counter()
    with bus.subscribe(topic, group) as sub:
        for m in sub.messages(idle_timeout=idle_exit):
            outcome = inbox.handle(m, apply)  # BEGIN, claim, apply, COMMIT, ack
            seen[outcome.value] += 1
    return seen


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="billing.db")
    ap.add_argument("--url", default=None, help="broker URL (default: $MSGBUS_URL)")
    ap.add_argument("--topic", default=TOPIC)
    ap.add_argument("--group", default=GROUP)
    ap.add_argument("--idle-exit", type=float, default=None,
                    help="stop after this many seconds without a message (default: run forever)")
    args = ap.parse_args(argv)
    db = open_db(args.db)
    with msgbus.Bus(args.url) as bus:
        seen = run(bus, db, args.topic, args.group, args.idle_exit)
    rows = db.execute("SELECT count(*), count(DISTINCT order_id) FROM ledger").fetchone()
    print(f"consumer: applied={seen[Outcome.APPLIED.value]} "
          f"duplicates={seen[Outcome.DUPLICATE.value]} rejected={seen[Outcome.REJECTED.value]} "
          f"ledger_rows={rows[0]} distinct_orders={rows[1]}")
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
