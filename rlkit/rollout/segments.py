"""Segment rollouts (UloRL, Du et al. 2025, arXiv 2507.19766, Algorithm 1; methods.md section 8).

Each training step decodes at most ``segment_len`` new tokens per sample. A sample that emits EOS, or
reaches ``max_total_len``, is finished; any other sample stays in the *unfinished pool* with its prefix and
continues in the next step, under whatever policy the engine holds then (the continuation re-prefills
prompt + prefix; vLLM's prefix cache makes that cheap until the next weight sync resets it).

Groups: a GRPO advantage needs all G members of a group, so the worker buffers members by group and
*releases* a group only when all of its members are finished (the paper leaves this open; a third-party
verl port trains complete groups with a minimum count, which is what we do). ``min_groups``: if fewer
complete groups than that are ready, the worker decodes another segment round within the same step
(no weight change in between). ``max_wait``: a group older than that many steps is released with its
unfinished members cut where they are (finish_reason "length").

Every completion token records the policy ``versions`` that produced it and the ``segments`` index
(0, 1, ...) of the round that produced it. Which old logprobs the ratio is taken against across versions (POIS:
recomputed by the trainer; SAIS: the engine's) is ``rollout.importance``, read by ``SegmentedRollout`` in
rlkit.rollout.factory (its ``old_from_engine``) and applied by the trainer (rlkit.trainers.grpo); the pool is
saved in checkpoints via ``state_dict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rlkit.records import Prompt, Sample
from rlkit.rollout.base import RolloutEngine, SamplingSpec


@dataclass
class PoolGroup:
    """One prompt's G samples, some still being decoded."""

    key: int  # unique over the run
    prompt: Prompt
    members: list[Sample]
    done: list[bool]
    born: int  # training step when decoding started
    forced: bool = False  # released by the max-wait cap

    def complete(self) -> bool:
        return all(self.done)


@dataclass
class SegmentRolloutWorker:
    """Carry unfinished samples across steps over any ``RolloutEngine``.

    ``step(new_prompts, spec, step)`` starts one group of ``spec.n`` samples per new prompt, decodes one
    segment for every unfinished sample in the pool (more rounds while fewer than ``min_groups`` groups
    are complete), and returns the released complete groups plus metrics.
    """

    engine: RolloutEngine
    segment_len: int
    max_total_len: int
    min_groups: int = 1  # 0: exactly one round per step, whatever is complete
    max_wait: int = 0  # 0: no cap beyond max_total_len
    decode: object = None  # tokenizer.decode-like callable for the full completion text; None: joined segment texts
    pool: list[PoolGroup] = field(default_factory=list)
    next_key: int = 0

    def __post_init__(self):
        if self.segment_len < 1 or self.max_total_len < 1:
            raise ValueError(f"segment_len ({self.segment_len}) and max_total_len ({self.max_total_len}) must be >= 1")

    def step(self, new_prompts: list[Prompt], spec: SamplingSpec, step: int) -> tuple[list[PoolGroup], dict]:
        for p in new_prompts:
            members = [Sample(list(p.ids), [], [], "length", "", 0, []) for _ in range(spec.n)]
            self.pool.append(PoolGroup(self.next_key, p, members, [False] * spec.n, step))
            self.next_key += 1
        released, rounds, decoded = [], 0, 0
        while True:
            decoded += self._decode_round(spec, rounds)
            rounds += 1
            released += self._release(step)
            if len(released) >= self.min_groups or not self.pool:
                break
        members = [m for g in released for m in g.members]
        metrics = {
            "segments/rounds": rounds, "segments/decoded_tokens": decoded,
            "segments/released_groups": len(released),
            "segments/pool_groups": len(self.pool),
            "segments/pool_unfinished": sum(d is False for g in self.pool for d in g.done),
            "segments/mean_wait_steps": sum(step - g.born for g in released) / max(len(released), 1),
            "segments/mean_segments": sum(len(set(m.segments)) for m in members) / max(len(members), 1),
            "segments/forced_groups": sum(g.forced for g in released),
        }
        return released, metrics

    def _decode_round(self, spec: SamplingSpec, round_idx: int) -> int:
        """One segment for every unfinished sample: untouched groups as one n-sample request (shared
        prefix), started ones as one continuation request per member. Returns tokens decoded."""
        requests: list[tuple[list[int], SamplingSpec, list[tuple[PoolGroup, int]]]] = []
        for g in self.pool:
            if not any(m.completion_ids for m in g.members) and not any(g.done):
                requests.append((g.members[0].prompt_ids, self._spec(spec, len(requests), round_idx, spec.n, 0),
                                 [(g, i) for i in range(len(g.members))]))
                continue
            for i, m in enumerate(g.members):
                if not g.done[i]:
                    requests.append((m.prompt_ids + m.completion_ids,
                                     self._spec(spec, len(requests), round_idx, 1, m.num_tokens),
                                     [(g, i)]))
        if not requests:
            return 0
        outputs = self.engine.generate([r[0] for r in requests], [r[1] for r in requests])
        by_request: dict[int, list[Sample]] = {}
        for s in outputs:
            by_request.setdefault(s.group_id, []).append(s)
        decoded = 0
        for k, (_, _, targets) in enumerate(requests):
            for (g, i), out in zip(targets, by_request.get(k, [])):
                g.members[i] = self._stitch(g.members[i], out)
                decoded += out.num_tokens
                g.done[i] = out.finish_reason == "stop" or g.members[i].num_tokens >= self.max_total_len
        return decoded

    def _spec(self, spec: SamplingSpec, k: int, round_idx: int, n: int, so_far: int) -> SamplingSpec:
        seed = None if spec.seed is None else spec.seed + 7919 * k + 104_729 * round_idx
        return dataclasses.replace(spec, n=n, seed=seed, logprobs=True,
                                   max_new_tokens=min(self.segment_len, self.max_total_len - so_far))

    def _stitch(self, member: Sample, out: Sample) -> Sample:
        seg = member.segments[-1] + 1 if member.segments else 0
        ids = member.completion_ids + out.completion_ids
        return dataclasses.replace(member, completion_ids=ids, logprobs=member.logprobs + out.logprobs,
                                   versions=member.versions + out.versions, text=member.text + out.text,
                                   finish_reason=out.finish_reason,  # "stop" on EOS, else "length"
                                   segments=member.segments + [seg] * out.num_tokens)

    def _release(self, step: int) -> list[PoolGroup]:
        released, kept = [], []
        for g in self.pool:
            if not g.complete() and self.max_wait and step - g.born >= self.max_wait:
                g.done, g.forced = [True] * len(g.done), True  # cut where they are: finish_reason stays "length"
            (released if g.complete() else kept).append(g)
        self.pool = kept
        if self.decode is not None:  # the whole completion once, not per segment (a token may span a boundary)
            for g in released:
                g.members = [dataclasses.replace(m, text=self.decode(m.completion_ids)) for m in g.members]
        return released

    def state_dict(self) -> dict:
        return {"next_key": self.next_key, "pool": [
            {"key": g.key, "prompt": dataclasses.asdict(g.prompt), "members": [dataclasses.asdict(m) for m in g.members],
             "done": list(g.done), "born": g.born, "forced": g.forced} for g in self.pool]}

    def load_state_dict(self, state: dict) -> None:
        self.next_key = state["next_key"]
        self.pool = [PoolGroup(d["key"], Prompt(**d["prompt"]), [Sample(**m) for m in d["members"]], list(d["done"]),
                               d["born"], d.get("forced", False)) for d in state["pool"]]
