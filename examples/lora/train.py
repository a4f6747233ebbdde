"""LoRA with rlkit's Python API (config.yaml here), then the adapter checkpoint evaluated against the base model
(the adapter is merged into its base for generation; token reduction and AES against the base).

    python examples/lora/train.py [key.sub=value ...]
    accelerate launch --num_processes 2 examples/lora/train.py
"""

import os
import sys
from pathlib import Path

import rlkit


def main(argv: list[str]) -> None:
    cfg = rlkit.load_config(Path(__file__).with_name("config.yaml"), overrides=argv)
    base = cfg.model.name_or_path
    result = rlkit.train(cfg, overwrite=True)
    if os.environ.get("RANK", "0") != "0":
        return
    cfg.model.name_or_path = str(result.run_dir / "checkpoints" / f"step_{result.steps_done:06d}" / "policy")
    rlkit.evaluate(cfg, ["held_out"], rlkit.EvalSettings(k=2), baseline_model=base)


if __name__ == "__main__":
    main(sys.argv[1:])
