"""The kernel eBPF tier: a TC program running megaflows and established connections, the reference switch as its slow path."""
