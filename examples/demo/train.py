"""The demo (what `make demo` runs) with rlkit's Python API: DLER scaled to CPU, the before/after table with AES,
then the report plots.

    python examples/demo/train.py [key.sub=value ...]
    accelerate launch --num_processes 2 examples/demo/train.py
"""

import os
import sys
from pathlib import Path

import rlkit


def main(argv: list[str]) -> None:
    cfg = rlkit.load_config(Path(__file__).with_name("config.yaml"), overrides=argv, recipes=["dler"])
    result = rlkit.train(cfg, overwrite=True)  # prints the before/after table
    if os.environ.get("RANK", "0") == "0":
        rlkit.report([result.run_dir])


if __name__ == "__main__":
    main(sys.argv[1:])
