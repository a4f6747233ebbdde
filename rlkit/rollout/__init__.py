"""Rollout engines behind a narrow protocol (architecture rule 10): generate, update_weights, sleep, wake.

`make_engine` builds the configured engine; vLLM is imported only when the vLLM engine is built.
"""

from rlkit.records import Sample  # noqa: F401
from rlkit.rollout.base import Rollout, RolloutEngine, SamplingSpec  # noqa: F401
from rlkit.rollout.factory import make_engine, make_rollout  # noqa: F401
