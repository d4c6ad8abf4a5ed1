"""The `sbnet serve` command: the Neutron v2.0 API on an embedded SQLite file or PostgreSQL."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(9696, help="Port to listen on (Neutron's is 9696)."),
        db: str = typer.Option("sqlite:///sbnet.db", help="SQLAlchemy URL: sqlite:///file (WAL) "
                               "or postgresql://user@host/db."),
        token_file: str = typer.Option(None, help="YAML/JSON map of tokens to project_id and roles."),
        require_token: bool = typer.Option(False, help="Refuse requests without a valid token."),
        keystone_config: str = typer.Option(None, help="File with a [keystone_authtoken] section "
                                            "(as in neutron.conf): Keystone tokens are required."),
        keystone: str = typer.Option(None, help="Keystone's identity URL (http://HOST:5000/v3): "
                                     "tokens are required, checked as the service user "
                                     "--keystone-user of --keystone-project, password from "
                                     "$SBNET_KEYSTONE_PASSWORD (instead of --keystone-config)."),
        keystone_user: str = typer.Option("sbnet", help="The service user sbnet checks tokens as."),
        keystone_project: str = typer.Option("service", help="That user's project."),
        quota: list[str] = typer.Option(None, help="RESOURCE=N: each project's limit of RESOURCE "
                                        "where the admin set none (repeat; -1 unlimited; "
                                        "default Neutron's: network=100, port=500, router=10...)."),
        tenant_network_type: str = typer.Option("vxlan", help="Type of networks made without "
                                                "provider attributes."),
        flat_network: list[str] = typer.Option(None, help="Physical network allowed for flat "
                                               "networks (repeat; default physnet1)."),
        vlan_range: list[str] = typer.Option(None, help="PHYSNET[:MIN:MAX] VLANs to allocate "
                                             "from (repeat; default: physnet1, VLANs 100 to 199)."),
        tunnel_range: list[str] = typer.Option(None, help="TYPE:MIN:MAX ids to allocate, TYPE "
                                               "vxlan, gre or geneve (repeat; default 1:65535 each)."),
        physnet_mtu: int = typer.Option(1500, help="Underlay MTU; tunnel overhead is taken off."),
        log_level: str = typer.Option("warning", help="uvicorn log level."),
        host_profile: list[str] = typer.Option(None, help="HOST=PROFILE: the NIC profile (sriov, "
                                               "software, smartnic) vnic_type direct ports on "
                                               "HOST bind against (repeat)."),
        workers: int = typer.Option(None, help="Server processes answering on the port "
                                    "(default: one per two CPUs on PostgreSQL, 1 on SQLite, "
                                    "which takes one writer at a time; more than 1 needs "
                                    "PostgreSQL)."),
    ) -> None:
        """Serve the Neutron v2.0 API (openstack CLI: --os-auth-type none --os-endpoint URL)."""
        import uvicorn

        from sbnet.api.app import KEEP_ALIVE_S

        if keystone and keystone_config:
            raise typer.BadParameter("--keystone and --keystone-config exclude each other")
        if keystone:
            keystone_config = _authtoken_file(keystone, keystone_user, keystone_project)
        if keystone_config and token_file:
            raise typer.BadParameter("--keystone(-config) and --token-file exclude each other")
        if keystone_config and not Path(keystone_config).is_file():
            raise typer.BadParameter(f"--keystone-config: no file {keystone_config}")
        workers = default_workers(db) if workers is None else workers
        if workers < 1 or workers > 64:
            raise typer.BadParameter(f"--workers {workers}: 1 to 64 processes")
        if workers > 1 and db.startswith("sqlite"):
            raise typer.BadParameter(f"--workers {workers}: several processes need PostgreSQL "
                                     "(SQLite takes one writer at a time)")
        options = {"db": db, "token_file": token_file, "require_token": require_token,
                   "keystone_config": keystone_config, "quota": quota,
                   "tenant_network_type": tenant_network_type, "flat_network": flat_network,
                   "vlan_range": vlan_range, "tunnel_range": tunnel_range,
                   "physnet_mtu": physnet_mtu, "host_profile": host_profile,
                   "workers": workers}
        # Built here in any case: bad options fail once, in one line, and the schema is
        # migrated before any worker starts.
        application = build_app(options)
        if workers == 1:
            uvicorn.run(application, host=host, port=port, log_level=log_level,
                        timeout_keep_alive=KEEP_ALIVE_S)
            return
        application.state.api.store.dispose()
        os.environ[OPTIONS_ENV] = json.dumps(options)
        uvicorn.run("sbnet.cli.serve:worker_app", factory=True, workers=workers, host=host,
                    port=port, log_level=log_level, timeout_keep_alive=KEEP_ALIVE_S)


OPTIONS_ENV = "SBNET_SERVE_OPTIONS"   # `sbnet serve`'s options, for its worker processes


def default_workers(db: str) -> int:
    """On PostgreSQL one process per two CPUs (each process runs its Python on one core at a
    time, and the database takes about as much CPU per write again: on 2 cores with the
    database beside it, bench_api's 300 clients got 190-215 creates/s from one process and
    125-175 from two); one on SQLite."""
    return 1 if db.startswith("sqlite") else max(1, (os.cpu_count() or 1) // 2)


def build_app(options: dict) -> Any:
    """The app `sbnet serve`'s options describe (BadParameter, one line, for bad ones)."""
    from sbnet.api import create_app
    from sbnet.api.quotas import parse_defaults
    from sbnet.model.segments import SegmentConfig
    from sbnet.offload.binding import parse_host_profiles
    from sbnet.store import Store

    try:
        segments = SegmentConfig.parse(options["tenant_network_type"],
                                       options["flat_network"] or None,
                                       options["vlan_range"] or None,
                                       options["tunnel_range"] or None, options["physnet_mtu"])
        profiles = parse_host_profiles(options["host_profile"])
        quotas = parse_defaults(options["quota"])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    db = options["db"]
    # The kept connections are shared out among the processes (PostgreSQL's default
    # max_connections is 100).
    store = Store(db, pool_size=max(8, 40 // options["workers"]))
    try:
        return create_app(db, store=store, token_file=options["token_file"],
                          require_token=options["require_token"], segments=segments,
                          host_profiles=profiles, keystone_config=options["keystone_config"],
                          quota_defaults=quotas)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from None


def worker_app() -> Any:
    """One worker process's app (uvicorn's factory), from the options its parent checked."""
    return build_app(json.loads(os.environ[OPTIONS_ENV]))


def _authtoken_file(url: str, user: str, project: str) -> str:
    """The [keystone_authtoken] section --keystone stands for, in a private file removed at exit."""
    import atexit
    import tempfile

    from sbnet.api.keystone import authtoken_section

    password = os.environ.get("SBNET_KEYSTONE_PASSWORD")
    if not password:
        raise typer.BadParameter("--keystone needs the service user's password in "
                                 "$SBNET_KEYSTONE_PASSWORD")
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"--keystone {url}: an http(s) URL of Keystone's identity API")
    fd, path = tempfile.mkstemp(prefix="sbnet-authtoken-", suffix=".conf")
    with os.fdopen(fd, "w") as f:   # mkstemp: readable by this user only (it holds a password)
        f.write(authtoken_section(url, user, password, project))
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    return path
