"""Benchmarks and profiling: training throughput, the sweep's cost, start-up time, latency, a model's profile."""
