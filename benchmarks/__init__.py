"""bnnkit benchmarks: cases registered in one registry, run by ``bnnkit bench`` / ``python -m benchmarks``."""
