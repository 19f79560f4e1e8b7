"""Models and tokenizers: the embedded tiny base, and loading any local Hugging Face causal LM.

The embedded default is a real ``transformers`` Llama with a character-level ``PreTrainedTokenizerFast``, so the
code path that trains it is the one that trains a real checkpoint. Weights are only ever read from safetensors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

from tiltlm import lean
from tiltlm.errors import TiltError

hf_logging.disable_progress_bar()  # no tqdm bars from transformers when saving/loading tiny local models

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# Printable ASCII plus newline: enough for arithmetic, JSONL tasks and compact reasoning-gym prompts.
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]

EMBEDDED = "embedded"
ASSET_DIR = Path(__file__).parent / "assets" / "base"
# the embedded teacher: the same recipe trained longer (`tiltlm pretrain --steps 1000`), for distillation
EMBEDDED_MODELS = {EMBEDDED: ASSET_DIR, "embedded-teacher": Path(__file__).parent / "assets" / "teacher"}


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per character, BOS prepended, characters fused on decode."""
    vocab = {tok: i for i, tok in enumerate([PAD, BOS, EOS, UNK, *CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # [\s\S] (not ".") so that newlines match too: every character becomes its own pre-token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, padding_side="left"
    )


def build_tiny_llama(
    vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4, max_len: int = 64, seed: int = 0
) -> LlamaForCausalLM:
    """A tiny decoder-only Llama (~0.53M parameters at the defaults), initialised from ``seed``."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def resolve_model_path(path: str) -> Path:
    """``embedded`` -> the shipped base; otherwise a local directory that must hold a config and safetensors."""
    if path in EMBEDDED_MODELS:
        folder = EMBEDDED_MODELS[path]
        if not (folder / "model.safetensors").exists():
            raise TiltError(f"embedded model '{path}' missing at {folder}; rebuild it with `tiltlm pretrain`")
        return folder
    p = Path(path)
    if not p.is_dir():
        raise TiltError(f"model path not found: {path} (expected a local Hugging Face model directory or 'embedded')")
    if not (p / "config.json").exists():
        raise TiltError(f"model path {path} has no config.json: not a Hugging Face model directory")
    if not any(p.glob("*.safetensors")):
        raise TiltError(f"model path {path} has no *.safetensors weights (pickled weights are refused for safety)")
    return p


def load_model_and_tokenizer(path: str, dtype: torch.dtype = torch.float32, lean_forward: bool = True,
                             matmul_dtype: torch.dtype | None = None):
    """Load a causal LM and its tokenizer from a local directory (never from a hub; safetensors only).

    ``lean_forward``: score and sample with tiltlm's lean forward (lean.py) when it is exact for the architecture;
    ``matmul_dtype`` (e.g. bfloat16): its layers' projections in that dtype (mixed precision, lean.py)."""
    p = resolve_model_path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, use_safetensors=True, dtype=dtype)
    except Exception as e:  # a broken checkpoint is bad input: one line, not a transformers traceback
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise TiltError(f"cannot load model from {path}: {type(e).__name__}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lean_forward:
        lean.enable(model, matmul_dtype=matmul_dtype)
    return model, tokenizer


def save_pretrained_atomic(model, tokenizer, out_dir: str | os.PathLike, extra_files: dict[str, str] | None = None) -> Path:
    """Save model (safetensors) + tokenizer (+ small text files) into ``out_dir`` via a temp dir and a rename."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint directory should be readable like any other
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
