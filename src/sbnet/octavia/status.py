"""Carrying sbnet's load-balancer statuses to Octavia through octavia-lib's driver library, from a thread of the driver."""

from __future__ import annotations

import logging
import queue
import threading
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
    """One thread: after each change the driver made, the whole load balancer's statuses (the
    driver returns before Octavia commits its own records, so the report must come after the
    call, never inside it); between changes, every `interval` seconds, the statuses that the
    agents' health checks changed.  report() is octavia-lib's update_loadbalancer_status."""

    def __init__(self, sbnet: Southbound, report: Callable[[dict], None],
                 interval: float = 5.0) -> None:
        self.sbnet, self.report, self.interval = sbnet, report, interval
        self.jobs: queue.Queue = queue.Queue()
        self.sent: dict[str, dict] = {}        # load balancer id -> last statuses sent
        self.seeded = False
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sbnet-octavia-status",
                                       daemon=True)
        self.thread.start()

    def changed(self, lb_id: str, extra: dict[str, list[dict]] | None = None) -> None:
        """A change to `lb_id` was written: report its tree, with `extra` (deleted or failed
        objects, which the tree no longer or never held)."""
        self.jobs.put((lb_id, extra or {}))

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
        while not self.stopping.is_set():
            try:
                job = self.jobs.get(timeout=self.interval)
            except queue.Empty:
                self._poll()
                continue
            if job is None:
                return
            if isinstance(job, threading.Event):
                job.set()
                continue
            try:
                self._send(*job)
            except Exception:       # noqa: BLE001 - a report lost must not stop the next ones
                LOG.exception("sbnet: status of load balancer %s not reported", job[0])

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

    def _poll(self) -> None:
        """Operating statuses that moved since the last report (members the agents found down
        or back).  The first round reports every load balancer sbnet holds: a driver that
        restarted brings Octavia's statuses up to date."""
        if not self.seeded:
            try:
                for lb in self.sbnet.request("GET", f"{LBAAS}/loadbalancers")["loadbalancers"]:
                    self._send(lb["id"], {})
                self.seeded = True
            except Exception:       # noqa: BLE001 - tried again next round
                LOG.exception("sbnet: load balancers' statuses not reported")
            return
        for lb_id, before in list(self.sent.items()):
            try:
                now = self._tree(lb_id)
            except SouthboundError as exc:
                LOG.warning("sbnet: status of load balancer %s unreadable: %s", lb_id, exc)
                continue
            if now is None:
                self.sent.pop(lb_id, None)
                continue
            moved = {k: [x for x in v if x not in before.get(k, [])] for k, v in now.items()}
            moved = {k: v for k, v in moved.items() if v}
            if moved:
                try:
                    self.report(moved)
                except Exception:   # noqa: BLE001
                    LOG.exception("sbnet: status of load balancer %s not reported", lb_id)
                    continue
                self.sent[lb_id] = now
