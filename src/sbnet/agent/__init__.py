"""Host agents: apply per-host flows to a datapath; here also the namespace topology real-host tests run on."""
