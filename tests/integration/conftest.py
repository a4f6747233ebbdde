import pytest


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """An in-process vLLM CPU engine on the tiny model, one per test module (tests that push other weights
    restore the original ones). Not session-wide: vLLM keeps process-global parallel state, which the
    engines that trainer runs build and tear down, so an engine must be built after the last such run."""
    from rlkit.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(str(tiny_model_dir), max_model_len=512, kv_cache_gib=1)
