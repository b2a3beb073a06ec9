"""Metrics of generated samples against published benchmarks (``moses``: molecules)."""
