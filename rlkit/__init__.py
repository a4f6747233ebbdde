"""rlkit: RL post-training for efficient reasoning.

Import-light on purpose (DESIGN rule 11): importing `rlkit` or `rlkit.rewards` never imports vLLM,
DeepSpeed or Triton.
"""

__version__ = "0.1.0"
