"""The error policy: a user's mistake is a ``UserError``; anything else is an internal error.

The CLI prints a ``UserError`` as one line, ``rlkit: error: <message>``, and exits with status 2 (a traceback
only with ``--debug``); any other exception is a bug and keeps its traceback (exit status 1). Every
message says what is wrong and where: the config key and file, the data file and line, the reward, the
step and the sample, or the checkpoint file.

This module imports nothing: every layer may import it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user gave rlkit (config, data, reward code, paths, checkpoints)."""


class CheckpointError(UserError):
    """A checkpoint or run directory cannot be used as asked (missing, incomplete, unsafe, incompatible)."""


class ServerError(UserError):
    """A vLLM server the run depends on is unreachable, refuses, fails or does not answer in time (the message
    names the server and the phase: connecting, generation, weight sync)."""


class TrainingDiverged(UserError):
    """A loss or gradient norm that is not finite: the run stops before the update is applied (and before any
    checkpoint could hold it), naming the step."""
