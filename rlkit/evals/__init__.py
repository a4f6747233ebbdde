"""Evaluation as the efficient-reasoning papers report it: metrics (pure) and the benchmark suite behind `rlkit eval`."""
