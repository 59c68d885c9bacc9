"""Deployment: profiling (params, MACs, RAM, flash, latency) and export."""
