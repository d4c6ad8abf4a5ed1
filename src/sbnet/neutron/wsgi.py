"""Neutron's API as a WSGI application for any WSGI server: `gunicorn sbnet.neutron.wsgi:application`.

neutron.wsgi.api reads sys.argv as its own options, so the WSGI server's are hidden from it;
its configuration comes from OS_NEUTRON_CONFIG_DIR and OS_NEUTRON_CONFIG_FILES."""

import sys

sys.argv = sys.argv[:1]

from neutron.wsgi.api import application  # noqa: E402,F401
