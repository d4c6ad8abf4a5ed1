"""Carrying sbnet's load-balancer statuses to Octavia through octavia-lib's driver library, from a thread of the driver."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from sbnet.southbound.client import Southbound, SouthboundError

LOG = logging.getLogger(__name__)
LBAAS = "lbaas"
# The status tree's levels -> the keys of Octavia's status update.
KINDS = {"loadbalancer": "loadbalancers", "listeners": "listeners", "pools": "pools",
         "members": "members", "health_monitor": "healthmonitors"}


def flatten(tree: dict) -> dict[str, list[dict]]:
    """GET .../loadbalancers/{id}/status -> Octavia's status update: every object of the load
    balancer with its provisioning and operating status."""
    out: dict[str, list[dict]] = {}

    def add(kind: str, node: dict) -> None:
        out.setdefault(KINDS[kind], []).append({
            "id": node["id"], "provisioning_status": node["provisioning_status"],
            "operating_status": node["operating_status"]})
        for child in ("listeners", "pools", "members"):
            for x in node.get(child, []):
                add(child, x)
        if node.get("health_monitor"):
            add("health_monitor", node["health_monitor"])
    add("loadbalancer", tree["statuses"]["loadbalancer"])
    return out


class StatusRelay:
    """One thread: after each change the driver made, the whole load balancer's statuses; every
    `interval` seconds, the statuses that the agents' health checks changed.  report() is
    octavia-lib's update_loadbalancer_status; present(kind, id) asks Octavia (its driver
    agent's get socket) whether it holds an object.

    Octavia's API calls the driver inside its transaction and commits after the call returns,
    so a report must come after the call, never inside it; and a new object's row is not there
    for the driver agent until that commit, when an ACTIVE for it would be lost.  So the report
    of a create waits until Octavia holds the object (at most `commit_wait` seconds); an update
    or delete waits on Octavia's lock of the row it holds.  The polls send operating statuses
    only: a provisioning status sent while Octavia's API is in the middle of the next change
    would mark the load balancer ACTIVE before that change's new objects.  A created object
    Octavia still does not hold after `commit_wait` was rolled back there (its transaction
    failed after the driver's call): orphan(kind, id) takes it out of sbnet too."""

    def __init__(self, sbnet: Southbound, report: Callable[[dict], None],
                 present: Callable[[str, str], bool], interval: float = 5.0,
                 commit_wait: float = 30.0,
                 orphan: Callable[[str, str], None] | None = None) -> None:
        self.sbnet, self.report, self.present = sbnet, report, present
        self.interval, self.commit_wait, self.orphan = interval, commit_wait, orphan
        self.jobs: queue.Queue = queue.Queue()
        self.sent: dict[str, dict] = {}        # load balancer id -> last statuses sent
        self.seeded = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sbnet-octavia-status",
                                       daemon=True)
        self.thread.start()

    def changed(self, lb_id: str, extra: dict[str, list[dict]] | None = None,
                made: tuple[str, str] | None = None) -> None:
        """A change to `lb_id` was written: report its tree, with `extra` (deleted objects,
        which the tree no longer holds), once Octavia holds `made` (kind, id), the object
        created."""
        self.jobs.put((lb_id, extra or {}, made, time.monotonic()))

    def idle(self, timeout: float = 30.0) -> bool:
        """True once every change so far has been reported (tests, an orderly stop)."""
        done = threading.Event()
        self.jobs.put(done)
        return done.wait(timeout)

    def stop(self) -> None:
        self.stopping.set()
        self.jobs.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        next_poll = time.monotonic() + self.interval
        while not self.stopping.is_set():
            try:
                job = self.jobs.get(timeout=max(0.0, next_poll - time.monotonic()))
            except queue.Empty:
                self._poll()
                next_poll = time.monotonic() + self.interval
                continue
            if job is None:
                return
            if isinstance(job, threading.Event):
                job.set()
                continue
            lb_id, extra, made, queued = job
            try:
                started = time.monotonic()
                if made and not self._await_commit(*made):
                    LOG.warning("sbnet: Octavia holds no %s %s %.0f s after its create: "
                                "rolled back there, so taken out of sbnet", *made,
                                self.commit_wait)
                    if self.orphan is not None:
                        self.orphan(*made)
                    continue
                committed = time.monotonic()
                self._send(lb_id, extra)
                LOG.info("sbnet: statuses of load balancer %s reported: queued %.3f s, waited "
                         "%.3f s for Octavia's commit, read and reported in %.3f s", lb_id,
                         started - queued, committed - started, time.monotonic() - committed)
            except Exception:       # noqa: BLE001 - a report lost must not stop the next ones
                LOG.exception("sbnet: status of load balancer %s not reported", lb_id)

    def _await_commit(self, kind: str, ident: str) -> bool:
        """Whether Octavia holds the object within `commit_wait` seconds."""
        # Each question forks a process in Octavia's driver agent: ask less often as it waits.
        deadline, pause = time.monotonic() + self.commit_wait, 0.02
        while not self.present(kind, ident):
            if time.monotonic() > deadline or self.stopping.is_set():
                return False
            time.sleep(pause)
            pause = min(2 * pause, 0.5)
        return True

    def _tree(self, lb_id: str) -> dict[str, list[dict]] | None:
        try:
            return flatten(self.sbnet.request("GET", f"{LBAAS}/loadbalancers/{lb_id}/status"))
        except SouthboundError as exc:
            if exc.status == 404:
                return None
            raise

    def _send(self, lb_id: str, extra: dict[str, list[dict]]) -> None:
        tree = self._tree(lb_id) or {}
        update = {k: list(v) for k, v in tree.items()}
        for kind, items in extra.items():
            ids = {x["id"] for x in items}
            update[kind] = [x for x in update.get(kind, []) if x["id"] not in ids] + items
        if tree:
            self.sent[lb_id] = tree
        else:
            self.sent.pop(lb_id, None)
        if update:
            self.report(update)

    def _operating(self, lb_id: str, statuses: dict[str, list[dict]]) -> None:
        update = {k: [{"id": x["id"], "operating_status": x["operating_status"]} for x in v]
                  for k, v in statuses.items()}
        if any(update.values()):
            self.report(update)

    def _poll(self) -> None:
        """Operating statuses that moved since the last report (members the agents found down
        or back).  The first round reports every load balancer sbnet holds: a driver that
        restarted brings Octavia's operating statuses up to date."""
        if not self.seeded:
            try:
                for lb in self.sbnet.request("GET", f"{LBAAS}/loadbalancers")["loadbalancers"]:
                    tree = self._tree(lb["id"])
                    if tree:
                        self._operating(lb["id"], tree)
                        self.sent[lb["id"]] = tree
                self.seeded = True
            except Exception:       # noqa: BLE001 - tried again next round
                LOG.exception("sbnet: load balancers' statuses not reported")
            return
        for lb_id, before in list(self.sent.items()):
            try:
                current = self._tree(lb_id)
            except SouthboundError as exc:
                LOG.warning("sbnet: status of load balancer %s unreadable: %s", lb_id, exc)
                continue
            if current is None:
                self.sent.pop(lb_id, None)
                continue
            # objects already reported whose statuses moved (a new one is its create's to report)
            known = {k: {x["id"] for x in v} for k, v in before.items()}
            moved = {k: [x for x in v if x["id"] in known.get(k, ()) and x not in before[k]]
                     for k, v in current.items()}
            try:
                self._operating(lb_id, moved)
            except Exception:       # noqa: BLE001
                LOG.exception("sbnet: status of load balancer %s not reported", lb_id)
                continue
            self.sent[lb_id] = current
