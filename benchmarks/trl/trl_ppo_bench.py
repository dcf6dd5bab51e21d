#!/usr/bin/env python
"""Time HuggingFace TRL's PPO trainer (trl==1.0.0, trl.experimental.ppo) on tiny local models.

Usage:
    python trl_ppo_bench.py MODEL_DIR --updates N [--stop-token eos|none] [--threads 2] [--seed 0]

MODEL_DIR is what make_tiny_models.py wrote (tokenizer/, policy/, reward/, value/, prompts.jsonl).

One PPO update = 64 rollouts (per_device_train_batch_size=64, gradient_accumulation_steps=1,
local_rollout_forward_batch_size=64 -> one generate() call of batch 64), then
num_ppo_epochs=4 x num_mini_batches=4 optimizer steps on minibatches of 16.
response_length=32, temperature=1.0, stop_token="eos" by default (generation of a sequence
stops at <eos>, TRL truncates after the first <eos>), no eval, no sample generations,
bf16/fp16 off, gradient checkpointing off, report_to none, torch threads = 2.

Per-update wall time is measured with a TrainerCallback: PPOTrainer.train() calls
on_train_begin right before its update loop and on_step_end once at the end of every update,
so consecutive timestamps bracket exactly one update (dataloader fetch + rollout
[generate, ref/value/reward forwards, GAE] + 16 optimizer steps + logging). In addition the
module-level helpers `batch_generation` and `forward` of trl.experimental.ppo.ppo_trainer
are wrapped (no behaviour change) to split each update into generate / rest-of-rollout /
optimisation time: the optimisation phase starts at the first grad-enabled `forward` call.

Prints progress to stderr and one JSON line (the result) as the last line on stdout.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--updates", type=int, required=True)
    ap.add_argument("--stop-token", choices=["eos", "none"], default="eos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--learning-rate", type=float, default=3e-6, help="TRL PPOConfig default: 3e-6")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="TRL default is on; we default to off")
    ap.add_argument("--output-dir", default=".bench/trl/out")
    ap.add_argument("--metrics-out", default=None, help="optional JSONL file: TRL's logged metrics + timings per update")
    return ap.parse_args()


def main():
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(args.threads))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    t_import = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)

    import transformers
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    import trl.experimental.ppo.ppo_trainer as ppo_mod
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    t_import = time.perf_counter() - t_import
    transformers.set_seed(args.seed)

    md = args.model_dir
    meta = {}
    if os.path.exists(os.path.join(md, "meta.json")):
        with open(os.path.join(md, "meta.json")) as f:
            meta = json.load(f)

    tok = AutoTokenizer.from_pretrained(os.path.join(md, "tokenizer"))
    assert tok.padding_side == "left", "PPOTrainer needs left-padded queries"
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id

    policy = AutoModelForCausalLM.from_pretrained(os.path.join(md, "policy"), dtype=torch.float32)
    ref_policy = AutoModelForCausalLM.from_pretrained(os.path.join(md, "policy"), dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        os.path.join(md, "reward"), num_labels=1, dtype=torch.float32
    )
    value_model = AutoModelForSequenceClassification.from_pretrained(
        os.path.join(md, "value"), num_labels=1, dtype=torch.float32
    )

    prompts = []
    with open(os.path.join(md, "prompts.jsonl")) as f:
        for line in f:
            if line.strip():
                prompts.append(json.loads(line)["prompt"])
    # PPOTrainer's DataCollatorWithPadding only understands token columns: keep input_ids only.
    train_ds = Dataset.from_dict({"input_ids": [tok(p)["input_ids"] for p in prompts]})

    rollouts_per_update = 64
    cfg = PPOConfig(
        output_dir=args.output_dir,
        per_device_train_batch_size=rollouts_per_update,
        gradient_accumulation_steps=1,
        local_rollout_forward_batch_size=rollouts_per_update,
        num_mini_batches=4,
        num_ppo_epochs=4,
        response_length=32,
        temperature=1.0,
        stop_token=None if args.stop_token == "none" else "eos",
        total_episodes=rollouts_per_update * args.updates,
        num_sample_generations=0,
        learning_rate=args.learning_rate,
        bf16=False,
        fp16=False,
        gradient_checkpointing=args.gradient_checkpointing,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        seed=args.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )

    # ---- timing instrumentation -------------------------------------------------------
    rec = {"gen": 0.0, "opt_start": None, "resp_tokens": 0, "gen_slots": 0, "opt_steps": 0}

    orig_batch_generation = ppo_mod.batch_generation

    def timed_batch_generation(model, queries, *a, **kw):
        t = time.perf_counter()
        out = orig_batch_generation(model, queries, *a, **kw)
        rec["gen"] += time.perf_counter() - t
        qr = out[0]
        resp = qr[:, queries.shape[1]:]
        rec["gen_slots"] += resp.numel()
        return out

    ppo_mod.batch_generation = timed_batch_generation

    orig_forward = ppo_mod.forward

    def timed_forward(model, query_responses, pad_token_id):
        if rec["opt_start"] is None and torch.is_grad_enabled():
            rec["opt_start"] = time.perf_counter()
        return orig_forward(model, query_responses, pad_token_id)

    ppo_mod.forward = timed_forward

    orig_get_reward = ppo_mod.get_reward

    def counting_get_reward(model, query_responses, pad_token_id, context_length):
        if model is reward_model:
            # valid response tokens exactly as TRL defines them: everything before the first
            # pad of the (eos-truncated) response, i.e. up to and including the first <eos>.
            resp = query_responses[:, context_length:]
            rec["resp_tokens"] += int(ppo_mod.first_true_indices(resp == pad_token_id).sum())
        return orig_get_reward(model, query_responses, pad_token_id, context_length)

    ppo_mod.get_reward = counting_get_reward

    class UpdateTimer(TrainerCallback):
        def __init__(self):
            self.updates = []
            self.scores = []
            self.logs = []
            self.t_last = None

        def on_train_begin(self, a, state, control, **kw):
            self.t_last = time.perf_counter()
            rec.update(gen=0.0, opt_start=None, resp_tokens=0, gen_slots=0, opt_steps=0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "objective/scores" in logs:
                self.scores.append(logs["objective/scores"])
                self.logs.append(dict(logs))

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            total = now - self.t_last
            opt_start = rec["opt_start"] if rec["opt_start"] is not None else now
            u = {
                "update": state.global_step,
                "sec": total,
                "gen_sec": rec["gen"],
                "rollout_sec": opt_start - self.t_last,
                "optim_sec": now - opt_start,
                "resp_tokens": rec["resp_tokens"],
                "gen_slots": rec["gen_slots"],
                "opt_steps": rec["opt_steps"],
                "score": self.scores[-1] if self.scores else None,
                "trl_metrics": self.logs[-1] if self.logs else {},
            }
            self.updates.append(u)
            print(
                f"[update {u['update']}] {total:.2f}s (generate {u['gen_sec']:.2f}s, rollout {u['rollout_sec']:.2f}s, "
                f"optim {u['optim_sec']:.2f}s, {u['opt_steps']} optimizer steps) resp_tokens={u['resp_tokens']} "
                f"score={u['score']}",
                file=sys.stderr,
                flush=True,
            )
            rec.update(gen=0.0, opt_start=None, resp_tokens=0, gen_slots=0, opt_steps=0)
            self.t_last = time.perf_counter()

    timer = UpdateTimer()

    t_init = time.perf_counter()
    trainer = PPOTrainer(
        args=cfg,
        processing_class=tok,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=train_ds,
        value_model=value_model,
        callbacks=[timer],
    )
    # keep stdout clean for the final JSON line
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    # count optimizer steps that really happen (accelerate skips step() while accumulating)
    inner_opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    inner_opt.register_step_post_hook(lambda *a, **k: rec.__setitem__("opt_steps", rec["opt_steps"] + 1))
    t_init = time.perf_counter() - t_init

    t_train = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t_train

    ups = timer.updates
    if args.metrics_out:
        with open(args.metrics_out, "w") as f:
            for u in ups:
                f.write(json.dumps(u) + "\n")
    assert len(ups) == args.updates, f"expected {args.updates} updates, timed {len(ups)}"
    secs = [u["sec"] for u in ups]
    tot = sum(secs)
    n_roll = rollouts_per_update * len(ups)
    result = {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "size": meta.get("size", os.path.basename(os.path.normpath(md))),
        "updates": len(ups),
        "sec_per_update_median": round(statistics.median(secs), 4),
        "sec_per_update_all": [round(s, 4) for s in secs],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
        "rollouts_per_sec": round(n_roll / tot, 3),
        "response_tokens_per_sec": round(sum(u["resp_tokens"] for u in ups) / tot, 2),
        "mean_score_first": ups[0]["score"],
        "mean_score_last": ups[-1]["score"],
        # extra detail
        "generate_sec_per_update_median": round(statistics.median(u["gen_sec"] for u in ups), 4),
        "rollout_sec_per_update_median": round(statistics.median(u["rollout_sec"] for u in ups), 4),
        "optim_sec_per_update_median": round(statistics.median(u["optim_sec"] for u in ups), 4),
        "mean_response_tokens": round(sum(u["resp_tokens"] for u in ups) / n_roll, 2),
        "generated_token_slots_per_update": [u["gen_slots"] for u in ups],
        "optimizer_steps_per_update": [u["opt_steps"] for u in ups],
        "stop_token": args.stop_token,
        "rollouts_per_update": rollouts_per_update,
        "threads": torch.get_num_threads(),
        "import_sec": round(t_import, 2),
        "trainer_init_sec": round(t_init, 2),
        "train_total_sec": round(t_train, 2),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
