"""Group filters: dynamic sampling (DAPO, Yu et al. arXiv 2503.14476 sec. 3.2; DLER; methods.md sec. 0
contract 3) and DOT's predictive oversampling (methods.md sec. 6).

Groups whose filter metric has zero variance carry no GRPO signal and are dropped; generation continues
until the step has its quota of groups. The metric is the verifier (``correct``), the combined per-sample
reward (``reward``) or the final shaped reward (``shaped``: the rounds are shaped before filtering, so a
shaper that zeroes a group out, e.g. DA-DLER's tier cap, decides what is kept). A filter owns the rounds:
``collect(quota, produce, reduce)`` calls ``produce(n_prompts, round) -> StepBatch`` as often as it needs.
All ranks run the same rounds (the deficit is all-reduced), as collectives inside ``produce`` require.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import Literal

import torch

from rlkit.records import StepBatch, group_index
from rlkit.registry import register

log = logging.getLogger("rlkit")


def _rank_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 without a process group)."""
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def informative_groups(values: torch.Tensor, group_ids: torch.Tensor, tol: float = 1e-6) -> list[int]:
    """Group ids (ascending) whose `values` are not all equal (max - min > tol). NaN values (not applicable)
    are ignored; a group with fewer than two known values is dropped."""
    keep = []
    for idx in group_index(group_ids):
        v = values[idx]
        v = v[~torch.isnan(v)]
        if v.numel() >= 2 and float(v.max() - v.min()) > tol:
            keep.append(int(group_ids[idx[0]]))
    return keep


def fill_quota(kept: list, quota: int, fallback: list) -> tuple[list, int]:
    """Trim `kept` to `quota`, or pad it by repeating kept groups in order (DOT's predictive dynamic
    sampling rule); with nothing kept, pad from `fallback` (zero-variance groups). Returns (groups, number
    of padded entries); the padded entries are the last ones. The caller marks them as padding
    (``StepBatch.padding``): as in DOT's released trainer (U-rara/DOT dot_ray_trainer.py, response mask
    zeroed, fresh uids), a padded copy carries zero loss weight and counts in no mean, so a batch of k < quota
    surviving groups updates exactly as the k groups alone (DOT, arXiv 2601.03969, PDS). With nothing kept the
    whole batch is padding: the step makes no update (no group carries a signal), its statistics describe the
    groups generated (``StepBatch.counted``) and ``sampling/informative_fraction`` 0 reports it."""
    if len(kept) >= quota:
        return kept[:quota], 0
    source = kept or fallback
    if not source:
        raise ValueError("dynamic sampling: no groups to fill the batch with")
    out = list(kept)
    i = 0
    while len(out) < quota:
        out.append(source[i % len(source)])
        i += 1
    return out, quota - len(kept)


def _select(batches: list[StepBatch], chosen: list[tuple[int, int]], padded: int = 0) -> StepBatch:
    """The chosen (round, group) entries as one batch, runs of one round selected together; the last `padded`
    entries are marked as padding (zero loss weight, left out of every statistic)."""
    parts, run = [], []
    for bi, g in chosen + [(-1, -1)]:
        if run and bi != run[0][0]:
            parts.append(batches[run[0][0]].select_groups([x[1] for x in run]))
            run = []
        run.append((bi, g))
    out = StepBatch.concat(parts)
    if padded:
        first = len(chosen) - padded
        out.padding = torch.tensor([s.group_id >= first for s in out.samples], dtype=torch.bool)
    return out


class _Rounds:
    """The shared round loop; subclasses set the prompts per round and the round limit."""

    metric: str = "correct"
    max_rounds: int = 1  # rounds before the batch is padded
    until_full: bool = False  # keep generating until full; max_rounds is then only a safety cap

    needs_verifier = True  # declarations of the default metric "correct"; _declare sets them from the metric
    needs_shaped = False

    def _declare(self) -> None:
        """The declarations follow the metric: a correctness term for "correct", shaping before each round for
        "shaped" (values, so the class and a built instance answer alike for the default options)."""
        self.needs_verifier, self.needs_shaped = self.metric == "correct", self.metric == "shaped"

    def prompts_for(self, quota: int, need: int) -> int:
        return need

    def record(self, informative: int, generated: int, reduce) -> dict:
        return {}

    def admit(self, batch: StepBatch, good: set[int], where: int, reduce) -> tuple[list, list]:
        """The groups of round ``where`` that join the batch and those kept only as fallback, as (round, group):
        the informative groups (``good``), in order. Every rank calls it at the same rounds (``reduce`` is there for
        rules over the whole step's groups)."""
        groups = range(len(batch.prompts))
        return [(where, g) for g in groups if g in good], [(where, g) for g in groups if g not in good]

    def after(self, batch: StepBatch, reduce) -> dict:
        """What the filter learns from the step's batch (its metrics); called once per step, on every rank."""
        return {}

    def _values(self, batch: StepBatch) -> torch.Tensor:
        return {"correct": batch.correct, "reward": batch.rewards, "shaped": batch.shaped}[self.metric]

    def collect(self, quota: int, produce: Callable[[int, int], StepBatch],
                reduce: Callable[[torch.Tensor, str], torch.Tensor]) -> StepBatch:
        batches: list[StepBatch] = []
        kept, fallback, generated, informative, need = [], [], 0, 0, quota
        while len(batches) < self.max_rounds:
            need = int(reduce(torch.tensor(quota - len(kept)), "max"))
            if need <= 0:
                break
            batch = produce(self.prompts_for(quota, need), len(batches))
            batches.append(batch)
            generated += len(batch.prompts)
            good = set(informative_groups(self._values(batch), batch.group_ids))
            informative += len(good)
            joined, spare = self.admit(batch, good, len(batches) - 1, reduce)
            kept += joined
            fallback += spare
        cap_hit = self.until_full and int(reduce(torch.tensor(quota - len(kept)), "max")) > 0
        chosen, padded = fill_quota(kept, quota, fallback)
        out = _select(batches, chosen, padded)
        merged: dict = {}
        for b in batches:  # metrics only the first round carries (asynchronous rollouts' staleness) stay
            merged.update(b.metrics)
        out.metrics = {**merged, "sampling/rounds": len(batches),
                       "sampling/informative_fraction": informative / max(generated, 1),
                       "sampling/padded_groups": padded, "sampling/prompts_generated": generated,
                       "sampling/cap_hit": float(cap_hit), **self.record(informative, generated, reduce),
                       **self.after(out, reduce)}
        if padded:
            log.warning("dynamic sampling: %d of %d groups had signal after %d round(s); the batch is padded "
                        "with %d zero-weight copies%s", informative, quota, len(batches), padded,
                        " (safety cap max_rounds reached)" if cap_hit else "")
        return out


@register("filter", "dynamic_sampling")
class DynamicSampling(_Rounds):
    """Drop zero-variance groups and generate more (DAPO sec. 3.2): rounds of the missing number of prompts,
    at most ``max_rounds`` (DAPO's max_num_gen_batches); with ``until_full`` the rounds go on until the batch
    is full (DLER, methods.md sec. 2) and ``safety_cap`` rounds stop a run whose groups never carry signal,
    reported as ``sampling/cap_hit``. A batch still short is padded with zero-weight copies of informative
    groups (``sampling/padded_groups``, with a warning): the step trains on the informative groups only."""

    def __init__(self, metric: Literal["correct", "reward", "shaped"] = "correct", max_rounds: int = 3,
                 until_full: bool = False, safety_cap: int = 64):
        if max_rounds < 1 or safety_cap < 1:
            raise ValueError(f"dynamic_sampling: max_rounds and safety_cap must be >= 1, got {max_rounds} / "
                             f"{safety_cap}")
        self.metric, self.until_full = metric, until_full
        self._declare()
        self.max_rounds = safety_cap if until_full else max_rounds


@register("filter", "predictive_sampling")
class PredictiveOversampling(_Rounds):
    """DOT's Predictive Dynamic Sampling (Wu et al. arXiv 2601.03969; methods.md sec. 6): one generation round
    of floor(B * f) prompts with f = clip((1 / mean(h)) * (1 + std(h)), f_min, f_max), h the last `window`
    per-step pass rates (informative groups / prompts sampled, over all ranks); f = f_max when mean(h) = 0
    and f_init before any history. std is the population standard deviation (ddof 0), as DOT's code
    (``np.std`` in dot_ray_trainer.py ``predict_oversample_factor``): h = [0.2, 0.6] gives f = 2.5 * 1.2 = 3.0,
    384 prompts at B = 128 (the sample std would give 3.207, 410). A short batch is padded with zero-weight
    copies (``fill_quota``). Paper (run_dot.sh): window 20, f_init 1.5, f_min 1.2, f_max 5.0. The history is
    checkpointed."""

    needs_verifier = False  # the default metric is "reward"

    def __init__(self, metric: Literal["correct", "reward", "shaped"] = "reward", window: int = 20,
                 f_init: float = 1.5, f_min: float = 1.2, f_max: float = 5.0):
        self.metric, self.window, self.f_init, self.f_min, self.f_max = metric, window, f_init, f_min, f_max
        self._declare()
        self.history: list[float] = []

    def factor(self) -> float:
        if not self.history:
            return self.f_init
        h = self.history
        mean = sum(h) / len(h)
        if mean <= 0:
            return self.f_max
        std = math.sqrt(sum((x - mean) ** 2 for x in h) / len(h))  # population std (np.std), not ddof 1
        return min(self.f_max, max(self.f_min, (1 / mean) * (1 + std)))

    def prompts_for(self, quota: int, need: int) -> int:
        return max(quota, int(quota * self.factor()))

    def record(self, informative: int, generated: int, reduce) -> dict:
        rate = reduce(torch.tensor([float(informative), float(generated)]), "sum")
        factor = self.factor()
        self.history = (self.history + [float(rate[0] / rate[1].clamp(min=1))])[-self.window:]
        return {"sampling/oversampling_factor": factor}

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])


@register("filter", "decs_curriculum")
class DECSCurriculum(_Rounds):
    """DECS's curriculum data scheduling (Jiang et al., "Overthinking Reduction with Decoupled Rewards and Curriculum
    Data Scheduling", ICLR 2026, arXiv 2509.25827; released pixas/DECS src_valid/valid_ray_trainer.py, the
    ``filter_groups.enable_kappa`` branch, on in scripts/train/*/train_rl_chunk*.sh): dynamic sampling (groups with
    no variance in ``metric`` dropped, rounds until the quota or ``max_rounds``) that adds back all-correct groups in
    a share kappa of the kept ones, kappa following the necessary-reasoning-prefix (NRP) ratio that
    ``decs_redundancy`` reports (its ``nrp_ratio``, the column ``ratio``):

        kappa_t = kappa_{t-1} + kappa_lr (r_t - r_{t-1}),   kappa_0 = 0,  r_0 = 0.5   (code L1661-1665)

    with r_t the mean ratio over the step's batch (every rank's samples that have one), so kappa_t = kappa_lr
    (r_t - 1/2): the later a correct answer first appears in its reasoning (less redundancy after it), the more
    easy groups the next step trains on. While kappa > 0 each round adds int(kappa c / (1 - kappa)) all-correct groups
    (mean of the metric > 0, no variance), at most as many as the round has, drawn at random; c counts the groups
    kept since the last addition (code L1560-1570). The rule is the released single driver's over the whole step:
    c and the draw span every rank's groups (the draw is the same on every rank, each takes its own); a round's
    groups stay in their order and the batch is the first ``quota``. ``round_prompts``: each round generates that multiple of the quota (released gen_batch_size 128 for
    64 prompts: 2.0); None generates the missing number, as ``dynamic_sampling``.

    Deviations: a step without any ratio (no correct sample with a necessary prefix) leaves kappa and r as they are
    (the released mean is NaN there, and kappa NaN for the rest of the run); a batch still short after ``max_rounds``
    is padded with zero-weight copies (``fill_quota``, as dynamic_sampling) where the released trainer raises; the
    draws use a generator seeded by ``seed`` and the step count (checkpointed with kappa and r). Metrics:
    ``sampling/kappa`` (the value this step's rounds used), ``sampling/easy_groups`` (the all-correct groups they
    added, all ranks), ``reward/decs_redundancy/nrp_ratio`` (the reward's report)."""

    needs_terms = ("decs_redundancy/nrp_ratio",)  # the default ``ratio``; a built one declares its own

    def __init__(self, metric: Literal["correct", "reward", "shaped"] = "correct", max_rounds: int = 10,
                 kappa_lr: float = 0.2, ratio: str = "decs_redundancy/nrp_ratio", round_prompts: float | None = None,
                 seed: int = 0):
        if max_rounds < 1:
            raise ValueError(f"decs_curriculum: max_rounds must be >= 1, got {max_rounds}")
        if not 0 <= kappa_lr < 2:  # kappa = kappa_lr (r - 1/2) with r in (0, 1]: below 1, as int(kappa c / (1 - kappa))
            raise ValueError(f"decs_curriculum: kappa_lr must be in [0, 2) (kappa = kappa_lr (r - 0.5) must stay "
                             f"below 1), got {kappa_lr}")
        if round_prompts is not None and not round_prompts >= 1:
            raise ValueError(f"decs_curriculum: round_prompts must be >= 1 (a multiple of the quota) or null, got "
                             f"{round_prompts}")
        self.metric, self.max_rounds, self.kappa_lr, self.ratio = metric, int(max_rounds), float(kappa_lr), ratio
        self.round_prompts, self.seed = round_prompts, int(seed)
        self._declare()
        self.needs_terms = (ratio,)
        self.kappa, self.last_ratio, self.steps = 0.0, 0.5, 0
        self._carried = self._added = 0
        self._rng = random.Random(0)

    def prompts_for(self, quota: int, need: int) -> int:
        return need if self.round_prompts is None else max(need, int(quota * self.round_prompts))

    def collect(self, quota, produce, reduce) -> StepBatch:
        self._carried = self._added = 0
        self._rng = random.Random(self.seed * 1_000_003 + self.steps)
        return super().collect(quota, produce, reduce)

    def admit(self, batch: StepBatch, good: set[int], where: int, reduce) -> tuple[list, list]:
        values, ids = self._values(batch), batch.group_ids
        easy = []
        for idx in group_index(ids):
            v = values[idx]
            v = v[~torch.isnan(v)]
            g = int(ids[idx[0]])
            if g not in good and v.numel() and float(v.min()) == float(v.max()) and float(v[0]) > 0:
                easy.append(g)
        joined = set(good)
        if self.kappa > 0:  # the same on every rank: all of them make this exchange
            rank, world = _rank_world()
            counts = torch.zeros(world + 1, dtype=torch.float64)
            counts[rank], counts[world] = len(easy), len(good)
            counts = reduce(counts, "sum")  # each rank's all-correct groups, and the informative ones of all
            self._carried += int(counts[world])
            slots = [(r, k) for r in range(world) for k in range(int(counts[r]))]
            add = len(slots) if self.kappa >= 1 else int(self.kappa * self._carried / (1 - self.kappa))
            if add > 0:
                self._carried = 0
            add = min(add, len(slots))
            joined |= {easy[k] for r, k in self._rng.sample(slots, add) if r == rank}
            self._added += add
        return ([(where, g) for g in sorted(joined)],
                [(where, g) for g in range(len(batch.prompts)) if g not in joined])

    def after(self, batch: StepBatch, reduce) -> dict:
        column = batch.terms.get(self.ratio)
        if column is None:
            raise ValueError(f"decs_curriculum reads the per-sample column {self.ratio!r} (decs_redundancy's "
                             f"nrp_ratio report), but the batch has only {sorted(batch.terms)}")
        mine = column[batch.real]
        mine = mine[~torch.isnan(mine)]
        total = reduce(torch.tensor([float(mine.sum()), float(mine.numel())], dtype=torch.float64), "sum")
        used = self.kappa
        if float(total[1]) > 0:
            mean = float(total[0] / total[1])
            if self.last_ratio != 0:
                self.kappa += (mean - self.last_ratio) * self.kappa_lr
            self.last_ratio = mean
        self.steps += 1
        return {"sampling/kappa": used, "sampling/easy_groups": self._added}

    def state_dict(self) -> dict:
        return {"kappa": self.kappa, "last_ratio": self.last_ratio, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.kappa, self.last_ratio, self.steps = float(state["kappa"]), float(state["last_ratio"]), int(state["steps"])
