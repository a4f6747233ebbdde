"""GRPO-family training: the algorithm-blind loop (grpo), its set-up (run), data stages (collect, stages), the
update (update), collectives (dist) and metrics. Advantages, losses, masks and filters live in rlkit.algorithms."""
