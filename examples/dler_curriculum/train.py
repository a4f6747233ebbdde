"""DLER truncation + a token-budget curriculum (the `dler` recipe under config.yaml here), then SVAMP against the
untrained model: token reduction and the accuracy-efficiency score.

    python examples/dler_curriculum/train.py [key.sub=value ...]
    accelerate launch --num_processes 2 examples/dler_curriculum/train.py
"""

import os
import sys
from pathlib import Path

import rlkit


def main(argv: list[str]) -> None:
    cfg = rlkit.load_config(Path(__file__).with_name("config.yaml"), overrides=argv, recipes=["dler"])
    base = cfg.model.name_or_path
    result = rlkit.train(cfg, overwrite=True)
    if os.environ.get("RANK", "0") != "0":
        return
    cfg.model.name_or_path = str(result.run_dir / "checkpoints" / f"step_{result.steps_done:06d}" / "policy")
    rlkit.evaluate(cfg, ["svamp"], rlkit.EvalSettings(k=4, limit=int(os.environ.get("EVAL_LIMIT", "0"))),
                   baseline_model=base)


if __name__ == "__main__":
    main(sys.argv[1:])
