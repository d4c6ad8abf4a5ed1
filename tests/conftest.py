"""Suite-wide settings: in CI, hypothesis runs derandomized so a run is reproducible."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
