"""bench/python/bench_py.py — msgbus-py against the stock Python clients, on
the same broker, in the same run, alternating (msgbus first on even rounds,
the peer first on odd ones), median of the rounds.

    bench_py.py [--messages N] [--rounds R] [--cases FILTER] [--side msgbus|peer]

Brokers: $MSGBUS_TEST_KAFKA_URL (kafka://host:port) and
$MSGBUS_TEST_AMQP_URL (amqp://user:pass@host:port/vhost); a case whose
broker URL is missing fails (exit 1), it is never skipped. bench/python/run
sets up the venv and runs this.

Cases (each side gets its own fresh topic / queue every round, deleted
after it):

  kafka_produce_64 / _1024   publish N messages, a delivery report for each
                             (msgbus: Delivery objects; confluent-kafka:
                             on_delivery callback), until the last report.
  kafka_consume_64 / _1024   receive N messages already in the topic, one at
                             a time, reading payload and message id, and
                             commit (msgbus: ack each, the library commits
                             acked offsets; confluent-kafka: poll(), commit
                             the positions every 100 ms, asynchronously).
  kafka_consume_batch_64     the same in batches of 500 (msgbus:
                             receive_batch; confluent-kafka: consume(500)).
  amqp_publish_64 / _1024    persistent publish to a durable topic exchange
                             with one durable queue bound, publisher confirms
                             with a window of 1000, until the last confirm
                             (pika: SelectConnection, the window kept by
                             its confirm callback).
  amqp_consume_64 / _1024    receive N persistent messages already in the
                             queue and ack each (pika: prefetch 200, as
                             msgbus's default, ack multiple=true every 100).

Fairness. Kafka: both producers are idempotent with acks=all and
librdkafka's defaults otherwise (linger.ms 5, batch size 1 MB, no
compression); both write the record msgbus writes by default: the payload,
no key, and the five CloudEvents headers (ce_specversion, a 36-byte ce_id,
ce_source, ce_type, ce_time) — the peer's id is a counter, cheaper than
msgbus's UUIDv7. Both consumers: auto commit and offset store off,
auto.offset.reset=earliest, queued.min.messages=1000000 (msgbus's
settings). The peer reads ce_id from each record's headers, as msgbus
hands every message its id. RabbitMQ: both publish persistent messages
(delivery_mode 2) to a durable topic exchange with a message_id; confirm
window 1000 on both.

Each timed run is a process of its own (as bench/bench_kafka.c: one
client per process, warmed up with one message before the clock starts).
Output per case:

  RESULT case=<name> msgbus=<msg/s> peer=<msg/s> ratio=<msgbus/peer>
         msgbus_cpu_us=<CPU µs per message> peer_cpu_us=<…>

CPU is the process's user+system time over the timed part (all threads:
librdkafka's and msgbus's I/O threads count), divided by N.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

CE_SOURCE = "/msgbus-bench"


def _unique(prefix: str) -> str:
    return f"pyspeed-{prefix}-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------ children

class Clock:
    def __init__(self) -> None:
        self.t0 = self.c0 = 0.0

    def start(self) -> None:
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def stop(self, n: int) -> dict:
        t, c = time.perf_counter() - self.t0, time.process_time() - self.c0
        return {"rate": n / t, "cpu_us": c / n * 1e6}


def kafka_bootstrap(url: str) -> str:
    return url.split("://", 1)[1].split("?", 1)[0].split("/", 1)[0]


def msgbus_publish(url: str, topic: str, n: int, size: int, group: str | None) -> dict:
    import msgbus
    payload = b"p" * size
    with msgbus.Bus(url) as bus:
        if group:
            bus.declare(topic, group)
        bus.publish(topic, payload).result(30)  # warm-up: connected, topic made
        clock = Clock()
        clock.start()
        pub = bus.publish
        ds = []
        for i in range(n):
            while True:
                try:
                    ds.append(pub(topic, payload))
                    break
                except msgbus.QueueFullError:
                    bus.poll(0.01)
            if i % 1000 == 999:  # reports served as the peer's are: poll(0) every 1000
                bus.poll(0)
        bus.flush(120)
        r = clock.stop(n)
        bad = sum(1 for d in ds if d.exception(0) is not None)
        if bad:
            raise SystemExit(f"msgbus publish: {bad} of {n} failed")
        return r


def peer_kafka_produce(url: str, topic: str, n: int, size: int) -> dict:
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": kafka_bootstrap(url), "enable.idempotence": True,
                  "acks": "all"})
    payload = b"p" * size
    state = {"ok": 0, "bad": 0}

    def on_delivery(err, msg):
        if err is None:
            state["ok"] += 1
        else:
            state["bad"] += 1

    def headers(i: int) -> list:
        # the five CloudEvents headers msgbus writes; ce_time as msgbus caches it
        return [("ce_specversion", b"1.0"),
                ("ce_id", f"0190a5d2-7c1e-7000-8000-{i:012d}".encode()),
                ("ce_source", CE_SOURCE.encode()), ("ce_type", topic.encode()),
                ("ce_time", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()).encode())]

    p.produce(topic, payload, headers=headers(0), on_delivery=on_delivery)
    p.flush(30)
    state["ok"] = 0
    clock = Clock()
    clock.start()
    now_s, ce_time = 0, b""
    for i in range(n):
        t = int(time.time())
        if t != now_s:
            now_s, ce_time = t, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)).encode()
        hs = [("ce_specversion", b"1.0"),
              ("ce_id", f"0190a5d2-7c1e-7000-8000-{i:012d}".encode()),
              ("ce_source", CE_SOURCE.encode()), ("ce_type", topic.encode()),
              ("ce_time", ce_time)]
        while True:
            try:
                p.produce(topic, payload, headers=hs, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 999:
            p.poll(0)
    left = p.flush(120)
    r = clock.stop(n)
    if left or state["bad"] or state["ok"] != n:
        raise SystemExit(f"peer produce: {state} of {n}, {left} left")
    return r


def msgbus_fill(url: str, topic: str, n: int, size: int, group: str | None) -> dict:
    return msgbus_publish(url, topic, n, size, group)


def msgbus_consume(url: str, topic: str, n: int, group: str, batch: int) -> dict:
    import msgbus
    with msgbus.Bus(url) as bus:
        with bus.subscribe(topic, group) as sub:
            clock = Clock()
            got = 0
            if batch > 1:
                while got < n:
                    ms = sub.receive_batch(batch, 60)
                    if not ms:
                        raise SystemExit(f"msgbus consume: only {got} of {n}")
                    if not got:
                        clock.start()
                    for m in ms:
                        m.payload, m.id
                        m.ack()
                    got += len(ms)
            else:
                m = sub.receive(60)
                clock.start()
                while True:
                    if m is None:
                        raise SystemExit(f"msgbus consume: only {got} of {n}")
                    m.payload, m.id
                    m.ack()
                    got += 1
                    if got >= n:
                        break
                    m = sub.receive(60)
            return clock.stop(n)


def peer_kafka_consume(url: str, topic: str, n: int, group: str, batch: int) -> dict:
    from confluent_kafka import Consumer, TopicPartition
    c = Consumer({"bootstrap.servers": kafka_bootstrap(url), "group.id": group,
                  "enable.auto.commit": False, "enable.auto.offset.store": False,
                  "auto.offset.reset": "earliest", "queued.min.messages": 1000000})
    c.subscribe([topic])
    clock = Clock()
    got = 0
    pos: dict = {}
    last_commit = 0.0

    def take(m) -> None:
        err = m.error()
        if err is not None:
            raise SystemExit(f"peer consume: {err}")
        m.value()
        for k, v in m.headers() or ():
            if k == "ce_id":
                v.decode()
                break
        pos[m.partition()] = m.offset()

    deadline = time.monotonic() + 120
    while got < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"peer consume: only {got} of {n}")
        if batch > 1:
            ms = c.consume(min(batch, n - got), 1.0)
        else:
            m = c.poll(1.0)
            ms = [m] if m is not None else []
        if ms and not got:
            clock.start()
            last_commit = time.monotonic()
        for m in ms:
            take(m)
        got += len(ms)
        t = time.monotonic()
        if t - last_commit >= 0.1 and pos:
            c.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in pos.items()],
                     asynchronous=True)
            last_commit = t
    r = clock.stop(n)
    c.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in pos.items()],
             asynchronous=False)
    c.close()
    return r


def _pika_params(url: str):
    import pika
    return pika.URLParameters(url)


def _amqp_declare(ch, topic: str, queue: str) -> None:
    ch.exchange_declare(exchange=topic, exchange_type="topic", durable=True)
    ch.queue_declare(queue=queue, durable=True)
    ch.queue_bind(queue=queue, exchange=topic, routing_key="#")


def peer_amqp_publish(url: str, topic: str, n: int, size: int, group: str) -> dict:
    import pika
    queue = f"{topic}.{group}"
    payload = b"p" * size
    window = 1000
    st = {"sent": 0, "acked": 0, "nacked": 0, "clock": Clock(), "result": None,
          "warm": True}
    ce_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def props(i: int):
        return pika.BasicProperties(
            delivery_mode=2, message_id=f"0190a5d2-7c1e-7000-8000-{i:012d}",
            headers={"cloudEvents_specversion": "1.0", "cloudEvents_source": CE_SOURCE,
                     "cloudEvents_type": topic, "cloudEvents_time": ce_time})

    def pump(ch) -> None:
        while st["sent"] < n and st["sent"] - st["acked"] - st["nacked"] < window:
            ch.basic_publish(topic, "", payload, props(st["sent"]))
            st["sent"] += 1

    def on_confirm(frame) -> None:
        ch = st["ch"]
        m = frame.method
        tag = m.delivery_tag
        if st["warm"]:
            st["warm"] = False
            st["base"] = tag
            st["clock"].start()
            pump(ch)
            return
        done = tag - st["base"]
        if isinstance(m, pika.spec.Basic.Nack):
            st["nacked"] += done - st["acked"] - st["nacked"] if m.multiple else 1
        else:
            prev = st["acked"] + st["nacked"]
            st["acked"] += (done - prev) if m.multiple else 1
        if st["acked"] + st["nacked"] >= n:
            st["result"] = st["clock"].stop(n)
            conn.close()
            return
        pump(ch)

    def on_open_ch(ch) -> None:
        st["ch"] = ch
        _amqp_declare_async(ch, topic, queue, lambda: ch.confirm_delivery(
            on_confirm, callback=lambda _f: ch.basic_publish(topic, "", payload, props(-1))))

    def on_open(c) -> None:
        c.channel(on_open_callback=on_open_ch)

    conn = pika.SelectConnection(_pika_params(url), on_open_callback=on_open,
                                 on_open_error_callback=lambda c, e: (
                                     st.__setitem__("error", e), c.ioloop.stop()),
                                 on_close_callback=lambda c, r: c.ioloop.stop())
    conn.ioloop.start()
    if "error" in st:
        raise SystemExit(f"peer publish: pika could not connect: {st['error']}")
    if st["result"] is None or st["nacked"]:
        raise SystemExit(f"peer publish: {st['acked']} acked, {st['nacked']} nacked of {n}")
    return st["result"]


def _amqp_declare_async(ch, topic: str, queue: str, then) -> None:
    ch.exchange_declare(exchange=topic, exchange_type="topic", durable=True,
                        callback=lambda _f: ch.queue_declare(
                            queue=queue, durable=True,
                            callback=lambda _f: ch.queue_bind(
                                queue=queue, exchange=topic, routing_key="#",
                                callback=lambda _f: then())))


def peer_amqp_consume(url: str, topic: str, n: int, group: str, batch: int) -> dict:
    import pika
    queue = f"{topic}.{group}"
    conn = pika.BlockingConnection(_pika_params(url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=200)
    clock = Clock()
    got = 0
    for method, props, body in ch.consume(queue, auto_ack=False, inactivity_timeout=60):
        if method is None:
            raise SystemExit(f"peer consume: only {got} of {n}")
        if not got:
            clock.start()
        body, props.message_id
        got += 1
        if got % 100 == 0 or got >= n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got >= n:
            break
    r = clock.stop(n)
    ch.cancel()
    conn.close()
    return r


def child(args: list) -> None:
    what, side, url, topic, n, size, group, batch = args
    n, size, batch = int(n), int(size), int(batch)
    group = group or None
    if what == "produce":
        r = msgbus_publish(url, topic, n, size, group) if side == "msgbus" else \
            (peer_kafka_produce(url, topic, n, size) if url.startswith("kafka")
             else peer_amqp_publish(url, topic, n, size, group))
    elif what == "fill":
        r = msgbus_fill(url, topic, n, size, group)
    else:
        r = msgbus_consume(url, topic, n, group, batch) if side == "msgbus" else \
            (peer_kafka_consume(url, topic, n, group, batch) if url.startswith("kafka")
             else peer_amqp_consume(url, topic, n, group, batch))
    print("CHILD " + json.dumps(r), flush=True)


# ------------------------------------------------------------------ parent

def run_child(*args: object) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child"] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    for line in p.stdout.splitlines():
        if line.startswith("CHILD "):
            return dict(json.loads(line[6:]))
    sys.stderr.write(p.stdout + p.stderr)
    raise SystemExit(f"bench_py: child {args[:2]} failed (exit {p.returncode})")


CASES = [
    # name, broker, what, size, batch
    ("kafka_produce_64", "kafka", "produce", 64, 1),
    ("kafka_produce_1024", "kafka", "produce", 1024, 1),
    ("kafka_consume_64", "kafka", "consume", 64, 1),
    ("kafka_consume_1024", "kafka", "consume", 1024, 1),
    ("kafka_consume_batch_64", "kafka", "consume", 64, 500),
    ("amqp_publish_64", "amqp", "produce", 64, 1),
    ("amqp_publish_1024", "amqp", "produce", 1024, 1),
    ("amqp_consume_64", "amqp", "consume", 64, 1),
    ("amqp_consume_1024", "amqp", "consume", 1024, 1),
]


def cleanup(url: str, broker: str, topic: str, group: str) -> None:
    """Deletes what one timed run made: the Kafka topic and group, or the
    RabbitMQ queue and exchange (100,000 persistent messages each, left
    behind, slow the broker down for every later run)."""
    try:
        if broker == "kafka":
            from confluent_kafka.admin import AdminClient
            a = AdminClient({"bootstrap.servers": kafka_bootstrap(url)})
            for f in a.delete_topics([topic], operation_timeout=30).values():
                f.result()
            for f in a.delete_consumer_groups([group], request_timeout=30).values():
                try:
                    f.result()
                except Exception:  # a produce case's group never existed
                    pass
        else:
            import pika
            conn = pika.BlockingConnection(pika.URLParameters(url))
            ch = conn.channel()
            ch.queue_delete(queue=f"{topic}.{group}")
            ch.exchange_delete(exchange=topic)
            conn.close()
    except Exception as e:  # noqa: BLE001 — a leftover is not a failed run
        print(f"bench_py: could not delete {topic}: {e}", file=sys.stderr, flush=True)


def one(url: str, broker: str, what: str, size: int, batch: int, side: str, n: int) -> dict:
    topic = _unique(f"{side}-{what}-{size}")
    group = _unique("g")
    try:
        return _one(url, broker, what, size, batch, side, n, topic, group)
    finally:
        cleanup(url, broker, topic, group)


def _one(url: str, broker: str, what: str, size: int, batch: int, side: str, n: int,
         topic: str, group: str) -> dict:
    murl = url if broker == "kafka" else url + ("&" if "?" in url else "?") + "confirm_window=1000"
    surl = murl if side == "msgbus" else url  # the peer's URL without msgbus's options
    if what == "produce":
        # RabbitMQ keeps persistent messages only where a queue is bound
        return run_child("produce", side, surl, topic, n, size,
                         group if broker == "amqp" else "", batch)
    run_child("fill", "msgbus", murl, topic, n, size, group, batch)
    return run_child("consume", side, surl, topic, n, size, group, batch)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default="")
    ap.add_argument("--side", choices=["msgbus", "peer", "both"], default="both")
    a = ap.parse_args()
    urls = {"kafka": os.environ.get("MSGBUS_TEST_KAFKA_URL"),
            "amqp": os.environ.get("MSGBUS_TEST_AMQP_URL")}
    import confluent_kafka
    import pika
    import msgbus
    msgbus.Bus("mem://bench-config").close()  # decides whether the compiled paths serve
    sp = msgbus.speedups() if hasattr(msgbus, "speedups") else "none"
    print(f"config msgbus-py {msgbus.__version__ if hasattr(msgbus, '__version__') else '?'} "
          f"({msgbus.library_info() if hasattr(msgbus, 'library_info') else ''}; "
          f"compiled hot paths: {sp}), "
          f"confluent-kafka {confluent_kafka.version()[0]} (librdkafka "
          f"{confluent_kafka.libversion()[0]}), pika {pika.__version__}; "
          f"N={a.messages} rounds={a.rounds}", flush=True)
    failed = False
    for name, broker, what, size, batch in CASES:
        if a.cases and a.cases not in name:
            continue
        url = urls[broker]
        if not url:
            print(f"FAIL case={name}: MSGBUS_TEST_{broker.upper()}_URL is not set", flush=True)
            failed = True
            continue
        res: dict = {"msgbus": [], "peer": []}
        for r in range(a.rounds):
            order = ["msgbus", "peer"] if r % 2 == 0 else ["peer", "msgbus"]
            for side in order:
                if a.side not in ("both", side):
                    continue
                res[side].append(one(url, broker, what, size, batch, side, a.messages))
        med = {s: (statistics.median(x["rate"] for x in v) if v else 0.0) for s, v in res.items()}
        cpu = {s: (statistics.median(x["cpu_us"] for x in v) if v else 0.0)
               for s, v in res.items()}
        ratio = med["msgbus"] / med["peer"] if med["peer"] else 0.0
        print(f"RESULT case={name} msgbus={med['msgbus']:.0f} peer={med['peer']:.0f} "
              f"ratio={ratio:.2f} msgbus_cpu_us={cpu['msgbus']:.2f} "
              f"peer_cpu_us={cpu['peer']:.2f} rounds="
              + ",".join(f"{x['rate']:.0f}" for x in res["msgbus"]) + "/"
              + ",".join(f"{x['rate']:.0f}" for x in res["peer"]), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
