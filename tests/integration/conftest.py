import pytest


@pytest.fixture(scope="session")
def engine(tiny_model_dir):
    """One in-process vLLM CPU engine on the tiny model, shared by the integration tests (tests that push
    other weights restore the original ones)."""
    from rlkit.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(str(tiny_model_dir), max_model_len=512, kv_cache_gib=1)
