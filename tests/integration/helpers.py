"""Rewards used by the integration tests (importable as `helpers:<name>`)."""

import time

from rlkit.algorithms.losses import ClipOptions


def digit_fraction(prompts, completions, completion_ids, **kwargs):
    """Fraction of completion characters that are digits: varies across random completions."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) + (len(set(ids)) % 3) * 0.1
            for c, ids in zip(completions, completion_ids)]


def fails_at_step_two(prompts, completions, completion_ids, step, **kwargs):
    """Raises on training step index 1 (the second step), for the bad-input test."""
    if step == 1:
        raise ValueError("reward backend unavailable")
    return [0.0] * len(completions)


def sleeps_at_step_two(prompts, completions, completion_ids, step, **kwargs):
    """Hangs (sleeps an hour) on training step index 1 (the second step), for the reward timeout tests;
    varies with the completion otherwise."""
    if step == 1:
        time.sleep(3600)
    return [(len(set(ids)) % 3) / 2 for ids in completion_ids]


def yields_values(prompts, completions, completion_ids, **kwargs):
    """A reward written with `yield` by mistake: it returns a generator, not a list."""
    for c in completions:
        yield float(len(c) % 2)


def even_answers_only(prompts, completions, completion_ids, answer, **kwargs):
    """Varies with the completion for prompts whose gold answer is even; constant 0 for odd ones
    (so those groups have zero variance and dynamic sampling must drop them)."""
    return [(len(set(ids)) % 5) / 4 if float(a) % 2 == 0 else 0.0 for a, ids in zip(answer, completion_ids)]


def parity_verifier(prompts, completions, completion_ids, **kwargs):
    """A stand-in verifier (0/1) that a random model passes about half the time."""
    return [float(len(set(ids)) % 2) for ids in completion_ids]


def mentions_budget(prompts, completions, completion_ids, budget, **kwargs):
    """1.0 when the prompt text carries the sample's budget sentence (curriculum injection check)."""
    return [1.0 if f"use exactly {b} tokens" in p else 0.0 for p, b in zip(prompts, budget)]


def always_correct(prompts, completions, completion_ids, **kwargs):
    """A verifier that accepts everything (all groups are all-correct)."""
    return [1.0] * len(completions)


def length_over_100(prompts, completions, completion_ids, num_tokens, **kwargs):
    """num_tokens / 100: shows whether a sample was re-scored after truncation."""
    return [n / 100 for n in num_tokens]


def even_length_correct(prompts, completions, completion_ids, **kwargs):
    """A verifier (0/1) that accepts completions of even length."""
    return [float(len(ids) % 2 == 0) for ids in completion_ids]


def fails_on_process_one(prompts, completions, completion_ids, step, **kwargs):
    """Raises on the second process (RANK 1) at the first step, for the multi-process error test."""
    import os

    if os.environ.get("RANK") == "1" and step == 0:
        raise ValueError("judge server unreachable")
    return [0.0] * len(completions)


def signals_server_at_step(prompts, completions, completion_ids, step, **kwargs):
    """Sends RLKIT_TEST_SIGNAL (SIGSTOP / SIGKILL) to the vLLM server process RLKIT_TEST_SERVER_PID at training
    step index RLKIT_TEST_SIGNAL_STEP (the server-fault test); varies with the completion otherwise."""
    import os
    import signal

    if os.environ.get("RLKIT_TEST_SIGNAL") and step == int(os.environ.get("RLKIT_TEST_SIGNAL_STEP", "-1")):
        os.kill(int(os.environ["RLKIT_TEST_SERVER_PID"]), getattr(signal, os.environ["RLKIT_TEST_SIGNAL"]))
    return [(len(set(ids)) % 3) / 2 for ids in completion_ids]


def nan_loss(inp, options: ClipOptions = ClipOptions()):
    """ppo_clip with a NaN loss: a run that diverges at its first micro-batch."""
    import dataclasses

    from rlkit.algorithms.losses import ppo_clip_loss

    out = ppo_clip_loss(inp, options)
    return dataclasses.replace(out, loss=out.loss * float("nan"))


def exits(prompts, completions, completion_ids, **kwargs):
    """A reward with a bug: it ends the process."""
    import sys

    sys.exit(3)


def waits_for_release(prompts, completions, completion_ids, **kwargs):
    """Blocks (up to 5 minutes) until the file named by RLKIT_TEST_RELEASE exists: holds a run at its first reward
    while a test starts another one into the same output_dir."""
    import os
    import time
    from pathlib import Path

    release = Path(os.environ["RLKIT_TEST_RELEASE"])
    deadline = time.monotonic() + 300
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return [0.1 * (len(set(ids)) % 3) for ids in completion_ids]


class ScoringModel:
    """A stand-in for a model-based reward with the full lifecycle: counts its builds, keeps what `setup` gave it,
    a state (batches scored) saved in checkpoints, `close`; declares whole-batch failures (no per-sample retry)."""

    builds, contexts, closed = [], [], []
    batch_errors = "whole_batch"

    def __init__(self, scale: float = 1.0):
        ScoringModel.builds.append(scale)
        self.scale, self.batches = scale, 0

    def setup(self, context):
        ScoringModel.contexts.append(context)

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.batches += 1
        return [self.scale * ((len(set(ids)) % 3) / 2) for ids in completion_ids]

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]

    def close(self):
        ScoringModel.closed.append(self.batches)


SEEN_TEXTS: list[str] = []


def records_texts(prompts, completions, completion_ids, **kwargs):
    """Remembers every completion text it scores (SEEN_TEXTS); varies with the completion."""
    SEEN_TEXTS.extend(completions)
    return [(len(set(ids)) % 3) / 2 for ids in completion_ids]


class HangsOnClose:
    """A reward whose ``close`` never returns (a scoring server that does not answer its shutdown)."""

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        return [float(len(ids) % 2) for ids in completion_ids]

    def close(self):
        import threading

        threading.Event().wait()


class FailsInSetup:
    """A reward whose ``setup`` raises (a scoring model that cannot load)."""

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        return [0.0 for _ in completions]

    def setup(self, context):
        raise RuntimeError("the scoring model's weights are missing")
