"""Change notices for the server-sent-event streams: any thread says "a session changed", the streams on the event loop wake.

Sessions change under the manager's threading lock, on the ingest thread, the compute
worker and the REST handlers' worker threads; an event stream is a coroutine on the
asyncio loop. ``ChangeFeed.notify`` never blocks and never touches the loop directly: it
sets each subscriber's ``asyncio.Event`` through ``loop.call_soon_threadsafe``.
``ChangeFeed.close`` (shutdown) wakes every stream for the last time and ends it.

``close_on_signals`` chains SIGINT/SIGTERM so that the feed closes when the server is
told to stop: uvicorn waits for open responses to finish before it runs the
application's shutdown, so a stream that waited for the lifespan's end would hold the
shutdown up (forever without ``timeout_graceful_shutdown``, 5 s with ``ptychoscan serve``).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Subscription:
    """One stream's wake-up: ``wait`` returns when the feed was notified or closed, or after a timeout."""

    def __init__(self, feed: ChangeFeed, loop: asyncio.AbstractEventLoop) -> None:
        self.feed = feed
        self.loop = loop
        self.event = asyncio.Event()

    def wake(self) -> None:
        """Set the event from any thread (a closed loop is ignored: its stream is gone)."""
        try:
            self.loop.call_soon_threadsafe(self.event.set)
        except RuntimeError:
            pass

    async def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for a notice; True if one came (or the feed closed), False on timeout."""
        try:
            await asyncio.wait_for(self.event.wait(), timeout_s)
        except TimeoutError:
            return False
        self.event.clear()
        return True

    def close(self) -> None:
        self.feed.unsubscribe(self)


class ChangeFeed:
    """Subscribers (event streams) woken when any session changes; closed once, at shutdown."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a signal handler (close_on_signals) may run while this thread holds it
        self._subscribers: set[Subscription] = set()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def subscribe(self) -> Subscription:
        """A new subscription on the running loop (call from a coroutine)."""
        sub = Subscription(self, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
        if self.closed:
            sub.wake()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    def notify(self, *_: object) -> None:
        """Something changed: wake every subscriber (any thread; never blocks on the loop; arguments are ignored)."""
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            sub.wake()

    def close(self) -> None:
        """The service is stopping: every stream ends after its next wake-up (now)."""
        self._closed.set()
        self.notify()


def close_on_signals(feed: ChangeFeed) -> Callable[[], None]:
    """Close ``feed`` on SIGINT/SIGTERM before the handler installed so far runs; returns a function that undoes it.

    Only in the main thread (where Python allows handlers, and where ``uvicorn.run``
    serves); elsewhere (a server in a test's thread) it does nothing. A handler that is not
    a Python callable (SIG_DFL, SIG_IGN) is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    installed = {}
    for sig in SIGNALS:
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum, frame, previous=previous):
            feed.close()
            previous(signum, frame)

        signal.signal(sig, handler)
        installed[sig] = (handler, previous)

    def undo() -> None:
        for sig, (handler, previous) in installed.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, previous)

    return undo
