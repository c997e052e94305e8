"""bench/python/micro_mem.py — per-call cost of msgbus-py on mem:// (no
broker, no network: what is left is the binding and the C core).

    micro_mem.py [messages=200000] [--profile]

Prints `MICRO op=<publish|receive|receive_batch> us_per_msg=<µs> cpu_us=<µs>`
for: publish (64 B, a Delivery each, flush at the end), receive (receive +
payload + id + ack, one at a time) and receive_batch (batches of 500).
--profile also prints the top of a cProfile of each.
"""
import cProfile
import pstats
import sys
import time

import msgbus

N = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 200000
PROFILE = "--profile" in sys.argv
PAYLOAD = b"x" * 64


def publish(bus, topic, n):
    pub = bus.publish
    for _ in range(n):
        while True:
            try:
                pub(topic, PAYLOAD)
                break
            except msgbus.QueueFullError:
                bus.poll(0.01)
    bus.flush(30)


def receive(sub, n):
    got = 0
    while got < n:
        m = sub.receive(5)
        if m is None:
            raise SystemExit(f"receive: only {got} of {n}")
        m.payload, m.id
        m.ack()
        got += 1


def receive_batch(sub, n):
    got = 0
    while got < n:
        ms = sub.receive_batch(500, 5)
        if not ms:
            raise SystemExit(f"receive_batch: only {got} of {n}")
        for m in ms:
            m.payload, m.id
            m.ack()
        got += len(ms)


def timed(name, fn, *args):
    prof = cProfile.Profile() if PROFILE else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    fn(*args)
    if prof:
        prof.disable()
    t, c = time.perf_counter() - t0, time.process_time() - c0
    print(f"MICRO op={name} us_per_msg={t / N * 1e6:.2f} cpu_us={c / N * 1e6:.2f}"
          + (" (under cProfile)" if prof else ""), flush=True)
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


def main():
    with msgbus.Bus("mem://pyspeed-micro?queue_max=1000000") as bus:
        for op in ("receive", "receive_batch"):
            bus.declare("t-" + op, "g")
        timed("publish", publish, bus, "t-receive", N)
        publish(bus, "t-receive_batch", N)
        for op, fn in (("receive", receive), ("receive_batch", receive_batch)):
            with bus.subscribe("t-" + op, "g") as sub:
                timed(op, fn, sub, N)


if __name__ == "__main__":
    main()
