"""PPO throughput of ppo-core on the TRL baseline's workload, and an interleaved comparison with TRL 1.0.0.

The workload is the TRL baseline's (benchmarks/trl), exactly: the character tokenizer; a random GPT-2 policy (``small``
4x256 or ``medium`` 6x512, built by ``ppo_core.modeling.tiny.init_model`` -- byte-identical to the baseline's policy);
the 512 ``reverse`` prompts (the ``ppo-core-datasets`` synthetic dataset with default options); 64 rollouts an
update, at most 32 new tokens, temperature 1.0, stop at eos; 4 epochs x 4 minibatches of 16 (16 optimizer
steps); fp32; 2 threads; AdamW lr 3e-6 decaying linearly to 0 over the run; KL coef 0.05 (k1, in the reward);
clip 0.2; vf_coef 0.1; value clip 0.2; gamma 1; lambda 0.95; no gradient clipping (TRL's PPO loop has none).
TRL scores with a random GPT-2 reward model; here the reward is the rule reward ``edit_distance`` (negligible
cost, see ``score_s``).

    python benchmarks/ppo_throughput.py [--size small|medium] [--critic shared|separate] [--updates 8]
                                        [--max-new-tokens 32] [--n-positions 128]
                                        [--advantage gae|grpo|dr_grpo|rloo|reinforce_pp] [--samples-per-prompt N]

prints ONE JSON line (fields: benchmarks/README.md). A critic-free ``--advantage`` runs without a value head, with
the estimator's defaults (docs/design.md, "Advantage estimators"), on the same 64 samples an update: 64 / N
prompts x N samples (N = 4 for the group estimators unless given).

    python benchmarks/ppo_throughput.py --compare-advantage grpo --critic separate --pairs 3 --updates 4

runs gae with that critic and the critic-free estimator alternately (A, B, A, B, ...), each in its own subprocess,
and prints ONE JSON line with each pair's time ratio (B / A) and the medians.

    python benchmarks/ppo_throughput.py --compare-trl --size small --critic both --pairs 5 --updates 8

sets up TRL's venv with the baseline's ``setup_trl_venv.sh`` (into ``.bench/trl/venv``, once), builds the
baseline's models with its ``make_tiny_models.py``, then runs TRL's ``trl_ppo_bench.py`` and ppo-core
interleaved (TRL, ppo-core[, ppo-core separate], TRL, ...), each in its own subprocess (so peak RSS is per
process), and prints ONE JSON line with every pair's ratios (ppo-core / TRL) and their medians.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".bench"
TRL_BASELINE = REPO / "benchmarks" / "trl"  # setup_trl_venv.sh, make_tiny_models.py, trl_ppo_bench.py
ROLLOUTS = 64


# ---- the machine ---------------------------------------------------------------------------------------
def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 12) -> float:
    """The machine's fp32 matmul rate right now: median GFLOP/s of ``repeats`` torch.mm of n x n (2n^3 FLOP)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * n ** 3 / (time.perf_counter() - started) / 1e9)
    return statistics.median(rates)


def matmul_peak_subprocess(threads: int) -> float:
    """``matmul_peak_gflops`` in a child process, so its three 16 MiB matrices stay out of our peak RSS."""
    code = ("import sys; sys.path.insert(0, %r); import ppo_throughput as b; print(b.matmul_peak_gflops(%d))"
            % (str(Path(__file__).resolve().parent), threads))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


# ---- FLOPs, counted from the model config and the token counts ----------------------------------------
def transformer_flops_per_token(cfg, context: float, lm_head: bool) -> float:
    """Forward FLOPs for one token of a GPT-2: 2 x (matmul weights) + attention against ``context`` positions.

    Matmul weights per layer: qkv 3d^2 + out d^2 + MLP 8d^2 = 12 d^2; the LM head d*V. Attention: QK^T and
    AV are 2 x 2*d*context per layer (the kernels compute the full row, masked or not).
    """
    d, layers, vocab = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    matmul_weights = layers * 12 * d * d + (d * vocab if lm_head else 0)
    return 2 * matmul_weights + layers * 4 * d * context


def update_flops(cfg, value_inner: int, batch: int, prompt_len: int, response_len: int, critic: str,
                 epochs: int = 4) -> dict[str, float]:
    """FLOPs of one PPO update, by phase (processed slots, padding included: that is what the kernels do)."""
    seq = prompt_len + response_len
    d = cfg.n_embd
    head = 2 * (d * value_inner + value_inner) if critic != "none" else 0  # value head MLP per token
    # generation: prefill of the prompt, then one token per step for the whole batch (KV cache)
    gen = batch * prompt_len * transformer_flops_per_token(cfg, prompt_len / 2, True)
    for step in range(1, response_len):
        gen += batch * transformer_flops_per_token(cfg, prompt_len + step, True)
    full_fwd = batch * seq * transformer_flops_per_token(cfg, seq, True)
    critic_fwd = batch * seq * transformer_flops_per_token(cfg, seq, False) if critic == "separate" else 0.0
    values_fwd = batch * seq * head
    policy_eval = full_fwd + critic_fwd + values_fwd
    reference = full_fwd
    # training: forward + backward = 3 x forward (backward = 2 x forward), every epoch over the whole batch
    train = epochs * 3 * (full_fwd + critic_fwd + values_fwd)
    total = gen + policy_eval + reference + train
    return {"generate": gen, "evaluate_policy": policy_eval, "evaluate_reference": reference, "train": train,
            "total": total}


# ---- models --------------------------------------------------------------------------------------------
def model_dir(size: str, n_positions: int) -> Path:
    from ppo_core.modeling.tiny import init_model

    name = size if n_positions == 128 else f"{size}-np{n_positions}"
    path = BENCH_DIR / "models" / name
    if not (path / "model.safetensors").is_file():
        init_model(path, size, seed=0, n_positions=None if n_positions == 128 else n_positions, overwrite=True)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- one ppo-core run ----------------------------------------------------------------------------------
def samples_per_prompt(args) -> int:
    return args.samples_per_prompt or (4 if args.advantage in ("grpo", "dr_grpo", "rloo") else 1)


def make_config(path: Path, args):
    from ppo_core.config import load_config

    n = samples_per_prompt(args)
    if args.advantage == "gae":  # the TRL baseline's PPO settings
        model = {"critic": args.critic}
        estimator = {"clip_range_value": 0.2, "vf_coef": 0.1, "lam": 0.95, "whiten_advantages": True,
                     "kl": {"coef": 0.05, "estimator": "k1", "placement": "reward"}}
    else:  # critic-free: no value head; KL placement, loss aggregation and whitening as the estimator's paper
        model, estimator = {}, {"kl": {"coef": 0.05}}
    base = {
        "model": {"path": str(path), "device": "cpu", **model},
        "data": {"dataset": "reverse", "options": {}},
        "rewards": [{"name": "edit_distance"}],
        "ppo": {"advantage": args.advantage, "rollout_batch_size": ROLLOUTS // n, "samples_per_prompt": n,
                "minibatch_size": 16, "epochs": 4, "clip_range": 0.2, "entropy_coef": 0.0, "gamma": 1.0,
                "whiten_rewards": False, **estimator},
        "generation": {"max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
        "optim": {"lr": 3e-6, "schedule": "linear", "warmup_steps": 0, "weight_decay": 0.0,
                  "max_grad_norm": None},
        "train": {"updates": args.updates, "seed": args.seed, "threads": args.threads, "progress": "none",
                  "output_dir": str(BENCH_DIR / "runs" / "unused")},
        "plugins": {"allow": ["datasets", "rule_rewards"]},
    }
    return load_config(None, [], base=base)


def trl_response_tokens(tokens, pad_token_id: int):
    """Response tokens as TRL counts them: those before the first <pad> (up to and incl. the first eos)."""
    import torch

    is_pad = tokens == pad_token_id
    width = tokens.size(1)
    first_pad = torch.where(is_pad.any(1), is_pad.float().argmax(1), torch.full_like(is_pad[:, 0], width,
                                                                                        dtype=torch.long))
    return int(first_pad.sum())


def run_ppo_core(args) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import resource

    import torch

    torch.set_num_threads(args.threads)
    from ppo_core.commands.train import build_run, make_scorer, next_prompt_batch

    peak_before = matmul_peak_subprocess(args.threads)
    path = Path(args.model_dir) if args.model_dir else model_dir(args.size, args.n_positions)
    run = build_run(make_config(path, args))
    scorer = make_scorer(run.composer, run.tokenizer)
    engine = run.engine
    pad = run.tokenizer.pad_token_id

    shapes = {}
    collect = engine.collect_rollout

    def collect_and_record(batch, scorer_):
        rollout, stats = collect(batch, scorer_)
        shapes.update(prompt=rollout.prompt_length, response=rollout.sequences.size(1) - rollout.prompt_length,
                      trl_tokens=trl_response_tokens(rollout.sequences[:, rollout.prompt_length:], pad))
        return rollout, stats

    engine.collect_rollout = collect_and_record

    profiler = None
    updates = []
    for update in range(args.updates):
        batch = next_prompt_batch(run)
        if args.profile and update == args.updates - 1:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                              record_shapes=True)
            profiler.__enter__()
        started = time.perf_counter()
        stats = engine.step(batch, scorer)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.__exit__(None, None, None)
        updates.append({"sec": elapsed, **stats, **{f"shape_{k}": v for k, v in shapes.items()}})
        print(f"[update {update + 1}] {elapsed:.2f}s generate {stats['time/generate_s']:.2f} "
              f"evaluate {stats['time/evaluate_s']:.2f} score {stats['time/score_s']:.3f} "
              f"train {stats['time/train_s']:.2f} score={stats['score/mean']:.4f} kl={stats['kl']:.2e}",
              file=sys.stderr, flush=True)
    peak_after = matmul_peak_subprocess(args.threads)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if profiler is not None:
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows),
              file=sys.stderr)

    cfg = run.model.policy.config
    critic = run.config.model.critic
    value_inner = run.model.value_head.dense.out_features if run.model.has_critic else 0
    secs = [u["sec"] for u in updates]
    total = sum(secs)
    flops = [update_flops(cfg, value_inner, ROLLOUTS, u["shape_prompt"], u["shape_response"], critic)
             for u in updates]
    achieved = statistics.median(f["total"] / u["sec"] / 1e9 for f, u in zip(flops, updates))
    peak = statistics.median([peak_before, peak_after])

    def med(key):
        return round(statistics.median(u[key] for u in updates), 4)

    def phase_gflops(phase, key):
        return round(statistics.median(f[phase] / u[key] / 1e9 for f, u in zip(flops, updates) if u[key] > 0), 1)

    import transformers

    return {
        "framework": "ppo-core",
        "size": args.size if not args.model_dir else Path(args.model_dir).name,
        "critic": critic,
        "advantage": args.advantage,
        "samples_per_prompt": samples_per_prompt(args),
        "updates": len(updates),
        "max_new_tokens": args.max_new_tokens,
        "n_positions": cfg.n_positions,
        "reward": "edit_distance (rule, plugin ppo-core-rewards)",
        "sec_per_update_median": round(statistics.median(secs), 4),
        "sec_per_update_min": round(min(secs), 4),
        "sec_per_update_max": round(max(secs), 4),
        "sec_per_update_all": [round(s, 4) for s in secs],
        "rollouts_per_sec": round(ROLLOUTS * len(updates) / total, 3),
        "response_tokens_per_sec": round(sum(u["shape_trl_tokens"] for u in updates) / total, 2),
        "mean_response_tokens": round(sum(u["shape_trl_tokens"] for u in updates) / (ROLLOUTS * len(updates)), 2),
        "peak_rss_mb": round(peak_rss, 1),
        "split_median_s": {
            "generate": med("time/generate_s"),
            "score": med("time/score_s"),
            "evaluate_reference": med("time/evaluate_reference_s"),
            "evaluate_policy_critic": med("time/evaluate_policy_s"),
            "rollout_total": med("time/rollout_s"),
            "train": med("time/train_s"),
        },
        "gflop_per_update": round(statistics.median(f["total"] for f in flops) / 1e9, 2),
        "achieved_gflops": round(achieved, 1),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_peak_gflops_before_after": [round(peak_before, 1), round(peak_after, 1)],
        "share_of_matmul_peak": round(achieved / peak, 3),
        "phase_gflops": {"generate": phase_gflops("generate", "time/generate_s"),
                         "evaluate_policy_critic": phase_gflops("evaluate_policy", "time/evaluate_policy_s"),
                         "evaluate_reference": phase_gflops("evaluate_reference", "time/evaluate_reference_s"),
                         "train": phase_gflops("train", "time/train_s")},
        "shape_prompt_response": [updates[-1]["shape_prompt"], updates[-1]["shape_response"]],
        "mean_score_first": round(updates[0]["score/mean"], 6),
        "mean_score_last": round(updates[-1]["score/mean"], 6),
        "kl_first_update": updates[0]["kl"],
        "optimizer_steps_per_update": [int(u["optim/steps"]) for u in updates],
        "policy_sha256": sha256(path / "model.safetensors")[:16],
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }


# ---- the interleaved comparison with TRL ---------------------------------------------------------------
def ensure_trl(size: str) -> tuple[Path, Path]:
    venv = BENCH_DIR / "trl" / "venv"
    python = venv / "bin" / "python"
    ok = python.is_file() and subprocess.run([str(python), "-c", "import trl, transformers, datasets"],
                                             capture_output=True).returncode == 0
    if not ok:
        print(f"setting up TRL's venv in {venv} (about 2 minutes)", file=sys.stderr, flush=True)
        subprocess.run(["bash", str(TRL_BASELINE / "setup_trl_venv.sh"), str(venv)], check=True,
                       stdout=sys.stderr)
    models = BENCH_DIR / "trl" / "models" / size
    if not (models / "meta.json").is_file():
        subprocess.run([str(python), str(TRL_BASELINE / "make_tiny_models.py"), str(models), "--size", size],
                       check=True, stdout=sys.stderr)
    return python, models


def last_json_line(text: str) -> dict:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON line in the output:\n" + text[-2000:])


def run_subprocess(command: list[str], label: str, cwd: Path = BENCH_DIR / "trl") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="2", MKL_NUM_THREADS="2", TOKENIZERS_PARALLELISM="false")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(cwd))
    if done.returncode:
        raise RuntimeError(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = last_json_line(done.stdout)
    print(f"  {label}: {result['sec_per_update_median']:.3f} s/update, {result['peak_rss_mb']:.0f} MiB "
          f"({time.perf_counter() - started:.0f}s wall)", file=sys.stderr, flush=True)
    return result


def compare_trl(args) -> dict:
    python, trl_models = ensure_trl(args.size)
    ours = model_dir(args.size, 128)
    same_policy = sha256(ours / "model.safetensors") == sha256(trl_models / "policy" / "model.safetensors")
    if not same_policy:
        raise RuntimeError(f"{ours} and {trl_models}/policy differ; the comparison would not be like for like")
    critics = ["shared", "separate"] if args.critic == "both" else [args.critic]
    variants = [(critic, ["--critic", critic]) for critic in critics]  # label: ppo-core's arguments
    if args.advantage != "gae":  # a critic-free estimator beside the critics, same rounds
        variants.append((args.advantage, ["--advantage", args.advantage]))
    trl_cmd = [str(python), str(TRL_BASELINE / "trl_ppo_bench.py"), str(trl_models), "--updates",
               str(args.updates), "--output-dir", str(BENCH_DIR / "trl" / "out")]
    rounds = []
    for i in range(args.pairs):
        print(f"round {i + 1}/{args.pairs} ({args.size})", file=sys.stderr, flush=True)
        trl = run_subprocess(trl_cmd, "TRL")
        entry = {"trl_sec_per_update": trl["sec_per_update_median"], "trl_peak_rss_mb": trl["peak_rss_mb"],
                 "trl_sec_per_update_min": min(trl["sec_per_update_all"]),
                 "trl_split_s": {"generate": trl["generate_sec_per_update_median"],
                                 "rollout": trl["rollout_sec_per_update_median"],
                                 "optim": trl["optim_sec_per_update_median"]}}
        for critic, variant in variants:
            ours_cmd = [sys.executable, str(Path(__file__).resolve()), "--size", args.size, *variant,
                        "--updates", str(args.updates), "--threads", "2"]
            mine = run_subprocess(ours_cmd, f"ppo-core ({critic})")
            entry[critic] = {
                "sec_per_update": mine["sec_per_update_median"],
                "peak_rss_mb": mine["peak_rss_mb"],
                "time_ratio": round(mine["sec_per_update_median"] / trl["sec_per_update_median"], 4),
                # fastest update / fastest update: less exposed to bursts of load from other processes
                "time_ratio_min": round(mine["sec_per_update_min"] / min(trl["sec_per_update_all"]), 4),
                "rss_ratio": round(mine["peak_rss_mb"] / trl["peak_rss_mb"], 4),
                "share_of_matmul_peak": mine["share_of_matmul_peak"],
                "split_median_s": mine["split_median_s"],
            }
        rounds.append(entry)
    summary = {}
    for critic, _variant in variants:
        summary[critic] = {
            "time_ratio_median": round(statistics.median(r[critic]["time_ratio"] for r in rounds), 4),
            "time_ratios": [r[critic]["time_ratio"] for r in rounds],
            "time_ratio_min_median": round(statistics.median(r[critic]["time_ratio_min"] for r in rounds), 4),
            "time_ratios_min": [r[critic]["time_ratio_min"] for r in rounds],
            "rss_ratio_median": round(statistics.median(r[critic]["rss_ratio"] for r in rounds), 4),
            "rss_ratios": [r[critic]["rss_ratio"] for r in rounds],
            "sec_per_update_median": round(statistics.median(r[critic]["sec_per_update"] for r in rounds), 4),
            "share_of_matmul_peak_median": round(statistics.median(r[critic]["share_of_matmul_peak"]
                                                                   for r in rounds), 3),
        }
    return {"mode": "compare-trl", "size": args.size, "updates": args.updates, "pairs": args.pairs,
            "policy_identical": same_policy,
            "trl_sec_per_update_median": round(statistics.median(r["trl_sec_per_update"] for r in rounds), 4),
            "trl_peak_rss_mb_median": round(statistics.median(r["trl_peak_rss_mb"] for r in rounds), 1),
            "summary": summary, "rounds": rounds}


# ---- the interleaved comparison of an estimator with gae ---------------------------------------------------
def compare_advantage(args) -> dict:
    """gae with ``--critic`` (A) and the critic-free ``--compare-advantage`` estimator (B), alternately, each in
    its own process; the time ratio B / A of each pair and the medians."""
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    model_dir(args.size, args.n_positions)  # built once, before the first timed run
    common = [sys.executable, str(Path(__file__).resolve()), "--size", args.size, "--updates", str(args.updates),
              "--threads", str(args.threads), "--max-new-tokens", str(args.max_new_tokens), "--n-positions",
              str(args.n_positions), "--seed", str(args.seed)]
    a_label, b_label = f"gae ({args.critic} critic)", args.compare_advantage
    b_extra = ["--advantage", args.compare_advantage]
    if args.samples_per_prompt:
        b_extra += ["--samples-per-prompt", str(args.samples_per_prompt)]
    rounds = []
    for i in range(args.pairs):
        print(f"round {i + 1}/{args.pairs} ({args.size})", file=sys.stderr, flush=True)
        a = run_subprocess(common + ["--critic", args.critic], a_label, cwd=BENCH_DIR)
        b = run_subprocess(common + b_extra, b_label, cwd=BENCH_DIR)
        rounds.append({"a_sec_per_update": a["sec_per_update_median"], "b_sec_per_update": b["sec_per_update_median"],
                       "time_ratio": round(b["sec_per_update_median"] / a["sec_per_update_median"], 4),
                       "time_ratio_min": round(b["sec_per_update_min"] / a["sec_per_update_min"], 4),
                       "a_split_median_s": a["split_median_s"], "b_split_median_s": b["split_median_s"],
                       "a_peak_rss_mb": a["peak_rss_mb"], "b_peak_rss_mb": b["peak_rss_mb"],
                       "b_samples_per_prompt": b["samples_per_prompt"]})

    def median(key):
        return round(statistics.median(r[key] for r in rounds), 4)

    return {"mode": "compare-advantage", "a": a_label, "b": b_label, "size": args.size, "updates": args.updates,
            "pairs": args.pairs, "a_sec_per_update_median": median("a_sec_per_update"),
            "b_sec_per_update_median": median("b_sec_per_update"), "time_ratio_median": median("time_ratio"),
            "time_ratios": [r["time_ratio"] for r in rounds], "time_ratio_min_median": median("time_ratio_min"),
            "rounds": rounds}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["small", "medium"], default="small")
    parser.add_argument("--critic", choices=["shared", "separate", "both"], default="shared",
                        help="`both` only with --compare-trl")
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--n-positions", type=int, default=128, help="context of the model built (>= prompt + "
                        "max new tokens; the baseline's models have 128)")
    parser.add_argument("--model-dir", default=None, help="use this checkpoint instead of building one")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of the last update (stderr)")
    parser.add_argument("--profile-rows", type=int, default=30)
    parser.add_argument("--advantage", choices=["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"], default="gae",
                        help="advantage estimator (critic-free ones run without a value head)")
    parser.add_argument("--samples-per-prompt", type=int, default=None, help="samples per prompt (64 samples an "
                        "update in all): default 4 for grpo, dr_grpo, rloo, else 1")
    parser.add_argument("--compare-advantage", choices=["grpo", "dr_grpo", "rloo", "reinforce_pp"], default=None,
                        help="interleave gae (with --critic) and this estimator; time ratios estimator / gae")
    parser.add_argument("--compare-trl", action="store_true")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of the interleaved comparison")
    args = parser.parse_args(argv)
    if args.compare_trl:
        result = compare_trl(args)
    elif args.compare_advantage:
        if args.critic == "both":
            parser.error("--compare-advantage compares with one critic: shared or separate")
        result = compare_advantage(args)
    else:
        if args.critic == "both":
            parser.error("--critic both needs --compare-trl")
        result = run_ppo_core(args)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
