"""Peak memory and speed of PPO under the memory options, interleaved: full fine-tuning, LoRA (``model.lora``),
gradient checkpointing (``model.gradient_checkpointing``) and their combination.

    python benchmarks/memory.py [--modes full,checkpointing] [--size medium] [--max-new-tokens 128]
                                [--updates 2] [--rounds 2] [--rank 8] [--set KEY=VALUE ...] [--release-freed-memory]

The workload is benchmarks/ppo_throughput.py's (the TRL baseline's: 64 rollouts, 4 epochs x 4 minibatches of 16,
a random GPT-2 ``small`` 4x256, ``medium`` 6x512 or ``large`` 12x1024 (this benchmark's own size), the shared
critic), built by its ``make_config``, with at most ``--max-new-tokens`` new tokens (the model gets 256 positions
when 128 would not hold prompt + response). LoRA puts
rank-``--rank`` adapters on every linear layer (``target_modules: all-linear``). Each run is its own subprocess,
so its peak is its own; round r runs the modes in order, round r+1 in reverse order (A, B / B, A ...). ``--set``
adds config overrides to every mode (``generation.batch_size=16``: the rollout samples 16 rows at a time;
``ppo.epochs=1``: a quicker run with the same peaks from the second minibatch on).

Two measures of memory, both per run:

- ``peak_rss_mib``: the process's peak resident set (``ru_maxrss``): what the machine must have, and what an
  out-of-memory killer sees. It includes the shared libraries (``base_rss_mib``: right after importing torch and
  transformers) and memory that glibc's malloc keeps after torch frees it.
- ``peak_live_mib``: the peak of the bytes glibc's malloc has handed out and not yet got back (``mallinfo2``:
  ``uordblks + hblkhd``, sampled every 2 ms by a thread): the live tensors and Python objects, without the
  libraries and without the freed memory malloc keeps. torch has no allocator statistics on the CPU
  (``torch.cuda.max_memory_allocated`` is CUDA only), so this is the closest to them; 0 off glibc.

Each is also given per phase of the updates (``rollout``: sampling, log-probs, scoring; ``optimise``: the epochs),
so the part that sets the peak is visible. ``--release-freed-memory`` runs every mode with glibc's own tunables
``MALLOC_MMAP_THRESHOLD_=131072 MALLOC_TRIM_THRESHOLD_=131072`` (every block over 128 KiB is mapped on its own and
unmapped when torch frees it, so the RSS follows the live bytes; README, "Memory").

Prints one JSON line: medians per mode (peaks, per-phase peaks, sec/update) and each mode's ratios to the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: sizes beyond init-model's, for where the ratios go when the model, not the libraries, dominates the peak
EXTRA_SIZES = {"large": dict(n_layer=12, n_head=16, n_embd=1024, n_positions=128)}

MODES = {
    "full": [],
    "lora": ["model.lora={{r: {rank}, alpha: {alpha}, target_modules: all-linear}}"],
    "checkpointing": ["model.gradient_checkpointing=true"],
    "lora+checkpointing": ["model.lora={{r: {rank}, alpha: {alpha}, target_modules: all-linear}}",
                           "model.gradient_checkpointing=true"],
}

RUN = r"""
import argparse, ctypes, json, resource, sys, threading, time, traceback
sys.path.insert(0, sys.argv[1])
settings = json.loads(sys.argv[2])
import torch, transformers  # noqa: F401  (the base every run pays)

def rss_peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    def live():
        info = libc.mallinfo2()
        return (info.uordblks + info.hblkhd) / 2 ** 20
except (OSError, AttributeError):
    def live():
        return 0.0

live_peak = {"since_mark": live()}
where = {"mib": 0.0, "stack": []}  # the main thread's innermost frames when the phase's live peak was sampled
main_thread = threading.main_thread().ident

def stack_of_main():
    frames = traceback.extract_stack(sys._current_frames()[main_thread])
    return [f"{frame.filename.split('site-packages/')[-1].split('ppo_core/')[-1]}:{frame.lineno} {frame.name}"
            for frame in frames[-12:]]

def sample_live():
    while True:
        now = live()
        if now > live_peak["since_mark"]:
            live_peak["since_mark"] = now
            if now > where["mib"] + 1.0:
                where.update(mib=now, stack=stack_of_main())
        time.sleep(0.002)

threading.Thread(target=sample_live, daemon=True).start()
base_rss = rss_peak()
import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (the model's code: sympy, torch._dynamo, ...)
import ppo_throughput as bench
from ppo_core.modeling import tiny
tiny.MODEL_SIZES.update(settings["extra_sizes"])  # --size large: this benchmark's own, not init-model's
from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch
libs_rss = rss_peak()
from ppo_core.config import load_config
args = argparse.Namespace(critic="shared", max_new_tokens=settings["max_new_tokens"], updates=settings["updates"],
                          seed=0, threads=2, advantage="gae", samples_per_prompt=None)
config = bench.make_config(bench.model_dir(settings["size"], settings["n_positions"]), args)
config = load_config(None, settings["overrides"], base=config.model_dump(mode="json"))
run = build_run(config)
scorer = make_scorer(run.composer, run.tokenizer)
phases = {"build": {"rss": rss_peak(), "live": live_peak["since_mark"]}}

def phase(name):
    time.sleep(0.01)
    seen = phases.setdefault(name, {"rss": 0.0, "live": 0.0})
    if live_peak["since_mark"] > seen["live"]:
        seen["where"] = where["stack"]
    seen["rss"], seen["live"] = max(seen["rss"], rss_peak()), max(seen["live"], live_peak["since_mark"])
    live_peak["since_mark"] = live()
    where.update(mib=0.0, stack=[])

seconds = []
for _ in range(settings["updates"]):
    batch = next_prompt_batch(run)
    started = time.perf_counter()
    rollout, stats = run.engine.collect_rollout(batch, scorer)
    phase("rollout")
    run.engine.optimise(rollout)
    del rollout
    phase("optimise")
    seconds.append(time.perf_counter() - started)
run.composer.close()
trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"peak_rss_mib": rss_peak(), "base_rss_mib": base_rss, "libs_rss_mib": libs_rss,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "minor_faults": usage.ru_minflt,
                  "peak_live_mib": max(p["live"] for p in phases.values()), "phases": phases,
                  "sec_per_update": seconds[1:] or seconds, "trained_parameters": trained}))
"""


#: glibc's tunables (read at process start): every block over 128 KiB mapped on its own, unmapped when freed
RELEASE_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def run_once(mode: str, args) -> dict:
    overrides = [item.format(rank=args.rank, alpha=2 * args.rank) for item in MODES[mode]] + args.set
    n_positions = 128 if args.max_new_tokens <= 64 else 256
    settings = {"overrides": overrides, "size": args.size, "updates": args.updates, "n_positions": n_positions,
                "max_new_tokens": args.max_new_tokens, "extra_sizes": EXTRA_SIZES}
    env = dict(os.environ, **(RELEASE_FREED_MEMORY if args.release_freed_memory else {}))
    done = subprocess.run([sys.executable, "-c", RUN, str(HERE), json.dumps(settings)], capture_output=True,
                          text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(results: list[dict], pick) -> float:
    return round(statistics.median(pick(r) for r in results), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="full,lora", help=f"comma-separated, the first is the baseline: "
                        f"{', '.join(MODES)}")
    parser.add_argument("--size", choices=["small", "medium", *EXTRA_SIZES], default="medium")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--updates", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every mode (repeatable)")
    parser.add_argument("--release-freed-memory", action="store_true", help="glibc's mmap and trim "
                        "thresholds fixed at 128 KiB (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for round_ in range(args.rounds):
        for mode in (modes if round_ % 2 == 0 else modes[::-1]):
            runs[mode].append(run_once(mode, args))
            last = runs[mode][-1]
            print(f"round {round_ + 1}/{args.rounds} {mode}: peak RSS {last['peak_rss_mib']:.0f} MiB, live "
                  f"{last['peak_live_mib']:.0f} MiB, {statistics.median(last['sec_per_update']):.1f} s/update; "
                  f"the run: {json.dumps(last)}", file=sys.stderr, flush=True)
    summary = {}
    for mode, results in runs.items():
        summary[mode] = {
            "peak_rss_mib": median_of(results, lambda r: r["peak_rss_mib"]),
            "above_base_mib": median_of(results, lambda r: r["peak_rss_mib"] - r["base_rss_mib"]),
            "above_libs_mib": median_of(results, lambda r: r["peak_rss_mib"] - r["libs_rss_mib"]),
            "peak_live_mib": median_of(results, lambda r: r["peak_live_mib"]),
            "phases": {name: {**{measure: median_of(results, lambda r: r["phases"][name][measure])
                                 for measure in ("rss", "live")},
                              "where": results[0]["phases"][name].get("where", [])}
                       for name in results[0]["phases"]},
            "sec_per_update": round(statistics.median(s for r in results for s in r["sec_per_update"]), 2),
            "cpu_s": median_of(results, lambda r: r["cpu_s"]),
            "minor_faults": median_of(results, lambda r: r["minor_faults"]),
            "trained_parameters": results[0]["trained_parameters"],
        }
    baseline = summary[modes[0]]
    ratios = {f"{mode}_over_{modes[0]}": {key: round(summary[mode][key] / baseline[key], 3) for key in
                                          ("peak_rss_mib", "above_base_mib", "above_libs_mib", "peak_live_mib",
                                           "sec_per_update", "cpu_s")}
              for mode in modes[1:]}
    print(json.dumps({"size": args.size, "max_new_tokens": args.max_new_tokens, "updates": args.updates,
                      "rounds": args.rounds, "rank": args.rank, "set": args.set,
                      "release_freed_memory": args.release_freed_memory,
                      **summary, **ratios}))


if __name__ == "__main__":
    main()
