"""TRL side of benchmarks/time_to_target.py -- runs in TRL's own virtual environment.

GRPOTrainer on a local model directory and a prompts JSONL ({"prompt", "answer"}), reward 1 only for the exact
answer followed by EOS. Every --save-every steps the model is saved to OUT/ckpt_<step> and the cumulative training
time (sum of on_step_begin -> on_step_end windows: generation, reward, backward, optimizer; saving excluded) is
written to OUT/times.json. The tiltlm side evaluates the checkpoints with tiltlm's own held-out evaluation.
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts-jsonl", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--prompts-per-step", type=int, default=64)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument("--max-completion-length", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out_dir, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    with open(args.prompts_jsonl) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    train = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": str(r["answer"])} for r in rows])
    eos = tokenizer.eos_token_id

    def exact_answer_then_eos(prompts, completions, answer, completion_ids, **kwargs):
        return [1.0 if c.strip() == a and ids and ids[-1] == eos else 0.0
                for c, a, ids in zip(completions, answer, completion_ids)]

    class SaveAndTime(TrainerCallback):
        def __init__(self):
            self.train_s, self.t0, self.times = 0.0, 0.0, {}

        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, model=None, **kw):
            self.train_s += time.perf_counter() - self.t0
            if state.global_step % args.save_every == 0 or state.global_step == args.steps:
                model.save_pretrained(os.path.join(args.out_dir, f"ckpt_{state.global_step}"))
                tokenizer.save_pretrained(os.path.join(args.out_dir, f"ckpt_{state.global_step}"))
                self.times[state.global_step] = self.train_s
                with open(os.path.join(args.out_dir, "times.json"), "w") as fh:
                    json.dump(self.times, fh)

    cfg = GRPOConfig(
        output_dir=os.path.join(args.out_dir, "trl"), per_device_train_batch_size=args.prompts_per_step * args.num_generations,
        gradient_accumulation_steps=1, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, max_steps=args.steps, beta=0.0, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, loss_type="grpo", scale_rewards="group", epsilon=0.2,
        num_iterations=1, temperature=1.0, use_vllm=False, use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        data_seed=args.seed, logging_steps=10, report_to="none", save_strategy="no", disable_tqdm=True,
        gradient_checkpointing=False, dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=exact_answer_then_eos, args=cfg, train_dataset=train,
                          processing_class=tokenizer, callbacks=[SaveAndTime()])
    trainer.train()


if __name__ == "__main__":
    main()
