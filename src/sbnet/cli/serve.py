"""The `sbnet serve` command: the Neutron v2.0 API on an embedded SQLite file or PostgreSQL."""

from __future__ import annotations

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
        log_level: str = typer.Option("warning", help="uvicorn log level."),
    ) -> None:
        """Serve the Neutron v2.0 API (openstack CLI: --os-auth-type none --os-endpoint URL)."""
        import uvicorn

        from sbnet.api import create_app

        application = create_app(db, token_file=token_file, require_token=require_token)
        uvicorn.run(application, host=host, port=port, log_level=log_level)
