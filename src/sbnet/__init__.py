"""sbnet: accelerated server-based networking for OpenStack-style clouds."""

__version__ = "0.1.0"
