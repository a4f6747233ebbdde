"""GRPO-family training: advantages, losses and the algorithm-blind loop (rlkit.trainers.grpo)."""
