"""Benchmarks of splat_render: every available backend against the reference and torch.compile (README.md)."""
