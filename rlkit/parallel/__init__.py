"""Sequence parallelism, self-contained (architecture rule 8): everything that knows a row can be split over ranks.

- ``layout``: where a process sits (data-parallel x sequence-parallel), the SP group, the DP group and the aligned
  blocks of every degree, created once at start-up. The one assumption the trainer relies on lives there: every
  rank of an SP group holds the same rows.
- ``plan``: which micro-batch runs at which degree in which lock-step round (fixed, adaptive, flex), predicted by a
  time model, never predicted slower than fixed SP.
- ``calibrate``: that time model fitted on the actual devices at start-up.
- ``micro``: a rank's micro-batches from the plan, its shard of a row, who counts a result, the SP group's sums.
- ``ulysses``: the attention exchange (all-to-all heads <-> sequence) for any degree, whatever the head count.

The update loop (``rlkit.trainers.grpo.update_policy``, with its pieces in ``rlkit.trainers.update``) keeps loss
assembly and the optimizer steps; it asks this package for micro-batches and model inputs and never looks inside a
plan.
"""
