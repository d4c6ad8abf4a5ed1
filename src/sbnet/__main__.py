"""`python -m sbnet`: the same command line as `sbnet`."""

from sbnet.cli.main import app

app()
