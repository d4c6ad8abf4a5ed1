"""The `sbnet serve` command: the Neutron v2.0 API on an embedded SQLite file or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

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
    ) -> None:
        """Serve the Neutron v2.0 API (openstack CLI: --os-auth-type none --os-endpoint URL)."""
        import uvicorn

        from sbnet.api import create_app
        from sbnet.model.segments import SegmentConfig

        if keystone_config and token_file:
            raise typer.BadParameter("--keystone-config and --token-file exclude each other")
        if keystone_config and not Path(keystone_config).is_file():
            raise typer.BadParameter(f"--keystone-config: no file {keystone_config}")
        try:
            segments = SegmentConfig.parse(tenant_network_type, flat_network or None,
                                           vlan_range or None, tunnel_range or None, physnet_mtu)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        from sbnet.offload.binding import parse_host_profiles
        try:
            profiles = parse_host_profiles(host_profile)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        try:
            application = create_app(db, token_file=token_file, require_token=require_token,
                                     segments=segments, host_profiles=profiles,
                                     keystone_config=keystone_config)
        except KeyError as exc:
            raise typer.BadParameter(str(exc.args[0])) from None
        uvicorn.run(application, host=host, port=port, log_level=log_level)
