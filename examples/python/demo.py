#!/usr/bin/env python3
"""Both services in one process on mem:// (no broker needed): orders go
through the SQLite outbox and the C relay, billing applies them through the
inbox; a re-published copy of one message (what a relay that crashed
between publish and mark does) is recognised as a duplicate.

    python3 demo.py [workdir]
"""
from __future__ import annotations

import os
import sys
import tempfile

import msgbus
from msgbus import outbox

import consumer_inbox
import producer_outbox


def main() -> int:
    work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="msgbus-py-demo-")
    os.makedirs(work, exist_ok=True)
    orders_db = os.path.join(work, "orders.db")
    with msgbus.Bus("mem://demo") as bus:
        bus.declare("orders", "billing")
        db = producer_outbox.open_db(orders_db)
        ids = [producer_outbox.place_order(db, i, f"c{i % 3}", 250 * i) for i in range(1, 6)]
        with outbox.Relay.sqlite(orders_db, bus) as relay:
            print(f"relay: published {relay.run_once(100, 5)} rows")
        bus.publish("orders", b'{"order": 1, "total_cents": 250}', id=ids[0]).result(5)
        billing = consumer_inbox.open_db(os.path.join(work, "billing.db"))
        seen = consumer_inbox.run(bus, billing, idle_exit=0.5)
        rows = billing.execute("SELECT count(*), sum(amount_cents) FROM ledger").fetchone()
    print(f"billing: applied={seen['applied']} duplicates={seen['duplicate']} "
          f"ledger_rows={rows[0]} total_cents={rows[1]}")
    return 0 if (seen["applied"], seen["duplicate"], rows[0]) == (5, 1, 5) else 1


if __name__ == "__main__":
    sys.exit(main())
