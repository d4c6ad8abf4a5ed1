"""The API's handler threads: results and errors come back to the awaiting request, calls run in order, closing ends the threads."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import pytest

from sbnet.api.handlers import HandlerPool


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name + "-")]


def _all_ended(name: str) -> bool:
    deadline = time.time() + 5
    while _threads(name) and time.time() < deadline:
        time.sleep(0.01)
    return not _threads(name)


def test_results_errors_and_order() -> None:
    pool = HandlerPool(3, "test-handlers-a")
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        if i == 7:
            raise KeyError("seven")
        time.sleep(0.001)
        return i * i

    async def main() -> list:
        return await asyncio.gather(*(pool.run(job, i) for i in range(40)),
                                    return_exceptions=True)
    try:
        out = asyncio.run(main())
        assert [x for i, x in enumerate(out) if i != 7] == [i * i for i in range(40) if i != 7]
        assert isinstance(out[7], KeyError)
        # Taken from one queue in the order they came (3 threads: at most 2 ahead of turn).
        assert all(abs(i - pos) <= 2 for pos, i in enumerate(started))
        assert len(_threads("test-handlers-a")) == 3
    finally:
        pool.close()
    assert _all_ended("test-handlers-a")


def test_a_cancelled_request_leaves_the_pool_working() -> None:
    pool = HandlerPool(1, "test-handlers-b")
    gate = threading.Event()

    async def main() -> int:
        slow = asyncio.ensure_future(pool.run(gate.wait, 5))
        await asyncio.sleep(0.01)
        slow.cancel()            # the client went away; the call still ends on its thread
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await pool.run(lambda: 42)
    try:
        assert asyncio.run(main()) == 42
    finally:
        pool.close()


def test_a_collected_pool_ends_its_threads() -> None:
    pool = HandlerPool(2, "test-handlers-c")
    assert asyncio.run(pool.run(lambda: "ok")) == "ok"
    assert len(_threads("test-handlers-c")) == 2
    del pool
    gc.collect()
    assert _all_ended("test-handlers-c")


def test_a_call_after_closing_starts_the_threads_again() -> None:
    pool = HandlerPool(2, "test-handlers-d")
    try:
        assert asyncio.run(pool.run(lambda: 1)) == 1
        pool.close()
        assert asyncio.run(pool.run(lambda: 2)) == 2
    finally:
        pool.close()
