"""Scoped write locks on PostgreSQL: disjoint writers overlap, whole-store ones wait, the feed stays gapless."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from apihelpers import start_server, stop_server
from sbnet.store import Store


def _hold(store: Store, keys: list[str] | None, started: threading.Event,
          release: threading.Event, ident: str) -> None:
    with store.write(keys) as tx:
        tx.insert("thing", {"id": ident}, "p")
        tx.list("thing")   # a scoped write's locks go with its first statement: held from here
        started.set()
        release.wait(30)


def test_disjoint_keys_overlap_and_whole_store_writes_wait(pg_db: str) -> None:
    store = Store(pg_db)
    started, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold, args=(store, ["network:a"], started, release, "held"))
    holder.start()
    try:
        assert started.wait(30)
        # Another key: it commits while the first is still open.
        with store.write(["network:b"]) as tx:
            tx.insert("thing", {"id": "other-key"}, "p")
        # The same key, and a whole-store write: both wait for the holder's commit.
        done: list[str] = []

        def write(keys: list[str] | None, ident: str) -> None:
            with store.write(keys) as tx:
                tx.insert("thing", {"id": ident}, "p")
            done.append(ident)
        waiters = [threading.Thread(target=write, args=(["network:a"], "same-key")),
                   threading.Thread(target=write, args=(None, "whole-store"))]
        for w in waiters:
            w.start()
        time.sleep(1.0)
        assert done == []
        release.set()
        holder.join(30)
        for w in waiters:
            w.join(30)
        assert sorted(done) == ["same-key", "whole-store"]
    finally:
        release.set()
        holder.join(30)
    # Revisions follow commit order: the writer that committed first has the lower one.
    order = [r["id"] for r in store.changes_since(0)]
    assert order[0] == "other-key" and order[1] == "held"
    assert [r["revision"] for r in store.changes_since(0)] == [1, 2, 3, 4]
    store.dispose()


def test_feed_is_gapless_and_ordered_under_concurrent_scoped_writes(pg_db: str) -> None:
    """Many scoped writers of several changes each, a reader following the feed meanwhile:
    every revision appears exactly once, a transaction's changes are consecutive and in the
    order it made them, and the reader never sees a later revision before an earlier one."""
    store = Store(pg_db)
    stop, seen = threading.Event(), []

    def follow() -> None:
        last = 0
        while not stop.is_set() or last < store.current_revision():
            rows = store.changes_since(last, wait=0.05)
            seen.extend(r["revision"] for r in rows)
            last = rows[-1]["revision"] if rows else last

    def write(i: int) -> None:
        with store.write([f"network:{i % 7}"]) as tx:
            for j in range(3):
                tx.insert("thing", {"id": f"{i}-{j}"}, "p")

    reader = threading.Thread(target=follow)
    reader.start()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(write, range(150)))
    with store.write() as tx:  # a whole-store write after them numbers on from the last
        tx.insert("thing", {"id": "last-0"}, "p")
        assert tx.revision == 451
    stop.set()
    reader.join(60)
    rows = store.changes_since(0)
    assert [r["revision"] for r in rows] == list(range(1, 452))
    assert seen == list(range(1, 452))
    by_tx: dict[str, list[tuple[int, int]]] = {}
    for r in rows:
        i, j = r["id"].split("-")
        by_tx.setdefault(i, []).append((r["revision"], int(j)))
    for revs in by_tx.values():
        assert [j for _, j in revs] == list(range(len(revs)))
        assert revs[-1][0] - revs[0][0] == len(revs) - 1
    store.dispose()


def test_port_creates_on_many_networks_keep_ipam_exact(pg_db: str) -> None:
    """Port creates on several small subnets at once (scoped writes side by side), with more
    requests than addresses: each subnet hands out every address once, then says it is full."""
    proc, url = start_server(pg_db)
    try:
        admin = {"X-Project-Id": "admin", "X-Roles": "admin"}
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
        with httpx.Client(base_url=url, headers=admin, timeout=180, limits=limits) as c:
            nets = []
            for k in range(4):
                hdr = {"X-Project-Id": f"p{k}", "X-Roles": "member"}
                net = c.post("/v2.0/networks", headers=hdr, json={"network": {}}).json()["network"]
                sub = c.post("/v2.0/subnets", headers=hdr, json={"subnet": {
                    "network_id": net["id"], "cidr": f"10.7{k}.0.0/28"}})  # 13 in the pool
                assert sub.status_code == 201, sub.text
                nets.append((hdr, net["id"]))

            def create(i: int) -> httpx.Response:
                hdr, net = nets[i % 4]
                return c.post("/v2.0/ports", headers=hdr, json={"port": {"network_id": net}})

            with ThreadPoolExecutor(48) as pool:
                results = list(pool.map(create, range(4 * 20)))
            ports = c.get("/v2.0/ports").json()["ports"]
        assert sorted({r.status_code for r in results}) == [201, 409]
        assert {r.json()["NeutronError"]["type"] for r in results if r.status_code == 409} \
            == {"IpAddressGenerationFailure"}
        ok = [r.json()["port"] for r in results if r.status_code == 201]
        assert len(ok) == 4 * 13
        for _, net in nets:
            mine = [p for p in ok if p["network_id"] == net]
            assert len({p["fixed_ips"][0]["ip_address"] for p in mine}) == 13
            assert len({p["mac_address"] for p in mine}) == 13
        # One default security group per project, though its first ports raced to make it.
        groups = {g for p in ok for g in p["security_groups"]}
        assert len(groups) == 4
        assert sorted(p["id"] for p in ports) == sorted(p["id"] for p in ok)
    finally:
        stop_server(proc)


def test_a_deadlock_victim_is_run_again(pg_db: str) -> None:
    """Two scoped writers each holding one key and then asking for the other's: PostgreSQL
    rolls one back as the deadlock victim, and Store.retrying runs it again; both land."""
    store = Store(pg_db)
    both_hold = threading.Barrier(2, timeout=30)
    attempts: dict[str, int] = {"a": 0, "b": 0}

    def write(mine: str, other: str) -> None:
        attempts[mine] += 1
        with store.write([mine]) as tx:
            tx.insert("thing", {"id": f"{mine}-{attempts[mine]}"}, "p")
            tx.list("thing")   # its key is taken with this first statement
            if attempts[mine] == 1:
                both_hold.wait()
            tx.lock(other)

    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(store.retrying, write, k, o) for k, o in (("a", "b"), ("b", "a"))]
        for f in done:
            f.result(60)
    assert sorted(attempts.values()) == [1, 2]
    landed = sorted(r["id"] for r in store.changes_since(0))
    victim = "a" if attempts["a"] == 2 else "b"
    assert landed == sorted([f"{victim}-2", f"{'b' if victim == 'a' else 'a'}-1"])
    store.dispose()
