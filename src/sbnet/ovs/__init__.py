"""Open vSwitch: daemons, OpenFlow loading and tracing."""
