"""Module-level task functions for the reward pool tests: spawned workers import this module by name
(pytest puts tests/unit on sys.path, and spawn hands sys.path to the children)."""

import os
import time


def square_or_hang(x):
    """x * x, except 3: hangs (the pool must kill its worker)."""
    if x == 3:
        time.sleep(600)
    return x * x


def square_or_raise(x):
    """x * x, except 2: raises ValueError."""
    if x == 2:
        raise ValueError(f"no square for {x}")
    return x * x


def square_or_die(x):
    """x * x, except 1: the worker process exits abruptly."""
    if x == 1:
        os._exit(3)
    return x * x


def verify_or_hang(task):
    """math_correct's per-sample task, except a completion "hang": hangs."""
    from rlkit.rewards.builtin import _verify_sample

    if task[1] == "hang":
        time.sleep(600)
    return _verify_sample(task)


def pid(_):
    return os.getpid()


def heavy_modules_loaded(_):
    """Which of torch / vllm a worker has imported (a worker must start light)."""
    import sys

    return sorted(m for m in ("torch", "vllm") if m in sys.modules)
