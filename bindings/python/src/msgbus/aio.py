"""msgbus for asyncio: the same buses, subscriptions and messages, awaited.

>>> import asyncio, msgbus.aio as aio
>>> async def main():
...     async with aio.Bus("mem://") as bus:
...         await bus.declare("orders", "billing")
...         msg_id = await bus.publish("orders", b"{}", key="order-1")  # the confirm
...         async with bus.subscribe("orders", "billing") as sub:
...             m = await sub.receive(timeout=1)
...             m.ack()
...     return m.id == msg_id
>>> asyncio.run(main())
True

How it works — no thread per subscription, none per bus: the bus's work
descriptor (``msgbus_fd``, readable while delivery reports or received
messages wait) is registered with ``loop.add_reader``. Its callback, on the
loop's thread, serves the delivery reports (``msgbus_poll``; each resolves
the future of an awaited publish) and moves waiting messages of each
subscription into that subscription's buffer, from which they are handed
to waiting receivers in the order they called ``receive``.

What still blocks in C — opening the bus (connecting), subscribing and
declaring (broker round trips), closing (waits for confirms) — runs in the
loop's default executor, so the loop is never stalled by the network.

Cancellation: a message is either still in the C queue, in the
subscription's buffer, or returned by a ``receive`` that completed. A
``receive`` cancelled after its message was handed to it (the task was
cancelled between the hand-over and its next step) puts that message back
at the front of the buffer, for the next receiver; so a cancelled or timed
out ``receive`` never drops a message. Messages still buffered when the
subscription closes are released unsettled: the broker delivers them again.

Backpressure: a subscription buffers at most ``buffer`` messages (default
1000). When the buffer stays full while more wait in C (receivers are not
taking them), the subscription is paused (``msgbus_sub_pause``: the
descriptor stops counting them) and resumed when receivers have taken half
of the buffer.

See docs/python.md, "asyncio".
"""
from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any, Deque, Generator, List, Mapping, Optional

from . import _check, _log
from ._core import Bus as SyncBus
from ._core import Bytes, Delivery, HeaderValue, Message
from ._core import Subscription as SyncSubscription
from .errors import ClosedError, QueueFullError, StateError
from .errors import TimeoutError as MsgbusTimeoutError

__all__ = ["Bus", "Subscription", "DEFAULT_BUFFER"]

DEFAULT_BUFFER = 1000  # messages a subscription holds for its receivers
_PULL = 64  # messages taken from the C queue per msgbus_receive_batch call
# The descriptor "may rarely be readable with nothing to do" (msgbus.h). So
# many wake-ups in a row that serve nothing mean something keeps it readable
# that this module does not drain (e.g. a subscription made on the sync
# bus): stop watching it for a moment instead of spinning the loop.
_IDLE_WAKEUPS = 64
_IDLE_BACKOFF = 0.01  # seconds
# Reader wake-ups in a row that find a subscription's buffer full (and
# nothing taken from it) before it is paused.
_PAUSE_AFTER = 8
_ROOM_RECHECK = 0.05  # seconds a publisher waits for room before trying again


def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


class Bus:
    """A msgbus connection for asyncio code.

    ``async with aio.Bus(url) as bus:`` opens it (``url`` None:
    ``$MSGBUS_URL``; the same URLs and errors as :class:`msgbus.Bus`) and
    closes it at the end; or ``bus = await aio.Bus(url).open()`` and
    ``await bus.close()``. Use it from the event loop it was opened on.
    :attr:`sync` is the underlying :class:`msgbus.Bus`, for its properties
    (``url``, ``backend``, ``state``, ``stats()``, ``capabilities``…);
    do not call its blocking methods from the loop.
    """

    def __init__(self, url: Optional[str] = None):
        _check.text(url, "url", optional=True)
        self._url = url
        self._sync: Optional[SyncBus] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread = 0
        self._fd = -1
        self._reading = False
        self._idle = 0
        self._backoff: Optional[asyncio.TimerHandle] = None
        self._subs: List["Subscription"] = []
        self._flushers: List[asyncio.Future] = []
        self._room: Optional[asyncio.Event] = None  # set when confirms free queue room
        self._closing = False

    # -- opening and closing
    async def open(self) -> "Bus":
        """Opens the bus (in the loop's executor: connecting may take a
        while) and starts watching its descriptor. Returns the bus."""
        if self._closing:
            raise ClosedError("aio.Bus.open: the bus was closed (a Bus opens once)")
        if self._sync is not None:
            raise StateError("aio.Bus.open: the bus is open already")
        loop = _running_loop()
        sync = await loop.run_in_executor(None, SyncBus, self._url)
        self._loop, self._loop_thread = loop, threading.get_ident()
        self._sync = sync
        self._room = asyncio.Event()
        self._fd = sync.fileno()
        self._watch()
        return self

    async def close(self) -> None:
        """Closes the bus: stops watching its descriptor, closes its
        subscriptions (their waiting receivers get :class:`ClosedError`,
        their buffered messages are released unsettled), then closes the
        C bus in the executor — it waits up to ``close_timeout_ms`` for
        outstanding confirms, which still resolve their publishes; the
        rest fail with :class:`ClosedError`. Idempotent."""
        if self._closing:
            return
        self._closing = True
        sync = self._sync
        if sync is None:
            return
        self._unwatch()
        subs = []
        for s in list(self._subs):
            s._shut(ClosedError("the bus was closed"))
            if s._sync is not None:
                subs.append(s._sync)
                s._sync = None
        for f in self._flushers:
            if not f.done():
                f.set_exception(ClosedError("the bus was closed before the flush ended"))
        self._flushers.clear()
        if self._room is not None:
            self._room.set()  # publishers waiting for room see the bus closed
        loop = _running_loop()

        def close_all() -> None:
            for s in subs:
                s.close()
            sync.close()
        await loop.run_in_executor(None, close_all)

    async def __aenter__(self) -> "Bus":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __await__(self) -> Generator[Any, None, "Bus"]:
        return self.open().__await__()

    # -- properties
    @property
    def sync(self) -> SyncBus:
        """The underlying :class:`msgbus.Bus` (:class:`ClosedError` before
        open)."""
        if self._sync is None:
            raise ClosedError("the bus is not open")
        return self._sync

    @property
    def url(self) -> str:
        return self.sync.url

    @property
    def backend(self) -> str:
        return self.sync.backend

    @property
    def outstanding(self) -> int:
        """Published messages still waiting for their confirm."""
        return self.sync.outstanding

    @property
    def closed(self) -> bool:
        return self._closing or self._sync is None

    def _p(self) -> SyncBus:
        if self._closing or self._sync is None:
            raise ClosedError("the bus is closed" if self._closing else "the bus is not open")
        return self._sync

    # -- the descriptor
    def _watch(self) -> None:
        if not self._reading and not self._closing and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _unwatch(self) -> None:
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        if self._reading and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _rewatch(self) -> None:
        self._backoff = None
        self._watch()

    def _on_readable(self) -> None:
        """The descriptor is readable: serve delivery reports, then fill the
        subscriptions' buffers and hand messages to waiting receivers."""
        if self._closing or self._sync is None:
            return
        did = 0
        try:
            served = self._sync.poll(0)
            if served and self._room is not None:
                self._room.set()  # confirms served: a publisher waiting for room retries
            did += served
        except Exception:  # never let one error stop the reader
            _log.logger.exception("msgbus.aio: serving delivery reports failed")
        for s in list(self._subs):
            try:
                did += s._pump()
            except Exception as e:  # one subscription's error is its receivers'
                s._fail(e)
        self._after_poll()
        if did:
            self._idle = 0
            return
        self._idle += 1
        if self._idle >= _IDLE_WAKEUPS and self._loop is not None:
            self._idle = 0
            self._unwatch()
            self._backoff = self._loop.call_later(_IDLE_BACKOFF, self._rewatch)

    def _after_poll(self) -> None:
        if self._flushers and self._sync is not None and self._sync.outstanding == 0:
            fl, self._flushers = self._flushers, []
            for f in fl:
                if not f.done():
                    f.set_result(None)

    # -- publishing
    def publish_nowait(self, topic: str, payload: Bytes, key: Optional[Bytes] = None,
                       headers: Optional[Mapping[str, HeaderValue]] = None, *,
                       id: Optional[str] = None, timestamp: Optional[int] = None,
                       type: Optional[str] = None, source: Optional[str] = None,
                       subject: Optional[str] = None) -> "asyncio.Future[str]":
        """Publishes like :meth:`msgbus.Bus.publish` (same arguments and
        checks, never blocks) and returns an asyncio future that resolves to
        the message id on the broker's confirm, or fails with the
        delivery's error. Raises :class:`QueueFullError` at once when
        ``queue_max`` messages await confirms (:meth:`publish` waits for
        room instead). Cancelling the future only stops waiting: the
        message was handed to the broker."""
        d = self._p().publish(topic, payload, key, headers, id=id, timestamp=timestamp,
                              type=type, source=source, subject=subject)
        return self._future_of(d)

    async def publish(self, topic: str, payload: Bytes, key: Optional[Bytes] = None,
                      headers: Optional[Mapping[str, HeaderValue]] = None, *,
                      id: Optional[str] = None, timestamp: Optional[int] = None,
                      type: Optional[str] = None, source: Optional[str] = None,
                      subject: Optional[str] = None) -> str:
        """Publishes and waits for the broker's confirm; returns the message
        id, or raises the delivery's error (e.g. :class:`TooLargeError`,
        :class:`ClosedError`). While ``queue_max`` messages await confirms
        it waits for room rather than raising :class:`QueueFullError`.
        Many publishes in flight at once (``asyncio.gather``, tasks, or
        :meth:`publish_nowait`) share the confirm round trips; one awaited
        at a time pays a full round trip each."""
        while True:
            try:
                fut = self.publish_nowait(topic, payload, key, headers, id=id,
                                          timestamp=timestamp, type=type, source=source,
                                          subject=subject)
                break
            except QueueFullError:
                # Wait for the reader to serve confirms; but confirms served
                # elsewhere (a flush or relay on another thread) set nothing
                # here, so look again after a short while in any case.
                assert self._room is not None
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), _ROOM_RECHECK)
                except asyncio.TimeoutError:
                    pass
                self._p()  # closed meanwhile: ClosedError
        return await fut

    def _future_of(self, d: Delivery) -> "asyncio.Future[str]":
        loop = self._loop
        assert loop is not None
        fut: "asyncio.Future[str]" = loop.create_future()
        me = self._loop_thread

        def settle(_d: Delivery) -> None:
            if fut.done():  # cancelled by its owner
                return
            exc = _d.exception(0)
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(_d.message_id)

        def done(_d: Delivery) -> None:
            # Served by msgbus_poll on the loop's thread, or by close in the
            # executor: futures are only touched on the loop's thread.
            if threading.get_ident() == me:
                settle(_d)
            else:
                try:
                    loop.call_soon_threadsafe(settle, _d)
                except RuntimeError:  # the loop is closed: nobody awaits it
                    pass
        d.add_done_callback(done)
        return fut

    async def flush(self, timeout: Optional[float] = None) -> None:
        """Waits until every message published so far is confirmed or failed
        (their publishes resolved). Raises :class:`DeliveryError`
        (``.failed`` = how many failed since the previous flush, as
        :meth:`msgbus.Bus.flush`) or :class:`msgbus.TimeoutError` when
        `timeout` seconds (None: no limit) pass first."""
        ms = _check.timeout_ms(timeout)
        bus = self._p()
        loop = _running_loop()
        deadline = None if ms < 0 else loop.time() + ms / 1000.0
        while bus.outstanding > 0:
            # The reader resolves `fut` when it served the last confirm; but
            # confirms served on another thread (a relay's run_once, a sync
            # flush) wake no reader, so look again every _ROOM_RECHECK.
            left = _ROOM_RECHECK if deadline is None else min(_ROOM_RECHECK,
                                                              deadline - loop.time())
            if left <= 0:
                raise MsgbusTimeoutError(
                    f"flush: {bus.outstanding} messages still await their confirm "
                    f"after {timeout} s")
            fut: asyncio.Future = loop.create_future()
            self._flushers.append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                pass
            finally:
                if fut in self._flushers:
                    self._flushers.remove(fut)
            bus = self._p()  # closed meanwhile: ClosedError
        # Nothing outstanding: the C flush returns at once, serves what is
        # left and reports the failures since the previous flush.
        self._p().flush(0)
        self._after_poll()

    async def declare(self, topic: str, group: Optional[str] = None) -> None:
        """:meth:`msgbus.Bus.declare`, run in the executor."""
        _check.text(topic, "topic")
        _check.text(group, "group", optional=True)
        bus = self._p()
        await _running_loop().run_in_executor(None, bus.declare, topic, group)

    # -- subscribing
    def subscribe(self, topic: str, group: Optional[str] = None,
                  options: Optional[Mapping[str, Any]] = None, *,
                  buffer: int = DEFAULT_BUFFER) -> "Subscription":
        """A subscription to `topic` as a member of `group` (None: a
        broadcast subscriber), with per-subscription `options` as
        :meth:`msgbus.Bus.subscribe`. Use it as ``async with
        bus.subscribe(...) as sub`` or ``sub = await bus.subscribe(...)``;
        it subscribes then (in the executor: a broker round trip).
        `buffer`: how many messages it holds for its receivers before it
        pauses (see the module's text)."""
        _check.text(topic, "topic")
        _check.text(group, "group", optional=True)
        n = _check.size(buffer, "buffer", lo=1)
        self._p()
        return Subscription(self, topic, group, options, n)

    def __repr__(self) -> str:
        if self._sync is None:
            return "<aio.Bus not open>"
        if self._closing:
            return "<aio.Bus closed>"
        return f"<aio.Bus {self._sync.url}>"


class Subscription:
    """A subscription for asyncio code, made by :meth:`Bus.subscribe`.

    ``await sub.receive(timeout)`` returns the next :class:`msgbus.Message`
    (None when `timeout` seconds pass first); ``async for msg in sub``
    yields messages until the subscription or its bus closes. The messages
    are the normal ones: :meth:`~msgbus.Message.ack`, ``nack`` and
    ``dead_letter`` never block. Any number of tasks may receive from one
    subscription at once; each message goes to one of them, in the order
    they started waiting.
    """

    def __init__(self, bus: Bus, topic: str, group: Optional[str],
                 options: Optional[Mapping[str, Any]], buffer: int):
        self._bus = bus
        self.topic = topic
        self.group = group
        self._options = options
        self._max = buffer
        self._sync: Optional[SyncSubscription] = None
        self._buf: Deque[Message] = collections.deque()
        self._waiters: Deque[asyncio.Future] = collections.deque()
        self._paused = False  # paused by us: the buffer stayed full
        self._full_wakeups = 0  # reader wake-ups in a row that found the buffer full
        self._closed: Optional[BaseException] = None

    # -- opening and closing
    async def open(self) -> "Subscription":
        """Subscribes (in the executor). Returns the subscription."""
        if self._closed is not None:
            raise ClosedError(f"subscription to '{self.topic}' is closed")
        if self._sync is not None:
            raise StateError(f"subscription to '{self.topic}' is open already")
        bus = self._bus._p()
        sync = await _running_loop().run_in_executor(
            None, bus.subscribe, self.topic, self.group, self._options)
        if self._bus.closed:  # closed while subscribing
            sync.close()
            raise ClosedError("the bus was closed")
        self._sync = sync
        self._bus._subs.append(self)
        self._pump()  # messages may be there already
        return self

    def __await__(self) -> Generator[Any, None, "Subscription"]:
        return self.open().__await__()

    async def __aenter__(self) -> "Subscription":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _shut(self, why: BaseException) -> None:
        """Ends it on the Python side: receivers get `why`, buffered
        messages are released unsettled (the broker delivers them again)."""
        if self._closed is None:
            self._closed = why
        while self._waiters:
            f = self._waiters.popleft()
            if not f.done():
                f.set_exception(type(why)(*why.args))
        while self._buf:
            m = self._buf.popleft()
            release = getattr(m, "_release", None)
            if release is not None:
                release()
        try:
            self._bus._subs.remove(self)
        except ValueError:
            pass

    async def close(self) -> None:
        """Closes the subscription: waiting receivers get
        :class:`ClosedError` (``async for`` ends), buffered messages are
        released unsettled and the C subscription is closed in the executor
        (its unsettled messages go to other members). Messages already
        received keep their fields; settling them raises
        :class:`ClosedError`. Idempotent."""
        if self._closed is not None and self._sync is None:
            return
        self._shut(ClosedError(f"subscription to '{self.topic}' is closed"))
        sync, self._sync = self._sync, None
        if sync is not None:
            await _running_loop().run_in_executor(None, sync.close)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def sync(self) -> SyncSubscription:
        """The underlying :class:`msgbus.Subscription` (for ``state``; do not
        receive from it: the bus's reader does)."""
        if self._sync is None:
            raise ClosedError(f"subscription to '{self.topic}' is not open")
        return self._sync

    @property
    def buffered(self) -> int:
        """Messages taken from the C queue and waiting for a receiver."""
        return len(self._buf)

    # -- moving messages
    def _pump(self) -> int:
        """Takes what waits in the C queue into the buffer (up to its size;
        pauses when full) and hands buffered messages to waiting receivers.
        Returns how many were taken. Loop thread only."""
        sync = self._sync
        if sync is None or self._closed is not None:
            return 0
        taken = 0
        while not self._paused:
            room = self._max - len(self._buf)
            if room <= 0:
                # Full, and C may hold more, which keeps the descriptor
                # readable. While receivers are taking messages the next
                # wake-up finds room again; when several in a row find none,
                # pause, so the loop does not spin on the descriptor until
                # receivers have made room. (Not at once: a pause costs
                # Kafka its prefetched messages, refetched at resume.)
                self._full_wakeups += 1
                if self._full_wakeups >= _PAUSE_AFTER:
                    sync.pause()
                    self._paused = True
                break
            self._full_wakeups = 0
            got = sync.receive_batch(min(room, _PULL), 0)
            if not got:
                break
            taken += len(got)
            self._buf.extend(got)
            self._hand()
            if len(got) < min(room, _PULL):
                break
        self._hand()
        return taken

    def _fail(self, e: BaseException) -> None:
        """Taking messages from C failed (found by the reader): the waiting
        receivers get the error, as a sync receive would; the next receive
        tries again. A subscription closed behind our back ends here."""
        if isinstance(e, ClosedError):
            self._shut(e)
            return
        if not self._waiters:
            _log.logger.error("msgbus.aio: receiving on '%s' failed: %s", self.topic, e)
        while self._waiters:
            f = self._waiters.popleft()
            if not f.done():
                f.set_exception(e)

    def _hand(self) -> None:
        while self._buf and self._waiters:
            f = self._waiters.popleft()
            if f.done():  # timed out or cancelled: skip it
                continue
            f.set_result(self._buf.popleft())
        self._maybe_resume()

    def _maybe_resume(self) -> None:
        if self._paused and self._sync is not None and len(self._buf) <= self._max // 2:
            self._sync.resume()
            self._paused = False  # the descriptor wakes the reader if C holds more

    def _give_back(self, m: Message) -> None:
        """A message handed to a receiver that was cancelled before it
        could return it: first in line again."""
        if self._closed is not None:
            release = getattr(m, "_release", None)
            if release is not None:
                release()
            return
        self._buf.appendleft(m)
        self._hand()

    async def receive(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message, waiting up to `timeout` seconds (None: forever,
        0: only what is there); None when none arrived. Cancelling it (or
        its timeout) loses no message. :class:`ClosedError` after close."""
        ms = _check.timeout_ms(timeout)
        if self._closed is not None:
            raise ClosedError(f"subscription to '{self.topic}' is closed")
        if self._sync is None:
            raise ClosedError(f"subscription to '{self.topic}' is not open")
        if not self._waiters:
            if not self._buf:
                self._pump()
            if self._buf:
                m = self._buf.popleft()
                self._maybe_resume()
                return m
        if ms == 0:
            return None
        loop = _running_loop()
        fut: "asyncio.Future[Optional[Message]]" = loop.create_future()
        self._waiters.append(fut)
        timer = None
        if ms > 0:
            timer = loop.call_later(ms / 1000.0, _expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            # The hand-over may have happened just before the cancel reached
            # this task: the message is not lost, it is first in line again.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                m = fut.result()
                if m is not None:
                    self._give_back(m)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if not fut.done():
                fut.cancel()
            try:
                self._waiters.remove(fut)
            except ValueError:
                pass

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Message:
        try:
            m = await self.receive(None)
        except ClosedError:
            raise StopAsyncIteration from None
        assert m is not None
        return m

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("open" if self._sync is not None else "not open")
        return f"<aio.Subscription {self.topic} group={self.group} {state}>"


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
