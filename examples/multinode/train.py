"""Training against vLLM servers with rlkit's Python API (config.yaml here); start the servers first with
`rlkit serve MODEL` and pass their URLs.

    python examples/multinode/train.py 'rollout.server_urls=["http://infer-0:8000"]' [key.sub=value ...]
    accelerate launch --config_file examples/accelerate/zero3.yaml examples/multinode/train.py 'rollout.server_urls=[...]'
    # two nodes, one launcher each (zero3.yaml's deepspeed_multinode_launcher: standard makes them one job):
    accelerate launch --config_file examples/accelerate/zero3.yaml --num_machines 2 --num_processes 16 \
        --machine_rank $NODE_RANK --main_process_ip train-0 --main_process_port 29500 \
        examples/multinode/train.py 'rollout.server_urls=["http://infer-0:8000"]'
"""

import sys
from pathlib import Path

import rlkit


def main(argv: list[str]) -> None:
    cfg = rlkit.load_config(Path(__file__).with_name("config.yaml"), overrides=argv)
    result = rlkit.train(cfg, resume="auto")  # a server fault stops the run; run again to continue
    print(f"done: {result.steps_done} steps in {result.run_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
