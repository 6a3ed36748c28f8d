"""Training: the explicit loop, data-parallel ranks, run folders and the `densa train` job (on core)."""
