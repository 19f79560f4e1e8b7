"""TRL side of benchmarks/trl_parity.py -- runs in TRL's own virtual environment (TRL is never a tiltlm dependency).

Reads a model directory and a batch (prompts, completions, rewards, old and reference log-probs) written by the
tiltlm side, computes TRL's GRPO advantages (GRPOTrainer's group mean / std formula, with trl's own ``nanstd``) and
``GRPOTrainer._compute_loss`` for each requested (loss_type, beta), and writes the loss, advantages and every
parameter's gradient to a safetensors file per case.

    TRL_PYTHON benchmarks/trl_side/parity_trl.py WORK_DIR
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import datasets  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanstd  # noqa: E402


def trl_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """GRPOTrainer with scale_rewards='group': (r - group mean) / (group nanstd + 1e-4)."""
    mean = torch.nanmean(rewards.view(-1, group), dim=1).repeat_interleave(group)
    std = nanstd(rewards.view(-1, group), dim=1).repeat_interleave(group)
    return (rewards - mean) / (std + 1e-4)


def main(work: str) -> None:
    torch.set_num_threads(1)
    with open(os.path.join(work, "spec.json")) as fh:
        spec = json.load(fh)
    batch = load_file(os.path.join(work, "batch.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(work, "model"))
    dataset = datasets.Dataset.from_list([{"prompt": "1+1="}] * 8)
    for case in spec["cases"]:
        model = AutoModelForCausalLM.from_pretrained(os.path.join(work, "model"), dtype=torch.float32)
        args = GRPOConfig(
            output_dir=os.path.join(work, "trl_out"), per_device_train_batch_size=spec["rows"],
            num_generations=spec["group"], max_completion_length=spec["max_completion_length"],
            beta=case["beta"], loss_type=case["loss_type"], epsilon=spec["epsilon"], num_iterations=1,
            scale_rewards="group", use_cpu=True, bf16=False, fp16=False, report_to="none", save_strategy="no",
            disable_tqdm=True, gradient_checkpointing=False, learning_rate=0.0,
            use_bias_correction_kl=case["kl_correction"],
        )
        trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                              train_dataset=dataset, processing_class=tokenizer)
        trainer.current_gradient_accumulation_steps = 1
        model = trainer.model
        model.train()
        advantages = trl_advantages(batch["rewards"], spec["group"])
        inputs = {
            "prompt_ids": batch["prompt_ids"], "prompt_mask": batch["prompt_mask"],
            "completion_ids": batch["completion_ids"], "completion_mask": batch["completion_mask"],
            "advantages": advantages, "old_per_token_logps": batch["old_logprobs"],
            "num_items_in_batch": batch["completion_mask"].sum(),
        }
        if case["beta"] != 0:
            inputs["ref_per_token_logps"] = batch["ref_logprobs"]
        model.zero_grad(set_to_none=False)
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        out = {f"grad.{n}": p.grad.detach().clone().contiguous() for n, p in model.named_parameters()}
        out["loss"] = loss.detach().reshape(1)
        out["advantages"] = advantages
        save_file(out, os.path.join(work, f"trl_{case['name']}.safetensors"))
        print(case["name"], float(loss.detach()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
