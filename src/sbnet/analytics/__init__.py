"""Per-flow analytics: flow records from datapath counters, IPFIX export, Prometheus metrics, plots."""
