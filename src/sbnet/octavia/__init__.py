"""sbnet as a provider of a real Octavia (octavia-lib's ProviderDriver); importable only where octavia-lib is installed (scripts/octavia-venv)."""
