"""GRPO on GSM8K with rlkit's Python API: the run of config.yaml here, then the GSM8K test set at k = 4.

    python examples/gsm8k/train.py [key.sub=value ...]           # e.g. train.steps=20 model.name_or_path=...
    accelerate launch --num_processes 2 examples/gsm8k/train.py
"""

import os
import sys
from pathlib import Path

import rlkit


def main(argv: list[str]) -> None:
    cfg = rlkit.load_config(Path(__file__).with_name("config.yaml"), overrides=argv)
    result = rlkit.train(cfg, overwrite=True)
    if os.environ.get("RANK", "0") != "0":  # training is over (its process group is gone): one process evaluates
        return
    cfg.model.name_or_path = str(result.run_dir / "checkpoints" / f"step_{result.steps_done:06d}" / "policy")
    rlkit.evaluate(cfg, ["gsm8k"], rlkit.EvalSettings(k=4, limit=int(os.environ.get("EVAL_LIMIT", "0"))))


if __name__ == "__main__":
    main(sys.argv[1:])
