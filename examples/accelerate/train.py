"""Any config under `accelerate launch` with one of the accelerate config files here (DDP, ZeRO-2/3, FSDP2).

    accelerate launch --config_file examples/accelerate/ddp.yaml examples/accelerate/train.py [CONFIG] [key=value ...]
    python examples/accelerate/train.py [CONFIG] [key.sub=value ...]      # one process
"""

import os
import sys

import rlkit


def main(argv: list[str]) -> None:
    config = argv[0] if argv and not argv[0].startswith("-") and "=" not in argv[0] else None
    cfg = rlkit.load_config(config, overrides=argv[1:] if config else argv)
    result = rlkit.train(cfg, overwrite=True)
    if os.environ.get("RANK", "0") == "0":
        print(f"trained {result.steps_done} steps on {os.environ.get('WORLD_SIZE', '1')} process(es): "
              f"{result.run_dir}; held-out after: {result.after}")


if __name__ == "__main__":
    main(sys.argv[1:])
