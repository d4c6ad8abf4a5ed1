"""Handler threads: the event loop hands them blocking calls and awaits the results."""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from typing import Any, Callable

_STOP = None   # what a thread takes from the queue as its cue to end


class HandlerPool:
    """`size` threads taking calls from one queue, in the order they came.

    What asyncio's run_in_executor does with a ThreadPoolExecutor, for less CPU a call on
    the event loop's side: no concurrent.futures.Future (a Condition each), no chaining of
    two futures; the loop's future is settled by call_soon_threadsafe.  The threads start
    with the first call and end when the pool is closed or collected."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        weakref.finalize(self, _stop_all, self._queue, self._threads)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on one of the pool's threads; its result or its exception."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, fn, args))
        if not self._threads:
            self._start()
        return await future

    def close(self) -> None:
        """Let every thread end once the calls queued before this are done; a later call
        starts the threads again (an app's shutdown is not always its end: test clients
        run its lifespan once per client)."""
        with self._lock:
            _stop_all(self._queue, self._threads)
            self._threads.clear()

    def _start(self) -> None:
        # All at once, on the first call: an idle thread costs nothing while it waits on
        # the queue.  They hold no reference to the pool, so that collecting it ends them.
        with self._lock:
            if self._threads:
                return
            threads = [threading.Thread(target=_work, args=(self._queue,), daemon=True,
                                        name=f"{self.name}-{i}") for i in range(self.size)]
            for t in threads:
                t.start()
            self._threads.extend(threads)


def _work(calls: queue.SimpleQueue) -> None:
    while True:
        item = calls.get()
        if item is _STOP:
            return
        loop, future, fn, args = item
        try:
            result = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            _settle(loop, future, None, exc)
        else:
            _settle(loop, future, result, None)
        del item, future, args


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, result: Any,
            exc: BaseException | None) -> None:
    try:
        loop.call_soon_threadsafe(_set, future, result, exc)
    except RuntimeError:      # the loop was closed meanwhile: nobody awaits the result
        pass


def _set(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():         # the request was cancelled (its client went away)
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _stop_all(calls: queue.SimpleQueue, threads: list) -> None:
    for _ in threads:
        calls.put(_STOP)
