"""The embedded agent loop: follow the store's revisions, re-sync the cluster, report ports up."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sbnet.agent.embedded import Cluster
from sbnet.api.hosts import Heartbeats, rebind
from sbnet.store.db import Store


@dataclass
class SyncReport:
    """One re-sync: the revision it brought the hosts to, each host's diff size, the ports it
    plugged, unplugged and marked ACTIVE."""

    revision: int
    diffs: dict[str, int] = field(default_factory=dict)
    plugged: list[str] = field(default_factory=list)
    unplugged: list[str] = field(default_factory=list)
    activated: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        sizes = ", ".join(f"{h} {n}" for h, n in self.diffs.items())
        extra = f"; {len(self.activated)} port(s) ACTIVE" if self.activated else ""
        return f"revision {self.revision}: flow changes {sizes}{extra} ({self.seconds:.2f}s)"


class Follower:
    """Keeps a Cluster in step with a Store, as a host agent would: whenever the revision
    moves, take a snapshot, plug what is newly bound, unplug what is gone, apply each host's
    diff, and report ports up.  `lock` guards the cluster's switches against traffic sent
    from another thread while a sync is applied."""

    def __init__(self, store: Store, cluster: Cluster, on_sync=None, on_error=None) -> None:
        self.store = store
        self.cluster = cluster
        self.on_sync = on_sync
        self.on_error = on_error
        self.revision = -1
        self.error: tuple[int, Exception] | None = None     # (revision, what failed there)
        self.lock = threading.RLock()
        self.history: list[SyncReport] = []
        self._moved = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.beat()

    def beat(self) -> None:
        """The embedded hosts' heartbeats: they are alive while this follows the store, and
        their ports bind to the reference switch (tap)."""
        beats = Heartbeats.of(self.store)
        back = [h for h in self.cluster.hosts if beats.beat(h, {"datapath": "reference",
                                                                "embedded": True})]
        if back:
            with self.store.write() as tx:
                for h in back:
                    rebind(tx, beats, h)

    def step(self, wait: float = 0.0) -> SyncReport | None:
        """One round: block up to `wait` seconds for a change, then sync if there was one."""
        self.beat()
        since = max(self.revision, self.error[0] if self.error else -1)
        if since >= 0 and not self.store.changes_since(since, limit=1, wait=wait):
            return None
        start = time.monotonic()
        snapshot = self.store.snapshot()
        if snapshot["revision"] == self.revision:
            return None
        report = SyncReport(snapshot["revision"])
        with self.lock:
            before = set(self.cluster.where)
            report.unplugged = self._unplug_stale(snapshot)
            report.diffs = {h: d.size for h, d in self.cluster.sync(snapshot).items()}
            report.plugged = sorted(set(self.cluster.where) - before)
        report.activated, revision = mark_active(self.store, self.cluster, snapshot)
        report.seconds = time.monotonic() - start
        with self._moved:
            self.revision = revision
            self.history.append(report)
            self._moved.notify_all()
        if self.on_sync is not None:
            self.on_sync(report)
        return report

    def _unplug_stale(self, snapshot: dict) -> list[str]:
        """VIFs whose port was deleted or bound elsewhere (Nova would unplug them)."""
        bound = {p["id"]: p.get("binding:host_id") for p in snapshot.get("port", ())}
        gone = [pid for pid, (host, _) in self.cluster.where.items() if bound.get(pid) != host]
        for pid in gone:
            self.cluster.unplug(pid)
        return gone

    def wait_for(self, revision: int, timeout: float = 30.0) -> bool:
        """Block until the hosts run a model at least this new (the loop must be running)."""
        deadline = time.monotonic() + timeout
        with self._moved:
            while self.revision < revision:
                if self.error and self.error[0] >= revision:
                    return False
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._moved.wait(left)
        return True

    def catch_up(self) -> None:
        """Sync now, in the caller's thread, to whatever the store holds."""
        while self.step() is not None:
            pass

    def start(self, wait: float = 0.5) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.step(wait=wait)
                except Exception as exc:  # noqa: BLE001
                    # An agent outlives a model it cannot apply: say so, and try again
                    # once the model moves on.
                    with self._moved:
                        self.error = (self.store.current_revision(), exc)
                        self._moved.notify_all()
                    if self.on_error is not None:
                        self.on_error(*self.error)
        self._thread = threading.Thread(target=loop, name="sbnet-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def mark_active(store: Store, cluster: Cluster, snapshot: dict) -> tuple[list[str], int]:
    """Ports bound to one of our hosts and plugged there go ACTIVE, as Neutron's agents
    report them (an update that bumps revision_number, like any status change).  Returns
    the ports changed and the revision the hosts are now known to be at: if nobody else
    wrote since the snapshot, our own status writes need no further sync."""
    wanted = [p["id"] for p in snapshot.get("port", ())
              if p.get("status") != "ACTIVE" and p["id"] in cluster.where
              and cluster.where[p["id"]][0] == p.get("binding:host_id")]
    if not wanted:
        return [], snapshot["revision"]
    done = []
    with store.write() as tx:
        untouched = tx.revision == snapshot["revision"]
        for pid in wanted:
            body = tx.get("port", pid)
            if body is None or body.get("status") == "ACTIVE":
                continue
            body["status"] = "ACTIVE"
            tx.update("port", body)
            done.append(pid)
        revision = tx.revision
    return done, revision if untouched else snapshot["revision"]
