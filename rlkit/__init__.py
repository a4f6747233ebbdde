"""rlkit: RL post-training for efficient reasoning.

The Python API (the CLI is a thin layer over it)::

    import rlkit

    cfg = rlkit.load_config("my.yaml", overrides=["train.steps=20"], recipes=["dler"])
    result = rlkit.train(cfg)                                     # RunResult: run_dir, before/after, metrics
    rlkit.evaluate(cfg, ["gsm8k", "svamp"], rlkit.EvalSettings(k=4))   # the `rlkit eval` suite
    rlkit.report([result.run_dir])                                # the `rlkit report` PNGs

    @rlkit.register_reward("brevity")                             # a reward usable by name in configs
    def brevity(prompts, completions, completion_ids, *, num_tokens, **kwargs): ...

Import-light on purpose (architecture rule 11): importing `rlkit` or `rlkit.rewards` never imports vLLM,
DeepSpeed or Triton; the names above load their modules on first use.
"""

__version__ = "0.1.0"

_API = {
    "load_config": ("rlkit.config", "load_config"),
    "Config": ("rlkit.config", "Config"),
    "train": ("rlkit.api", "train"),
    "RunResult": ("rlkit.trainers.grpo", "RunResult"),
    "evaluate": ("rlkit.evals.suite", "evaluate_suite"),
    "EvalSettings": ("rlkit.evals.suite", "EvalSettings"),
    "report": ("rlkit.plots", "report"),
    "register_reward": ("rlkit.rewards.registry", "register_reward"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attr = _API[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")
