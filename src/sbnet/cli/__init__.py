"""The sbnet command line (typer + rich)."""
