"""Compute kernels: per-token logprobs/entropy (and, later, packing and sequence parallelism)."""
