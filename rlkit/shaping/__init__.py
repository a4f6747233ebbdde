"""Group/batch reward shaping (architecture rule 3, second layer) and the sample transforms that rewrite rollouts
before shaping (DOT truncation, UloRL's zero reward for truncated samples)."""
