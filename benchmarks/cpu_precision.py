"""How fast bf16 and fp16 run on this CPU against fp32: a 512 x 512 matmul (fp32, bf16, fp16), and a forward +
backward of the ``medium`` GPT-2 (6 x 512, 8 rows of 64 tokens) in fp32 and under bf16 autocast (fp16 autocast on a
CPU without fp16 arithmetic is too slow to wait for), interleaved, medians.

    python benchmarks/cpu_precision.py [--rounds 5] [--threads 2]

Prints one JSON line: median seconds per dtype and the speed of each half precision relative to fp32 (above 1:
faster). This is the number behind ``train.precision``'s refusal on the CPU (README, "Precision").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

DTYPES = ("fp32", "bf16", "fp16")


def timed(fn, repeats: int = 3) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    import ppo_throughput as bench
    from ppo_core.modeling.loading import load_causal_lm

    torch.set_num_threads(args.threads)
    kinds = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    matrices = {name: (torch.randn(512, 512).to(kind), torch.randn(512, 512).to(kind))
                for name, kind in kinds.items()}
    model = load_causal_lm(str(bench.model_dir("medium", 128)))
    tokens = torch.randint(4, 99, (8, 64))

    def forward_backward(name: str):
        def run():
            model.zero_grad(set_to_none=True)
            if name == "fp32":
                logits = model(input_ids=tokens).logits
            else:
                with torch.autocast("cpu", dtype=kinds[name]):
                    logits = model(input_ids=tokens).logits
            logits.float().logsumexp(-1).mean().backward()
        return run

    model_dtypes = ("fp32", "bf16")
    seconds = {"matmul": {name: [] for name in DTYPES}, "medium_forward_backward": {name: [] for name in model_dtypes}}
    for round_ in range(args.rounds):
        for name in (DTYPES if round_ % 2 == 0 else DTYPES[::-1]):
            a, b = matrices[name]
            seconds["matmul"][name].append(timed(lambda: torch.mm(a, b)))
            if name in model_dtypes:
                seconds["medium_forward_backward"][name].append(timed(forward_backward(name), repeats=1))
    result = {}
    for workload, per_dtype in seconds.items():
        medians = {name: statistics.median(values) for name, values in per_dtype.items()}
        result[workload] = {"median_s": {k: round(v, 4) for k, v in medians.items()},
                            **{f"{name}_speed_vs_fp32": round(medians["fp32"] / medians[name], 3)
                               for name in medians if name != "fp32"}}
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, **result}))


if __name__ == "__main__":
    main()
