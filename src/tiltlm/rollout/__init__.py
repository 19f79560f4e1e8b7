"""Rollout engines: ``generate(prompt_ids, n, max_new_tokens, temperature, generator) -> Generation``.

The seam for faster samplers (vLLM, a packed custom loop): register another engine here.
"""

from tiltlm.rollout.hf import Generation, HFEngine, decode_completions

ENGINES = {"hf": HFEngine}

__all__ = ["ENGINES", "Generation", "HFEngine", "decode_completions"]
