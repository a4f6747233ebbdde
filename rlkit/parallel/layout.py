"""Where each process sits when the world is data-parallel x sequence-parallel, and the process groups it needs.

SP group g holds the consecutive ranks g*sp .. g*sp + sp - 1 and trains one data-parallel share together: every
rank of an SP group holds the same rows (the trainer's ``balance_ranks`` deals shares to SP groups, not ranks), and
this is the one place that assumption is made explicit: sums over all ranks count each row ``sp`` times, so the
trainer divides them by ``sp``, and a result one rank of a micro-batch's block computed is summed over the SP group.

Inside an SP group a micro-batch of degree d runs on an aligned block of d ranks (sub-ranks k*d .. k*d + d - 1):
blocks of one degree tile the group, and with nodes of 8 GPUs and sp a multiple of 8, blocks of <= 8 ranks stay
inside a node. Every block of every degree the mode can use is created once at start-up, by every rank, in the same
order (``torch.distributed.new_group`` is collective); ``groups[d]`` is this rank's block of degree d.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlkit.parallel.plan import degrees_for


@dataclass(frozen=True)
class Layout:
    """This rank's place: SP group size ``sp`` and sub-rank ``sp_rank``; ``dp`` SP groups, this one ``dp_rank``;
    ``sp_group`` the whole SP group, ``dp_group`` the ranks with this sub-rank in every SP group (one copy of each
    share, for de-duplicated sums); ``groups`` degree -> this rank's aligned block of that degree (> 1)."""

    sp: int = 1
    sp_rank: int = 0
    dp: int = 1
    dp_rank: int = 0
    sp_group: Any = None
    dp_group: Any = None
    mode: str = "fixed"
    groups: dict = field(default_factory=dict)

    @property
    def degrees(self) -> tuple[int, ...]:
        return degrees_for(self.sp, self.mode)


def make_layout(acc, sp: int, mode: str = "fixed") -> Layout:
    """The SP, DP and block process groups (collective: every rank creates every group, in the same order)."""
    world, rank = acc.num_processes, acc.process_index
    if sp == 1:
        return Layout(dp=world, dp_rank=rank)
    import torch.distributed as tdist

    sp_groups = [tdist.new_group(list(range(g * sp, (g + 1) * sp))) for g in range(world // sp)]
    dp_groups = [tdist.new_group(list(range(j, world, sp))) for j in range(sp)]
    mine = sp_groups[rank // sp]
    groups = {sp: mine}
    for degree in degrees_for(sp, mode):
        if 1 < degree < sp:
            blocks = {(g * sp + k): tdist.new_group(list(range(g * sp + k, g * sp + k + degree)))
                      for g in range(world // sp) for k in range(0, sp, degree)}
            groups[degree] = blocks[rank - rank % sp + (rank % sp) - (rank % sp) % degree]
    return Layout(sp=sp, sp_rank=rank % sp, dp=world // sp, dp_rank=rank // sp, sp_group=mine,
                  dp_group=dp_groups[rank % sp], mode=mode, groups=groups)
