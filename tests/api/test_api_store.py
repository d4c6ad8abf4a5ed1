"""The store on its own: migrations, revision feed, snapshot, on SQLite and PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import DBAPIError

import sbnet.store.db as db
from sbnet.store import Store


def _exercise(url: str) -> None:
    stores = [Store(url), Store(url)]  # a second start finds the schema current
    s = stores[0]
    with s.write() as tx:
        tx.insert("network", {"id": "n1", "name": "a"}, "p1")
        tx.insert("network", {"id": "n2", "name": "b"}, "p2")
    with s.write() as tx:
        body = tx.get("network", "n1")
        body["name"] = "a2"
        tx.update("network", body)
        tx.delete("network", tx.get("network", "n2"))
    changes = stores[1].changes_since(0)
    assert [(c["revision"], c["id"], c["op"]) for c in changes] == [
        (1, "n1", "create"), (2, "n2", "create"), (3, "n1", "update"), (4, "n2", "delete")]
    assert stores[1].changes_since(2, limit=1)[0]["revision"] == 3
    snap = s.snapshot()
    assert snap["revision"] == 4 and [n["name"] for n in snap["network"]] == ["a2"]
    assert snap["network"][0]["revision_number"] == 2

    def bump(i: int) -> None:
        with s.write() as tx:
            tx.insert("port", {"id": f"p{i}"}, "p1")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(bump, range(40)))
    revs = [c["revision"] for c in s.changes_since(4)]
    assert revs == list(range(5, 45))  # ordered, gap-free, no revision handed out twice
    for st in stores:
        st.dispose()


def test_store_sqlite(tmp_path: pytest.TempPathFactory) -> None:
    _exercise(f"sqlite:///{tmp_path}/s.db")


def test_store_postgres(pg_db: str) -> None:
    _exercise(pg_db)


def test_documents_read_back_exactly_as_written(pg_db: str) -> None:
    """Read back by orjson where orjson wrote them, by json where it could not (integers
    beyond 64 bits, which orjson would read as floats) or a string holds '": '."""
    s = Store(pg_db)
    docs = [{"id": "big", "n": 2 ** 70 + 1, "m": -(2 ** 64) - 3, "l": [2 ** 65 + 7]},
            {"id": "colon", "name": 'a": b', "n": 2 ** 64 - 1, "f": 0.1},
            {"id": "plain", "n": -(2 ** 63), "x": [None, True, {"u": "\u00e9\u2603"}]}]
    with s.write() as tx:
        for d in docs:
            tx.insert("network", dict(d), "p1")
    with s.read() as tx:
        for d in docs:
            got = tx.get("network", d["id"])
            assert {k: got[k] for k in d} == d
            assert repr({k: got[k] for k in d}) == repr(d)   # 2 ** 70 + 1, not 1.18e+21
    s.dispose()


def test_a_failed_scoped_write_leaves_its_connection_usable(pg_db: str) -> None:
    """A scoped write on PostgreSQL sends BEGIN, COMMIT and its statements' PREPAREs itself:
    one failing in the database (here a duplicate id) or in Python rolls back, and the next
    write on the same connection (the pool's only one) runs, its statements prepared again."""
    s = Store(pg_db, pool_size=1)
    with s.write(["k"]) as tx:
        tx.insert("thing", {"id": "a"}, "p")
    with pytest.raises(DBAPIError):
        with s.write(["k"]) as tx:
            tx.insert("thing", {"id": "a"}, "p")
            tx.list("thing")     # the insert goes with this statement, and fails
    with pytest.raises(RuntimeError):
        with s.write(["k"]) as tx:
            tx.insert("thing", {"id": "c"}, "p")
            tx.list("thing")
            raise RuntimeError("boom")
    with s.write(["k"]) as tx:
        tx.insert("thing", {"id": "b"}, "p")
        assert [x["id"] for x in tx.list("thing")] == ["a", "b"]
    assert [(c["revision"], c["id"]) for c in s.changes_since(0)] == [(1, "a"), (2, "b")]
    s.dispose()


def test_failed_transaction_leaves_no_trace(tmp_path: pytest.TempPathFactory) -> None:
    s = Store(f"sqlite:///{tmp_path}/f.db")
    with pytest.raises(RuntimeError):
        with s.write() as tx:
            tx.insert("network", {"id": "n1"}, "p")
            raise RuntimeError("boom")
    assert s.current_revision() == 0 and s.changes_since(0) == [] and s.snapshot() == {"revision": 0}


def test_long_poll_sees_a_commit_from_another_thread(tmp_path: pytest.TempPathFactory) -> None:
    import threading
    import time

    s = Store(f"sqlite:///{tmp_path}/w.db")
    assert s.changes_since(0, wait=0.2) == []

    def later() -> None:
        time.sleep(0.3)
        with s.write() as tx:
            tx.insert("network", {"id": "late"}, "p")

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    got = s.changes_since(0, wait=10)
    assert [c["id"] for c in got] == ["late"] and time.monotonic() - t0 < 5


def test_migration_0004_down_and_up_keeps_the_feed_gapless(pg_db: str) -> None:
    """Revisions numbered at commit by 0002's trigger and by 0004's per-change one follow on
    from each other across a downgrade and an upgrade, with the data kept."""
    store = Store(pg_db)

    def scoped(ident: str, n: int) -> None:
        with store.write([f"network:{ident}"]) as tx:
            for i in range(n):
                tx.insert("thing", {"id": f"{ident}-{i}"}, "p")

    def migrate(to: str) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if to == "0003" else command.upgrade)(cfg, to)

    scoped("a", 2)
    migrate("0003")
    scoped("b", 3)
    migrate("head")
    scoped("c", 2)
    rows = store.changes_since(0)
    assert [r["revision"] for r in rows] == list(range(1, 8))
    assert [r["id"] for r in rows] == ["a-0", "a-1", "b-0", "b-1", "b-2", "c-0", "c-1"]
    store.dispose()
