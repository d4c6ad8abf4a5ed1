"""`sbnet migrate PORT --to HOST`: Nova's live-migration sequence of port bindings, with its timeline."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import typer

# Nova's user in noauth mode: Neutron lets only the service role write bindings.
NOVA = {"X-Project-Id": "service", "X-Roles": "admin,service"}


class MigrationFailed(RuntimeError):
    """A step of the sequence failed; the message is one line."""


@dataclass
class Timeline:
    """What happened when, from the start of the migration."""

    start: float = field(default_factory=time.monotonic)
    events: list[tuple[float, str]] = field(default_factory=list)

    def mark(self, what: str) -> float:
        t = time.monotonic() - self.start
        self.events.append((t, what))
        return t

    def lines(self) -> list[str]:
        return [f"{t * 1000:9.1f} ms  {what}" for t, what in self.events]


def _call(client, headers: dict, method: str, path: str, body: dict | None = None,
          ok: tuple[int, ...] = (200, 201, 204)) -> dict:
    r = client.request(method, f"/v2.0/{path}", json=body, headers=headers)
    if r.status_code not in ok:
        try:
            err = r.json().get("NeutronError", {})
            why = f"{err.get('type')}: {err.get('message')}"
        except ValueError:
            why = r.text[:200]
        raise MigrationFailed(f"{method} {path}: {r.status_code} {why}")
    return r.json() if r.content else {}


def drive(client, port_id: str, dest: str, headers: dict | None = None,
          plug: Callable[[], None] | None = None, move: Callable[[], None] | None = None,
          timeout: float = 30.0, poll: float = 0.01,
          say: Callable[[str], None] | None = None, profile: dict | None = None) -> Timeline:
    """The sequence Nova drives: an inactive binding on `dest`; the hypervisor plugs the
    VIF there (`plug`); wait until the destination's agent reports it ready (pipeline
    installed, connections imported); the VM switches over (`move`); activate the binding
    on `dest`; delete the source's.  If the destination is not ready within `timeout`, the
    new binding is deleted (the VM stays at the source) and MigrationFailed raised.
    `profile`: the new binding's (e.g. {"activation-strategy": "rarp"})."""
    headers = headers or NOVA
    tl = Timeline()

    def mark(what: str) -> None:
        t = tl.mark(what)
        if say is not None:
            say(f"{t * 1000:9.1f} ms  {what}")
    port = _call(client, headers, "GET", f"ports/{port_id}")["port"]
    source = port.get("binding:host_id") or ""
    b = _call(client, headers, "POST", f"ports/{port_id}/bindings",
              {"binding": {"host": dest, **({"profile": profile} if profile else {})}})["binding"]
    mark(f"inactive binding on {dest} ({b['vif_type']}), active on {source or 'no host'}")
    try:
        if plug is not None:
            plug()
            mark(f"hypervisor: VIF plugged on {dest}")
        deadline = time.monotonic() + timeout
        while True:
            mig = _call(client, headers, "GET", f"sbnet/ports/{port_id}/migration")["migration"]
            ready = next((x["ready"] for x in mig["bindings"] if x["host"] == dest), None)
            if ready:
                break
            if time.monotonic() > deadline:
                raise MigrationFailed(f"{dest} not ready after {timeout:g} s")
            time.sleep(poll)
        mark(f"{dest} ready: pipeline installed, {ready['conntrack']} connection(s) imported")
        if move is not None:
            move()
            mark(f"hypervisor: VM switched over to {dest}")
    except BaseException:
        _call(client, headers, "DELETE", f"ports/{port_id}/bindings/{dest}", ok=(204, 404))
        mark(f"rolled back: binding on {dest} deleted, the port stays on {source}")
        raise
    _call(client, headers, "PUT", f"ports/{port_id}/bindings/{dest}/activate")
    mark(f"binding on {dest} activated")
    if source:
        _call(client, headers, "DELETE", f"ports/{port_id}/bindings/{source}", ok=(204, 404))
        mark(f"binding on {source} deleted")
    return tl


def _hook(cmd: str) -> Callable[[], None] | None:
    if not cmd:
        return None

    def run() -> None:
        res = subprocess.run(shlex.split(cmd), capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise MigrationFailed(f"{cmd!r} failed ({res.returncode}): "
                                  f"{(res.stderr or res.stdout).strip()[:200]}")
    return run


def register(app: typer.Typer) -> None:
    @app.command()
    def migrate(
        port: str = typer.Argument(..., help="the port (VM interface) to move"),
        to: str = typer.Option(..., "--to", help="the destination host"),
        api: str = typer.Option("http://127.0.0.1:9696", help="the Neutron API's URL"),
        token: str = typer.Option("", help="a Keystone token with the service role "
                                  "(default: noauth headers as Nova's user)"),
        plug: str = typer.Option("", help="command the hypervisor runs to plug the VIF on "
                                 "the destination before the wait"),
        move: str = typer.Option("", help="command that switches the VM over, run once the "
                                 "destination is ready"),
        timeout: float = typer.Option(30.0, help="seconds to wait for the destination"),
        activation_strategy: str = typer.Option(
            "", "--activation-strategy", help="rarp or garp: the destination takes the port "
            "over as soon as the VM announces itself there (a RARP; a gratuitous ARP or "
            "unsolicited NA), before the activation"),
    ) -> None:
        """Live-migrate a port's binding as Nova does: inactive binding on the destination,
        wait until it is ready (its pipeline and the port's connections), activate, delete
        the source's binding; prints the timeline."""
        import httpx

        from sbnet.model.resources import ACTIVATION_STRATEGIES
        headers = {"X-Auth-Token": token} if token else NOVA
        if activation_strategy and activation_strategy not in ACTIVATION_STRATEGIES:
            print(f"sbnet: migrate: --activation-strategy must be one of "
                  f"{', '.join(ACTIVATION_STRATEGIES)}", file=sys.stderr)
            raise typer.Exit(2)
        profile = {"activation-strategy": activation_strategy} if activation_strategy else None
        try:
            with httpx.Client(base_url=api, timeout=30) as client:
                drive(client, port, to, headers, _hook(plug), _hook(move), timeout,
                      say=print, profile=profile)
        except (MigrationFailed, httpx.HTTPError) as exc:
            print(f"sbnet: migrate: {exc}", file=sys.stderr)
            raise typer.Exit(1) from None
