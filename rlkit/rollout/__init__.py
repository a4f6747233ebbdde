"""Rollout engines behind a narrow protocol (DESIGN rule 10): generate, update_weights, sleep, wake.

`make_engine` builds the configured engine; vLLM is imported only when the vLLM engine is built.
"""

from rlkit.rollout.base import RolloutEngine, Sample, SamplingSpec, make_engine  # noqa: F401
