"""Measuring: throughput and latency benchmarks, op-time profiles, memory over a real run."""
