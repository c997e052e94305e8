"""msgbus.aio — publish/confirm, receive, async for, flush, cancellation,
many receivers, backpressure and closing, on mem:// and both real brokers.
Plain asyncio.run: no pytest-asyncio needed."""
from __future__ import annotations

import asyncio
import collections
import random
import threading
import time

import pytest

import msgbus
import msgbus.aio as aio
from conftest import unique


def run(coro, timeout=120.0):
    """Runs `coro` on a fresh loop, failing (not hanging) after `timeout` s."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def receive_n(sub, n, timeout=30.0):
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = await sub.receive(0.5)
        if m is not None:
            out.append(m)
    return out


def test_publish_resolves_on_confirm_and_round_trips(url, topic):
    """await publish returns the id the consumer sees, after the confirm
    (nothing outstanding then); fields survive; ack settles."""
    group = unique("g")

    async def main():
        async with aio.Bus(url) as bus:
            await bus.declare(topic, group)
            mid = await bus.publish(topic, b"\x00\xffpayload", key=b"k1",
                                    headers={"content-type": "text/plain"})
            assert isinstance(mid, str) and mid
            assert bus.outstanding == 0
            async with bus.subscribe(topic, group) as sub:
                m = await sub.receive(30)
                assert isinstance(m, msgbus.Message)
                assert (m.id, m.payload, m.key) == (mid, b"\x00\xffpayload", b"k1")
                assert m.headers["content-type"] == "text/plain"
                assert m.attempt == 1 and m.topic == topic and m.group == group
                m.ack()
                assert m.settled
                assert await sub.receive(0.3) is None
    run(main())


def test_async_for_and_flush(url, topic):
    """publish_nowait many, await flush: every future resolved with its id;
    async for yields each exactly once and ends when the subscription
    closes."""
    group = unique("g")
    n = 200

    async def main():
        async with aio.Bus(url) as bus:
            await bus.declare(topic, group)
            futs = [bus.publish_nowait(topic, b"m%d" % i) for i in range(n)]
            await bus.flush(60)
            assert all(f.done() for f in futs), "flush returned before every confirm"
            ids = [f.result() for f in futs]
            assert len(set(ids)) == n
            assert bus.outstanding == 0
            got = []
            async with bus.subscribe(topic, group) as sub:
                async def consume():
                    async for m in sub:
                        got.append(m.id)
                        m.ack()
                        if len(got) == n:
                            asyncio.get_running_loop().call_soon(
                                asyncio.ensure_future, sub.close())
                    return "ended"
                assert await asyncio.wait_for(consume(), 60) == "ended"
            print(f"\nFIGURE aio async-for {bus.backend}: {len(got)} of {n}")
            assert sorted(got) == sorted(ids)
    run(main())


def test_gathered_publishes(url, topic):
    """Concurrent awaited publishes all resolve (they share the confirm
    round trips)."""
    async def main():
        async with aio.Bus(url) as bus:
            await bus.declare(topic, unique("g"))  # RabbitMQ fails a message no queue took
            ids = await asyncio.gather(*(bus.publish(topic, b"x") for _ in range(100)))
            assert len(set(ids)) == 100
            assert bus.outstanding == 0
    run(main())


def test_cancelled_receives_lose_nothing(url, topic):
    """Receivers are cancelled and time out at random while messages
    arrive; in the end every message was received exactly once."""
    group = unique("g")
    n = 300
    rnd = random.Random(22)

    async def main():
        async with aio.Bus(url) as bus:
            await bus.declare(topic, group)
            async with bus.subscribe(topic, group) as sub:
                got = collections.Counter()
                cancels = timeouts = 0

                async def produce():
                    for i in range(n):
                        await bus.publish(topic, b"c%d" % i) if i % 50 == 0 else \
                            bus.publish_nowait(topic, b"c%d" % i)
                        # a trickle, so that receivers wait and get cancelled
                        await asyncio.sleep(rnd.choice([0, 0.001, 0.003]))
                    await bus.flush(60)

                producer = asyncio.ensure_future(produce())
                deadline = time.monotonic() + 60
                while sum(got.values()) < n and time.monotonic() < deadline:
                    t = asyncio.ensure_future(sub.receive(rnd.choice([None, 0.001, 0.05])))
                    await asyncio.sleep(rnd.choice([0, 0, 0.0005, 0.001]))
                    if not t.done() and rnd.random() < 0.6:
                        t.cancel()
                    try:
                        m = await t
                    except asyncio.CancelledError:
                        cancels += 1
                        continue
                    if m is None:
                        timeouts += 1
                        continue
                    got[m.payload] += 1
                    m.ack()
                await producer
                print(f"\nFIGURE aio cancel {bus.backend}: {sum(got.values())} received, "
                      f"{len(got)} distinct of {n}, {cancels} cancelled, {timeouts} timed out")
                assert cancels > 0
                assert len(got) == n, f"{n - len(got)} messages never received"
                assert max(got.values()) == 1, "a message was received twice"
                assert await sub.receive(0.5) is None
    run(main())


def test_cancel_after_hand_over_gives_the_message_back(mem_url, topic):
    """The race itself, made certain: the reader hands a message to a
    waiting receive, and that task is cancelled before it runs again. The
    message goes back to the front of the buffer and the next receive
    gets it."""
    group = unique("g")

    async def main():
        async with aio.Bus(mem_url) as bus:
            await bus.declare(topic, group)
            async with bus.subscribe(topic, group) as sub:
                t = asyncio.ensure_future(sub.receive())
                await asyncio.sleep(0)  # t is waiting now
                d = bus.sync.publish(topic, b"raced")
                while not d.done():  # the confirm; the message is in the C queue
                    bus.sync.poll(0.05)
                bus._on_readable()  # what the loop does when the fd turns readable
                t.cancel()  # before t runs: it has the message in hand
                with pytest.raises(asyncio.CancelledError):
                    await t
                assert sub.buffered == 1
                m = await sub.receive(1)
                assert m is not None and m.payload == b"raced" and m.attempt == 1
                m.ack()
    run(main())


def test_many_concurrent_receivers(url, topic):
    """Twenty tasks receive from one subscription: each message goes to
    exactly one of them, and the work is spread."""
    group = unique("g")
    n, tasks = 400, 20

    async def main():
        async with aio.Bus(url) as bus:
            await bus.declare(topic, group)
            async with bus.subscribe(topic, group) as sub:
                got = []
                per = collections.Counter()
                done = asyncio.Event()

                async def worker(w):
                    while not done.is_set():
                        m = await sub.receive(0.2)
                        if m is None:
                            continue
                        got.append(m.id)
                        per[w] += 1
                        m.ack()
                        await asyncio.sleep(0)  # let the others take a turn
                        if len(got) >= n:
                            done.set()
                ws = [asyncio.ensure_future(worker(w)) for w in range(tasks)]
                await asyncio.sleep(0.05)  # everyone is waiting
                futs = [bus.publish_nowait(topic, b"w%d" % i) for i in range(n)]
                await bus.flush(60)
                ids = [f.result() for f in futs]
                try:
                    await asyncio.wait_for(done.wait(), 60)
                finally:
                    done.set()
                    await asyncio.gather(*ws)
                print(f"\nFIGURE aio receivers {bus.backend}: {len(got)} of {n} over "
                      f"{len(per)} tasks (max {max(per.values())} per task)")
                assert sorted(got) == sorted(ids)
                assert len(per) > 1
    run(main())


def test_buffer_full_pauses_and_nothing_is_lost(url, topic):
    """With nobody receiving, a subscription holds at most `buffer`
    messages (the rest wait in the broker/C, paused); receiving then gets
    every one, once."""
    group = unique("g")
    n = 120

    async def main():
        async with aio.Bus(url) as bus:
            await bus.declare(topic, group)
            async with bus.subscribe(topic, group, buffer=10) as sub:
                futs = [bus.publish_nowait(topic, b"b%d" % i) for i in range(n)]
                await bus.flush(60)
                ids = {f.result() for f in futs}
                full = 0
                for _ in range(40):
                    await asyncio.sleep(0.05)
                    assert sub.buffered <= 10
                    full = max(full, sub.buffered)
                assert full == 10, f"the buffer never filled ({full})"
                assert sub.sync.paused, "a full buffer with more waiting did not pause"
                got = [m.id for m in await receive_n(sub, n, 60)]
                for _ in range(2):
                    assert await sub.receive(0.3) is None
                assert len(got) == n, f"received {len(got)} of {n}"
                assert set(got) == ids
                assert not sub.sync.paused
    run(main())


def test_close_wakes_receivers_and_redelivers_buffered(mem_url, topic):
    """Closing a subscription fails its waiting receivers with ClosedError
    (async for ends); messages it had buffered unsettled are delivered
    again to the next member."""
    group = unique("g")

    async def main():
        async with aio.Bus(mem_url) as bus:
            await bus.declare(topic, group)
            sub = await bus.subscribe(topic, group)
            waiting = asyncio.ensure_future(sub.receive())
            await asyncio.sleep(0.01)
            await sub.close()
            with pytest.raises(msgbus.ClosedError):
                await waiting
            with pytest.raises(msgbus.ClosedError):
                await sub.receive(0)
            assert [m async for m in sub] == []

            # buffered, never handed out, then closed: redelivered
            sub = await bus.subscribe(topic, group)
            for i in range(5):
                await bus.publish(topic, b"r%d" % i)
            for _ in range(50):
                await asyncio.sleep(0.01)
                if sub.buffered == 5:
                    break
            assert sub.buffered == 5
            await sub.close()
            async with bus.subscribe(topic, group) as again:
                got = await receive_n(again, 5, 10)
                assert sorted(m.payload for m in got) == [b"r%d" % i for i in range(5)]
                for m in got:
                    m.ack()
    run(main())


def test_bus_close_resolves_publishes_and_refuses_later_calls(mem_url, topic):
    async def main():
        bus = await aio.Bus(mem_url)
        await bus.declare(topic)
        futs = [bus.publish_nowait(topic, b"x") for _ in range(10)]
        sub = await bus.subscribe(topic)
        waiting = asyncio.ensure_future(sub.receive())
        await asyncio.sleep(0)
        await bus.close()
        await bus.close()  # idempotent
        for f in futs:
            await asyncio.wait_for(f, 5)  # confirmed or failed, never left pending
        with pytest.raises(msgbus.ClosedError):
            await waiting
        with pytest.raises(msgbus.ClosedError):
            await bus.publish(topic, b"late")
        with pytest.raises(msgbus.ClosedError):
            bus.subscribe(topic)
        assert bus.closed
    run(main())


def test_no_thread_per_subscription(mem_url, topic):
    """Subscriptions and waiting receivers add no threads: one reader on the
    bus's descriptor serves them all."""
    async def main():
        async with aio.Bus(mem_url) as bus:
            await bus.declare(topic)
            first = await bus.subscribe(topic)  # warms the executor up

            def threads() -> int:
                # the loop's default executor may add a worker under load
                # (its threads are named asyncio_N); any other is msgbus's
                return sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_"))
            before = threads()
            subs = [await bus.subscribe(topic) for _ in range(10)]
            waits = [asyncio.ensure_future(s.receive(5)) for s in subs]
            await asyncio.sleep(0.05)
            during = threads()
            await bus.publish(topic, b"all")
            got = await asyncio.gather(*waits)
            assert all(m is not None and m.payload == b"all" for m in got)
            assert during <= before, f"{during - before} threads more with 10 subscriptions"
            for s in subs + [first]:
                await s.close()
    run(main())


def test_errors_are_the_binding_errors(mem_url, topic):
    async def main():
        with pytest.raises(msgbus.ConfigError):
            await aio.Bus("nosuch://x").open()
        async with aio.Bus(mem_url) as bus:
            with pytest.raises(msgbus.InvalidError):
                await bus.publish("bad topic\n", b"x")
            with pytest.raises(msgbus.InvalidTypeError):
                bus.subscribe(topic, buffer="many")
            with pytest.raises(msgbus.InvalidTypeError):
                await bus.flush("soon")
            async with bus.subscribe(topic) as sub:
                assert await sub.receive(0) is None
    run(main())


def test_outbox_and_inbox_from_async_code(url, topic, tmp_path):
    """The pattern of docs/python.md ("Outbox and inbox from async code"):
    one executor thread owns the sqlite3 connection; outbox.put and
    Inbox.handle run there; the C relay publishes into the aio bus; each
    message is applied once, a duplicate is absorbed."""
    import concurrent.futures
    import sqlite3
    from msgbus import outbox
    from msgbus.inbox import Inbox, Outcome
    group = unique("g")
    path = str(tmp_path / "app.db")
    n = 20

    async def main():
        loop = asyncio.get_running_loop()
        db_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        db = await loop.run_in_executor(db_thread, sqlite3.connect, path)

        def setup():
            db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY)")
            db.execute("CREATE TABLE ledger (order_id TEXT PRIMARY KEY)")
            outbox.create_table(db)
            db.commit()
            return Inbox(db, "billing")
        inbox = await loop.run_in_executor(db_thread, setup)

        def place_order(order_id):
            with db:  # one transaction: the order and its message
                db.execute("INSERT INTO orders VALUES (?)", (order_id,))
                return outbox.put(db, topic, order_id.encode(), key=order_id)

        def apply(m):
            db.execute("INSERT INTO ledger VALUES (?)", (m.payload.decode(),))

        async with aio.Bus(url) as bus:
            await bus.declare(topic, group)
            ids = [await loop.run_in_executor(db_thread, place_order, f"o{i}") for i in range(n)]
            relay = outbox.Relay.sqlite(path, bus.sync)
            try:
                sent = 0
                for _ in range(20):
                    sent += await loop.run_in_executor(None, relay.run_once, 500, 30.0)
                    if sent >= n:
                        break
                assert sent == n
            finally:
                relay.close()
            await bus.publish(topic, b"o0", id=ids[0])  # a duplicate of the first
            outcomes = collections.Counter()
            async with bus.subscribe(topic, group) as sub:
                for m in await receive_n(sub, n + 1, 60):
                    outcomes[await loop.run_in_executor(db_thread, inbox.handle, m, apply)] += 1
            rows = await loop.run_in_executor(
                db_thread, lambda: db.execute("SELECT count(*) FROM ledger").fetchone()[0])
            await loop.run_in_executor(db_thread, db.close)
            db_thread.shutdown()
            assert outcomes == {Outcome.APPLIED: n, Outcome.DUPLICATE: 1}, outcomes
            assert rows == n
    run(main())


def test_publish_waits_for_room_when_the_queue_is_full(broker_url, topic):
    """queue_max=3: publish_nowait raises QueueFullError (a confirm takes a
    broker round trip, a publish does not), while 200 gathered publishes
    wait for confirms to make room and all resolve."""
    sep = "&" if "?" in broker_url else "?"

    async def main():
        async with aio.Bus(f"{broker_url}{sep}queue_max=3") as bus:
            await bus.declare(topic, "g")  # RabbitMQ fails a message no queue took
            with pytest.raises(msgbus.QueueFullError, match="queue_max=3"):
                for _ in range(1000):
                    bus.publish_nowait(topic, b"x")
            await bus.flush(30)
            ids = await asyncio.gather(*(bus.publish(topic, b"y") for _ in range(200)))
            assert len(set(ids)) == 200
            assert bus.outstanding == 0
    run(main())


def test_failed_deliveries_fail_their_publishes_and_the_flush(topic):
    """RabbitMQ refuses a message no queue takes: each publish future fails
    with BrokerError and the flush raises DeliveryError counting them, as
    the sync flush does."""
    from conftest import need_url
    url = need_url("amqp")

    async def main():
        async with aio.Bus(url) as bus:
            futs = [bus.publish_nowait(topic, b"nobody") for _ in range(5)]
            with pytest.raises(msgbus.DeliveryError) as ei:
                await bus.flush(30)
            assert ei.value.failed == 5
            for f in futs:
                assert isinstance(f.exception(), msgbus.BrokerError)
            with pytest.raises(msgbus.BrokerError):
                await bus.publish(topic, b"nobody")
            with pytest.raises(msgbus.DeliveryError) as ei:
                await bus.flush(30)
            assert ei.value.failed == 1  # since the previous flush
            await bus.flush(30)
    run(main())


def test_module_docstring_example_runs():
    """What help(msgbus.aio) shows runs as written."""
    import doctest
    res = doctest.testmod(aio)
    assert res.attempted > 0 and res.failed == 0
