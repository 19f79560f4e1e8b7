"""A lean forward pass for Llama-family decoders (Llama, Qwen2, Mistral without a sliding window), computed with the
Hugging Face model's own parameters -- the same math as ``model(...)``, with less work on small models and CPUs:

* **packed tokens**: every projection and MLP runs on one flat ``[tokens, hidden]`` matrix of the tokens that matter
  -- no left-padding of prompts, no right-padding after EOS, not a completion's last token (it predicts nothing) --
  so no FLOP is spent on padding;
* **shared prompt prefixes**: a GRPO batch holds each prompt ``n`` times; the prompt is computed once and its keys
  and values are shared by the ``n`` completions (the gradient of a shared prefix is the sum over its completions,
  which ``index_select``'s backward computes exactly), so a prompt costs 1/n of its tokens in the update;
* **fused projections** when sampling: q/k/v and gate/up are one matmul each, built once per batch;
* **a static KV cache** for sampling, with no per-step mask building or cache bookkeeping in Python;
* optionally **a compiled decode step** (``compile_decoding(model)``, ``runtime.compile_sampling``): the cache keeps
  static shapes so ``torch.compile`` (inductor's C++ kernels) builds the per-token layer stack once;
* optionally **a compiled scoring forward** (``compile_training(model)``, ``runtime.compile_training``): the
  training forward + backward and the reference/teacher log-probs run a *padded* layout (``padded_logits``: every
  column computed, widths and row counts rounded up to buckets) whose static shapes let ``torch.compile`` build
  one fused graph per bucket -- more FLOPs than packing, far fewer ops;
* optionally **bf16 matmuls** (``enable(model, matmul_dtype=torch.bfloat16)``, ``runtime.matmul_dtype``): the
  decoder layers' projections take bf16 inputs and weights (CPUs with AVX512-BF16/AMX, GPUs), everything else -- the
  residual stream, norms, RoPE, attention, the LM head, softmax, the parameters and their gradients -- stays in the
  parameters' dtype. Mixed precision in the sense of Micikevicius et al. 2018 ("Mixed Precision Training"); no
  longer exact, so the tests bound its error against float32 instead of asking for equality.

It is used only where it is exact: ``supported(model)`` says why not otherwise, and the caller falls back to the
plain ``transformers`` forward. tests/test_lean.py checks logits, gradients and sampled log-probs against it.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from tiltlm.sampling import draw

LEAN_ATTR = "tiltlm_lean"  # set on a model that passed ``supported``: the lean path is then used for it
ROW_BUCKET = 64  # bf16 matmuls see row counts rounded up to a multiple of this (see LeanDecoder.linear)
MATMUL_ATTR = "tiltlm_matmul_dtype"  # dtype of the layers' projections on the lean path (None: the model's own)
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}  # inv_freq does not depend on the sequence length
COMPILE_ATTR = "tiltlm_compile_decoding"  # set by compile_decoding: sample with the compiled, static-shape step
STATIC_COLUMNS = 16  # compiled decoding: cache widths rounded up to a multiple of this, so few shapes get compiled
TRAIN_COMPILE_ATTR = "tiltlm_compile_training"  # set by compile_training: score with the compiled, padded forward
# compiled scoring rounds prompt widths, completion widths, distinct prompts and rows up to multiples of these. Prompt
# widths are coarse: prompts are few, and a batch's longest prompt moves often (a new shape = a new compile)
PROMPT_COLUMNS, COMPLETION_COLUMNS, PAD_PROMPTS, PAD_ROWS = 16, 8, 4, 16
MAX_PADDED_RATIO = 1.5  # compiled scoring only where padding adds at most 50% tokens; raggeder batches run packed


def supported(model) -> str | None:
    """None if the lean forward computes exactly what ``model`` computes, else the reason it does not."""
    cfg = getattr(model, "config", None)
    kind = getattr(cfg, "model_type", None)
    if kind not in ("llama", "qwen2", "mistral"):
        return f"model_type {kind!r} (lean forward: llama, qwen2, mistral)"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "rotary_emb") or not hasattr(model, "lm_head"):
        return "unexpected module layout"
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return "MLP is not a bias-free SiLU gate"
    if getattr(cfg, "attention_dropout", 0.0):
        return "attention dropout"
    if getattr(inner.rotary_emb, "rope_type", "default") not in _STATIC_ROPE:
        return f"rope type {inner.rotary_emb.rope_type!r}"
    sliding = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", kind == "mistral") else None
    if sliding:
        return "sliding-window attention"
    layer = inner.layers[0].self_attn
    if any(hasattr(layer, n) for n in ("q_norm", "k_norm")) or getattr(layer.o_proj, "bias", None) is not None:
        return "attention with q/k norms or an output bias"
    if not _plain_linears(model):
        return "projections are not plain nn.Linear (adapters such as LoRA would be bypassed)"
    return None


def _plain_linears(model) -> bool:
    """Every projection is exactly ``nn.Linear``: the lean forward reads ``.weight`` directly, so a wrapped layer
    (a LoRA adapter injected in place, a quantised linear) must send the model back to its own forward."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return all(type(getattr(getattr(layer, part), name)) is torch.nn.Linear
               for layer in model.model.layers for part, group in (("self_attn", names[:4]), ("mlp", names[4:]))
               for name in group)


def enable(model, on: bool = True, matmul_dtype: torch.dtype | None = None) -> bool:
    """Mark ``model`` for the lean path if it is supported (``on=False`` unmarks it); returns whether it is marked.
    ``matmul_dtype`` (e.g. ``torch.bfloat16``) runs the decoder layers' projections in that dtype."""
    ok = on and supported(model) is None
    object.__setattr__(model, LEAN_ATTR, ok)  # plain attributes, not registered submodules or buffers
    object.__setattr__(model, MATMUL_ATTR, matmul_dtype if ok else None)
    return ok


def compile_decoding(model, on: bool = True) -> bool:
    """Sample a lean-marked ``model`` with a ``torch.compile``'d decode step; returns whether it is switched on.

    A decode step is hundreds of tiny ops (one query row per sequence), so on CPUs its time is per-op overhead, not
    FLOPs; inductor fuses the elementwise work of the layer stack into a few C++ loops. Shapes stay static so it
    compiles once per batch shape: the cache is allocated STATIC_COLUMNS-rounded and zero-filled, every step attends
    over all of its columns with the not-yet-written ones masked, and finished rows stay in the cache (no
    compaction), and each step also draws the next token inside the graph (``decode_and_draw``: one compiled call
    per token). The prefill is compiled too, its prompt widths rounded up to STATIC_COLUMNS with more (masked)
    left padding. The first batch of each shape pays the compiles (5-7 s cold for a 4-layer model on the AMX Xeon,
    about 40 s cold and 5 s warm from inductor's on-disk cache on a 2-core EPYC); see docs/performance.md."""
    ok = bool(on) and enabled(model)
    object.__setattr__(model, COMPILE_ATTR, ok)
    if ok:
        quiet_autotune()
    return ok


def decoding_compiled(model) -> bool:
    return enabled(model) and bool(getattr(model, COMPILE_ATTR, False))


# inductor's C++ wrapper calls a graph's kernels from C++ instead of generated Python (~17 µs of Python per matmul
# and buffer allocations): on (a), AMX Xeon, one decode step 1.68 -> 1.32 ms, scoring forward + backward -5%,
# reference forward -8% (old/new alternating in one process); it costs a longer first compile per shape
_WRAPPER = {"cpp_wrapper": True}
# max-autotune: inductor benchmarks its C++ GEMM template against the aten call for each matmul shape and keeps the
# faster (see LeanDecoder.sampling_mm); CPP,ATEN only: no Triton on CPUs. Autotuning lengthens a cold compile. Its
# timing tables would go to stderr in the middle of a training run's output: not displayed
_GEMM_TEMPLATES = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "autotune_num_choices_displayed": 0,
                   "max_autotune_report_choices_stats": False}


def quiet_autotune() -> None:
    """Hide the one warning max-autotune's benchmarking prints (torch 2.13's select_algorithm calls the deprecated
    TypedStorage API once per compile; the warning and its source line landed in a run's output). Only that
    message from that module: the same warning raised anywhere else still shows."""
    warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning,
                            module=r"torch\._inductor\.select_algorithm")


@functools.cache
def _compiled_decode_and_draw():
    return torch.compile(LeanDecoder.decode_and_draw_stack, dynamic=False, options={**_WRAPPER, **_GEMM_TEMPLATES})


def compile_training(model, on: bool = True) -> bool:
    """Score completions of a lean-marked ``model`` (the training forward and backward, reference and teacher
    log-probs) with a ``torch.compile``'d forward; returns whether it is switched on.

    The packed forward's 1,000+ small ops per step (norms, RoPE, SiLU gate, index copies, and as many again in the
    backward) cost more than its matmuls on small models; inductor fuses them. Compiling needs static shapes, so
    the compiled forward runs the *padded* layout (``padded_logits``: every prompt and completion column computed,
    widths and row counts rounded up, see ``bucketed_logits``); each new shape pays a compile (about 20 s cold for
    forward + backward of a 4-layer model here), so it pays off for runs with steady batch shapes."""
    ok = bool(on) and enabled(model)
    object.__setattr__(model, TRAIN_COMPILE_ATTR, ok)
    return ok


def training_compiled(model) -> bool:
    return enabled(model) and bool(getattr(model, TRAIN_COMPILE_ATTR, False))


_COMPILED_KEYS: set[tuple] = set()  # (model, grad mode, matmul dtype, bucketed shapes) sent to the compiled forward


@functools.cache
def _compiled_prefill_stack():
    # (a) 2.4x faster prefill (-3.3 ms per batch on a 2-core EPYC); the compile costs ~16 s cold, ~0.9 s warm. GEMM
    # templates: (a) bf16 prefill 3.7 -> 3.05 ms (AMX Xeon, alternating processes)
    return torch.compile(LeanDecoder.prefill_stack, dynamic=False, options=_GEMM_TEMPLATES)


@functools.cache
def _compiled_padded_logits():
    # inductor's in-place buffer reuse miscompiled the backward of the shared-prefix attention (torch 2.13: wrong
    # layer-0 v_proj gradients, logits right); tests/test_lean.py compares compiled gradients with transformers'
    return torch.compile(LeanDecoder.padded_logits, dynamic=False, options={**_WRAPPER, "inplace_buffers": False})


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware on ``device``: any CUDA device, or a CPU for which oneDNN reports bf16
    support (AVX512-BF16 or AMX). Elsewhere PyTorch emulates them: measured 1 GFLOP/s against 180 GFLOP/s in float32
    on a 2-core AVX2-only EPYC, which would make ``runtime.matmul_dtype=bfloat16`` a 100x slowdown."""
    if device.type != "cpu":
        return device.type == "cuda"
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def enabled(model) -> bool:
    """Marked by ``enable`` and still made of plain linears (re-checked: adapters may be injected after loading)."""
    return bool(getattr(model, LEAN_ATTR, False)) and _plain_linears(model)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, HF's convention x*cos + rotate_half(x)*sin with rotate_half(x) = [-x2, x1], where signed_sin
    carries the minus sign of the first half. Written per half (cos is the same in both halves) so that inductor
    vectorises it: ``x.roll`` indexed by (j + D/2) mod D, which compiled to a scalar loop (0.4-0.5 ms a layer in the
    compiled scoring forward on (a), AMX Xeon)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s1, s2 = cos[..., :half], signed_sin[..., :half], signed_sin[..., half:]
    return torch.cat([x1 * c + x2 * s1, x2 * c + x1 * s2], dim=-1)


class _QKt(torch.autograd.Function):
    """``q @ k^T`` with the key gradient computed as ``g^T @ q``. Autograd's own backward forms the gradient of the
    transposed operand, ``q^T @ g``, so the key gradient arrived as [..., D, tokens]; the compiled backward then
    gathered it across that transpose into the flat token layout, in a scalar loop fused with the rotary backward
    (~1.1 ms a layer on (b), AMX Xeon; ~0.6 ms with this). Measured: (b) fp32 forward + backward 1.6% faster,
    (a) bf16 3.5% faster, (a) fp32 unchanged (together with the flat rotary tables of ``padded_rope``)."""

    @staticmethod
    def forward(q, k):
        return q @ k.transpose(-1, -2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        q, k = ctx.saved_tensors
        return g @ k, g.transpose(-1, -2) @ q


_scores = _QKt.apply  # attention scores q @ k^T, both gradients in their inputs' own [..., tokens, D] layout


def _prompt_attention_mask(prompt_mask: torch.Tensor) -> torch.Tensor:
    """[G, 1, P, P] boolean mask of left-padded prompts: causal over real tokens; a padding query sees itself, so no
    row of the softmax is empty (its output is never read)."""
    P = prompt_mask.shape[1]
    causal = torch.ones(P, P, dtype=torch.bool, device=prompt_mask.device).tril()
    eye = torch.eye(P, dtype=torch.bool, device=prompt_mask.device)
    return ((causal & prompt_mask.bool()[:, None, :]) | eye).unsqueeze(1)


class LeanDecoder:
    """The forward of a supported HF causal LM, written out. Holds no parameters of its own."""

    def __init__(self, model):
        cfg = model.config
        self.model, self.inner = model, model.model
        self.H, self.KV = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.eps = cfg.rms_norm_eps
        mm = getattr(model, MATMUL_ATTR, None)
        self.mm_dtype = mm if mm is not None and mm != model.lm_head.weight.dtype else None
        self._cast: dict[int, torch.Tensor] = {}  # weights cast to mm_dtype, once per decoder (= per forward)

    def linears(self, x: torch.Tensor, weights: list) -> list[torch.Tensor]:
        """``F.linear(x, w, b)`` for each ``(w, b)``, in ``mm_dtype`` when set: ``x`` is cast (and its rows padded)
        once for all of them, each weight once per forward (inside autograd, so its gradient flows back in the
        parameter's dtype), and the outputs cast back to ``x``'s dtype."""
        if self.mm_dtype is None:
            return [F.linear(x, w, b) for w, b in weights]
        low = self.low_rows(x)
        return [F.linear(low, self.low(w), None if b is None else self.low(b))[: len(x)].to(x.dtype)
                for w, b in weights]

    def low_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [rows, in] cast to ``mm_dtype``, rows padded to a multiple of ROW_BUCKET: a new row count costs
        oneDNN a new primitive (~0.6 ms measured), so row counts are rounded up instead."""
        low = x.to(self.mm_dtype)
        return F.pad(low, (0, 0, 0, -len(x) % ROW_BUCKET)) if len(x) % ROW_BUCKET else low

    def linear_t(self, x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ weight_t + bias`` for the sampling path's pre-transposed [in, out] weights (see ``fused``)."""
        low = x if self.mm_dtype is None else self.low_rows(x)
        out = self.sampling_mm(low, weight_t, bias)
        return out if self.mm_dtype is None else out[: len(x)].to(x.dtype)

    def sampling_mm(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``a @ b (+ bias)`` on the sampling path. Traced for the compiled decode step with low-precision matmuls it is a
        one-batch ``bmm``: inductor's max-autotune may then run it as its own C++ GEMM (AMX micro-kernels, the
        weights packed at run time), which its ``mm`` lowering only does for frozen weights. A oneDNN bf16 call costs
        ~30 us however small; (a)'s four projections of a layer at 64 rows took 148 instead of 272 us (AMX Xeon)."""
        if self.mm_dtype is not None and torch.compiler.is_compiling():
            out = torch.bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)
            return out if bias is None else out + bias
        return a @ b if bias is None else torch.addmm(bias, a, b)

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.linears(x, [(weight, bias)])[0]

    def low(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in ``mm_dtype``; a parameter is cast once per decoder (keyed by identity: parameters outlive it)."""
        if t.dtype == self.mm_dtype:
            return t
        key = id(t)
        if key not in self._cast:
            self._cast[key] = t.to(self.mm_dtype)
        return self._cast[key]

    # -- pieces shared by training and sampling --------------------------------------------------------------
    def fused(self, layer) -> tuple:
        """(W_qkv, b_qkv or None, W_gate_up, W_o, W_down) of one layer, transposed to [in, out] and contiguous, q/k/v
        and gate/up concatenated so each is one matmul (and cast to ``mm_dtype``). Sampling builds them once per
        batch and reuses them every token: the 64-row decode matmuls ran 5-15% faster on [in, out] weights than on
        nn.Linear's transposed view (AVX2 EPYC, 2 threads). Training passes None (concatenating inside autograd
        costs more than the larger matmuls save: measured 5% slower)."""
        a, m = layer.self_attn, layer.mlp
        dtype = self.mm_dtype or a.q_proj.weight.dtype

        def t(*ws: torch.Tensor) -> torch.Tensor:
            return torch.cat([w.t().to(dtype) for w in ws], dim=1)  # one strided copy into [in, out]

        b_qkv = None if a.q_proj.bias is None else torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).to(dtype)
        return (t(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight), b_qkv, t(m.gate_proj.weight, m.up_proj.weight),
                t(a.o_proj.weight), t(m.down_proj.weight))

    def norm(self, x: torch.Tensor, module) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), module.weight, self.eps)
        # as transformers' RMSNorm in half precision: statistics in float32, the weight applied after casting back
        return module.weight * F.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

    def qkv(self, layer, fused, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Rotated q [N, H, D], k and v [N, KV, D] of flat tokens x [N, hidden] (``cos``, ``sin``: see ``rope``)."""
        h, a = self.norm(x, layer.input_layernorm), layer.self_attn
        if fused is None:
            q, k, v = self.linears(h, [(proj.weight, proj.bias) for proj in (a.q_proj, a.k_proj, a.v_proj)])
            q, k, v = q.view(-1, self.H, self.D), k.view(-1, self.KV, self.D), v.view(-1, self.KV, self.D)
            return _rotate(q, cos, sin), _rotate(k, cos, sin), v
        qkv = self.linear_t(h, fused[0], fused[1])
        qk, v = qkv.view(-1, self.H + 2 * self.KV, self.D).split([self.H + self.KV, self.KV], dim=1)
        q, k = _rotate(qk, cos, sin).split([self.H, self.KV], dim=1)  # one rotation for q and k together
        return q, k, v

    def attend(self, layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """SDPA on [N, heads, T, D] tensors with a boolean [N, 1, Tq, Tk] mask."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=layer.self_attn.scaling,
                                              enable_gqa=self.H != self.KV)

    def attend_written_out(self, layer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
        """``attend`` as matmul, masked softmax, matmul, for the compiled forward: inductor fuses the scaling,
        mask and softmax (and their backward) into its own loops. At (a)'s completion shapes forward + backward took
        1.5-1.9 ms compiled, against 2.7-4.3 ms for SDPA's CPU flash kernel (2-core AVX512-BF16 EPYC; on the AMX
        Xeon the flash kernel had been slightly faster). A query head group sharing a key/value head is one matmul
        (GQA without copying keys)."""
        N, H, T, D = q.shape
        KV = k.shape[1]
        scores = _scores(q.reshape(N, KV, H // KV * T, D), k).view(N, KV, H // KV, T, -1)
        probs = (scores * layer.self_attn.scaling).masked_fill(~mask.unsqueeze(2), float("-inf")).softmax(-1)
        return (probs.view(N, KV, H // KV * T, -1) @ v).view(N, H, T, D)

    def attend_shared_prompts(self, layer, q_c: torch.Tensor, k_p: torch.Tensor, v_p: torch.Tensor,
                              k_c: torch.Tensor, v_c: torch.Tensor, mask_c: torch.Tensor, group: int) -> torch.Tensor:
        """Completions q_c [B, H, C, D] attending to their prompt's keys/values k_p, v_p [G, KV, P, D] (prompt g
        owns rows g * group ... g * group + group - 1) and causally to their own k_c, v_c [B, KV, C, D], under
        mask_c [B, 1, C, P + C]. The prompt part is one matmul per prompt over all its rows' queries -- the
        shared-prefix decomposition of Hydragen (Juravsky et al. 2024) -- so prompt keys are neither copied per
        row nor their gradients summed back; one softmax spans both parts, as in ``attend``."""
        B, H, C, D = q_c.shape
        G, KV, P, _ = k_p.shape
        rc = H // KV * C  # a row's query heads sharing one key/value head, times its columns
        q_g = q_c.reshape(G, group, KV, rc, D).transpose(1, 2).reshape(G, KV, group * rc, D)
        s_p = _scores(q_g, k_p).view(G, KV, group, rc, P).transpose(1, 2).reshape(B, KV, rc, P)
        s_c = _scores(q_c.reshape(B, KV, rc, D), k_c)
        scores = torch.cat([s_p, s_c], -1).view(B, KV, H // KV, C, P + C) * layer.self_attn.scaling
        probs = scores.masked_fill(~mask_c.unsqueeze(2), float("-inf")).softmax(-1).view(B, KV, rc, P + C)
        p_p, p_c = probs.split([P, C], dim=-1)
        p_g = p_p.reshape(G, group, KV, rc, P).transpose(1, 2).reshape(G, KV, group * rc, P)
        out_p = (p_g @ v_p).view(G, KV, group, rc, D).transpose(1, 2).reshape(B, KV, rc, D)
        return (out_p + p_c @ v_c).view(B, H, C, D)

    def finish_layer(self, layer, fused, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual + o_proj of the attention output [N, H*D], then the residual gated MLP. (Folding the residual
        adds into addmm was measured: no faster, and further from the transformers forward's rounding.)"""
        m = layer.mlp
        if fused is None:
            x = x + self.linear(attn, layer.self_attn.o_proj.weight)
            h = self.norm(x, layer.post_attention_layernorm)
            if self.mm_dtype is not None:  # the SiLU gate stays in mm_dtype: see gated_low
                low = self.low_rows(h)
                gate, up = low @ self.low(m.gate_proj.weight).t(), low @ self.low(m.up_proj.weight).t()
                return x + self.gated_low(gate, up, self.low(m.down_proj.weight).t(), x)
            gate, up = self.linears(h, [(m.gate_proj.weight, None), (m.up_proj.weight, None)])
            return x + self.linear(F.silu(gate) * up, m.down_proj.weight)
        x = x + self.linear_t(attn, fused[3])
        h = self.norm(x, layer.post_attention_layernorm)
        if self.mm_dtype is not None:
            gate, up = self.sampling_mm(self.low_rows(h), fused[2]).chunk(2, dim=-1)
            return x + self.gated_low(gate, up, fused[4], x, self.sampling_mm)
        gate, up = self.linear_t(h, fused[2]).chunk(2, dim=-1)
        return x + self.linear_t(F.silu(gate) * up, fused[4])

    def gated_low(self, gate: torch.Tensor, up: torch.Tensor, down_t: torch.Tensor, like: torch.Tensor,
                  matmul=torch.matmul) -> torch.Tensor:
        """down_proj(silu(gate) * up) with gate/up still in ``mm_dtype`` (rows padded), cut to ``like``'s rows and
        dtype. The SiLU and the product stay in ``mm_dtype``: the product is rounded to it for down_proj anyway, and
        this saves casting two [rows, intermediate] tensors up and one back down per layer, and their backward."""
        return matmul(F.silu(gate) * up, down_t)[: len(like)].to(like.dtype)

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, signed sin [N, 1, D] for flat positions [N] (HF's rotary module: every static rope type matches)."""
        cos, sin = self.inner.rotary_emb(x, positions.unsqueeze(0))
        half = sin.shape[-1] // 2
        return cos[0].unsqueeze(1), torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1).unsqueeze(1)

    def rope_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``rope`` of positions 0 .. n - 1: cos, signed sin [n, 1, D]."""
        like = self.inner.embed_tokens.weight  # dtype and device of the hidden states (all the rotary module reads)
        return self.rope(like, torch.arange(n, device=like.device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.norm(x, self.inner.norm))

    # -- training / scoring: packed tokens, shared prefixes -------------------------------------------------
    def completion_logits(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, V] predicting each completion token (rows: left-padded prompt, right-padded completion);
        padding positions hold garbage. Identical prompts in consecutive rows are computed once."""
        # distinct prompts (consecutive runs of identical rows) and, for each row, its prompt
        prompts, inv = torch.unique_consecutive(torch.cat([prompt_ids, prompt_mask], 1), dim=0, return_inverse=True)
        p_ids, p_mask = prompts.split(prompt_ids.shape[1], dim=1)
        if training_compiled(self.model):
            logits = self.bucketed_logits(p_ids, p_mask, completion_ids, completion_mask, inv)
            if logits is not None:
                return logits
        B, C = completion_ids.shape
        dev = completion_ids.device
        G, P = p_ids.shape
        p_len = p_mask.sum(1)
        # flat indices of the tokens to run: prompts left-padded, completions right-padded (the mask is a prefix).
        # A completion's last token predicts nothing and no later token reads its key/value: it is left out.
        p_flat = p_mask.bool().flatten().nonzero().squeeze(1)
        c_flat = F.pad(completion_mask[:, 1:], (0, 1)).bool().flatten().nonzero().squeeze(1)
        n_p = len(p_flat)
        positions = torch.cat([
            (p_mask.cumsum(1) - 1).flatten()[p_flat],
            (p_len[inv].unsqueeze(1) + torch.arange(C, device=dev)).flatten()[c_flat],
        ])
        x = self.inner.embed_tokens(torch.cat([p_ids.flatten()[p_flat], completion_ids.flatten()[c_flat]]))
        layout = ((p_flat, G, P), (c_flat, B, C))

        def to_heads(t: torch.Tensor, part: int) -> torch.Tensor:
            """flat [n, h, D] -> [rows, h, width, D] with zeros at padding"""
            index, rows, width = layout[part]
            out = t.new_zeros(rows * width, t.shape[1], t.shape[2]).index_copy(0, index, t)
            return out.view(rows, width, t.shape[1], t.shape[2]).transpose(1, 2)

        def to_flat(t: torch.Tensor, part: int) -> torch.Tensor:
            """[rows, H, width, D] -> flat [n, H*D] at the part's token indices"""
            return t.transpose(1, 2).reshape(-1, self.H * self.D)[layout[part][0]]

        def attend_completions(layer, q_c, k_p, v_p, k_c, v_c, mask_c):
            k_c, v_c = torch.cat([k_p.index_select(0, inv), k_c], dim=2), torch.cat([v_p.index_select(0, inv), v_c], dim=2)
            return self.attend(layer, q_c, k_c, v_c, mask_c)

        x = self.attention_stack(x, self.rope(x, positions), n_p, p_mask, inv, C, to_heads, to_flat, self.attend,
                                 attend_completions)
        # completion token j is predicted at the prompt's last token (j = 0) or at completion token j - 1
        hidden = x.new_zeros(B * C, x.shape[1]).index_copy(0, c_flat, x[n_p:]).view(B, C, -1)
        last_prompt = x[p_len.cumsum(0) - 1].index_select(0, inv)
        return self.logits(torch.cat([last_prompt.unsqueeze(1), hidden[:, :-1]], dim=1))

    def attention_stack(self, x: torch.Tensor, rope: tuple, n_p: int, p_mask: torch.Tensor, inv: torch.Tensor,
                        C: int, to_heads, to_flat, attend_prompts, attend_completions) -> torch.Tensor:
        """The decoder layers over flat tokens x [n_p prompt tokens + completion tokens, hidden] (``rope``: their
        rotary cos / signed sin [N, 1, D], see ``rope``): prompts attend causally to their real tokens, each
        completion (row b, prompt ``inv[b]``) to its prompt and causally to itself. ``to_heads(t, part)`` /
        ``to_flat(t, part)`` move a part (0 prompts, 1 completions) between the flat layout and
        [rows, heads, width, D]. ``attend_prompts(layer, q, k, v, mask)`` is ``attend`` or
        ``attend_written_out``; ``attend_completions(layer, q_c, k_p, v_p, k_c, v_c, mask_c)`` attends to the
        row's prompt keys/values (per prompt, [G, ...]) and to its own."""
        B, dev = len(inv), x.device
        cos, sin = rope
        G, P = p_mask.shape
        mask_p = _prompt_attention_mask(p_mask)
        causal_c = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
        mask_c = torch.cat([p_mask.bool()[inv][:, None, :].expand(B, C, P), causal_c.expand(B, C, C)], 2).unsqueeze(1)
        for layer in self.inner.layers:
            q, k, v = self.qkv(layer, None, x, cos, sin)
            (q_p, q_c), (k_p, k_c), (v_p, v_c) = ((to_heads(t[:n_p], 0), to_heads(t[n_p:], 1)) for t in (q, k, v))
            out_p = attend_prompts(layer, q_p, k_p, v_p, mask_p)
            out_c = attend_completions(layer, q_c, k_p, v_p, k_c, v_c, mask_c)
            x = self.finish_layer(layer, None, x, torch.cat([to_flat(out_p, 0), to_flat(out_c, 1)]))
        return x

    # -- training / scoring, compiled: padded static shapes ---------------------------------------------------
    def bucketed_logits(self, p_ids: torch.Tensor, p_mask: torch.Tensor, completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, inv: torch.Tensor) -> torch.Tensor | None:
        """``completion_logits`` through the compiled ``padded_logits``: prompt and completion widths, distinct
        prompts and rows are rounded up to multiples of PROMPT_COLUMNS / COMPLETION_COLUMNS / PAD_PROMPTS / PAD_ROWS
        so a run meets few shapes (each one compiles once). Extra prompt columns are left padding (masked), extra
        completion columns right padding (causally after every real token), extra prompts and rows copies of the
        first (read by nothing that is returned), so the real positions' logits are those of the packed path up to
        rounding. None -- the caller then runs the packed forward -- when the padded layout would compute more than
        MAX_PADDED_RATIO times the real tokens (ragged batches: short answers, varied prompts), or once
        torch.compile's recompile limit is spent on other shapes (dynamo would run the padded forward uncompiled)."""
        (G, P), (B, C) = p_ids.shape, completion_ids.shape
        pad_p, pad_c, extra_g, extra_b = -P % PROMPT_COLUMNS, -C % COMPLETION_COLUMNS, -G % PAD_PROMPTS, -B % PAD_ROWS
        padded = (G + extra_g) * (P + pad_p) + (B + extra_b) * (C + pad_c)
        if padded > MAX_PADDED_RATIO * (int(p_mask.sum()) + int(completion_mask.sum())):
            return None
        # GRPO's usual layout -- G prompts, each on B / G consecutive rows, no padding rows -- takes the shared-prefix
        # attention; any other (interleaved prompts, padded counts) copies prompt keys/values per row (one host sync)
        grouped = not (extra_g or extra_b) and bool((inv == torch.arange(B, device=inv.device) // (B // G)).all())
        group = B // G if grouped else 0
        key = (id(self.model), torch.is_grad_enabled(), self.mm_dtype, G + extra_g, P + pad_p, B + extra_b, C + pad_c,
               group)
        if key not in _COMPILED_KEYS:
            if len(_COMPILED_KEYS) >= torch._dynamo.config.recompile_limit:
                return None
            _COMPILED_KEYS.add(key)
        p_ids, p_mask = F.pad(p_ids, (pad_p, 0)), F.pad(p_mask, (pad_p, 0))
        p_ids, p_mask = (torch.cat([t, t[:1].expand(extra_g, -1)]) for t in (p_ids, p_mask))
        c_ids = F.pad(completion_ids, (0, pad_c))
        c_ids, inv = torch.cat([c_ids, c_ids[:1].expand(extra_b, -1)]), torch.cat([inv, inv[:1].expand(extra_b)])
        rope = self.padded_rope(p_mask, inv, c_ids.shape[1])
        return _compiled_padded_logits()(self, p_ids, p_mask, c_ids, inv, group, rope)[:B, :C]

    def padded_rope(self, p_mask: torch.Tensor, inv: torch.Tensor, C: int) -> tuple:
        """Rotary tables (cos, signed sin) [G * P + B * C, 1, D] of ``padded_logits``'s flat positions, prompts then
        completions. Looked up outside the compiled graph: inside, inductor inlined cos(position * frequency) into
        every head's rotation, and looking the tables up by position in the graph fused a gather into the
        rotation's backward, which it compiled to a scalar loop (0.6 ms a layer on (a))."""
        P, dev = p_mask.shape[1], p_mask.device
        table = self.rope_table(P + C)
        pos_p = (p_mask.cumsum(1) - 1).clamp(min=0)
        pos_c = p_mask.sum(1)[inv].unsqueeze(1) + torch.arange(C, device=dev)
        pos = torch.cat([pos_p.flatten(), pos_c.flatten()])
        return tuple(t[pos] for t in table)

    def padded_logits(self, p_ids: torch.Tensor, p_mask: torch.Tensor, c_ids: torch.Tensor,
                      inv: torch.Tensor, group: int = 0, rope: tuple | None = None) -> torch.Tensor:
        """Logits [B, C, V] of completions c_ids [B, C] after left-padded prompts p_ids [G, P] (row b's prompt is
        ``inv[b]``), every position computed, padding included: no data-dependent shapes, so torch.compile
        builds one graph (forward and backward) per shape and fuses its elementwise work. ``rope``: the rotary
        tables of every position (``padded_rope``), computed outside the compiled graph; the rotation is applied
        in the flat token layout, as in the packed forward."""
        (G, P), (B, C) = p_ids.shape, c_ids.shape
        if rope is None:
            rope = self.padded_rope(p_mask, inv, C)
        n_p = G * P
        x = self.inner.embed_tokens(torch.cat([p_ids.flatten(), c_ids.flatten()]))
        shape = ((G, P), (B, C))

        def to_heads(t: torch.Tensor, part: int) -> torch.Tensor:
            return t.view(*shape[part], t.shape[1], self.D).transpose(1, 2)

        def to_flat(t: torch.Tensor, part: int) -> torch.Tensor:
            return t.transpose(1, 2).reshape(-1, self.H * self.D)

        # a row's copy of its prompt's keys/values as a one-hot [B, G] matmul: its backward is a matmul too, where
        # index_select's is a scatter-add (measured slower compiled)
        rows_of = F.one_hot(inv, G).to(x.dtype)

        def share(t: torch.Tensor) -> torch.Tensor:
            if group:  # row b reads prompt b // group: an expand, whose backward is a sum over the group
                return t.unsqueeze(1).expand(G, group, *t.shape[1:]).reshape(B, *t.shape[1:])
            return (rows_of @ t.flatten(1)).view(B, *t.shape[1:])

        def attend_completions(layer, q_c, k_p, v_p, k_c, v_c, mask_c):
            if group:
                return self.attend_shared_prompts(layer, q_c, k_p, v_p, k_c, v_c, mask_c, group)
            k_c, v_c = torch.cat([share(k_p), k_c], dim=2), torch.cat([share(v_p), v_c], dim=2)
            return self.attend_written_out(layer, q_c, k_c, v_c, mask_c)

        x = self.attention_stack(x, rope, n_p, p_mask, inv, C, to_heads, to_flat, self.attend_written_out,
                                 attend_completions)
        # left padding: every prompt's last real token is its last column
        last_prompt = share(x[:n_p].view(G, P, -1)[:, -1])
        return self.logits(torch.cat([last_prompt.unsqueeze(1), x[n_p:].view(B, C, -1)[:, :-1]], dim=1))

    # -- sampling: a static KV cache ----------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, max_new: int):
        """Run the left-padded prompts once; returns (last logits [G, V], cache) with the cache repeated n times
        per prompt and room for ``max_new`` more tokens."""
        static = decoding_compiled(self.model)
        if static:  # compiled: prompt widths rounded up (more left padding, masked) so few shapes get compiled
            pad = -prompt_ids.shape[1] % STATIC_COLUMNS
            prompt_ids, prompt_mask = F.pad(prompt_ids, (pad, 0)), F.pad(prompt_mask, (pad, 0))
        G, P = prompt_ids.shape
        T = P + max_new
        if static:
            T += -T % STATIC_COLUMNS
        stack = _compiled_prefill_stack() if static else LeanDecoder.prefill_stack
        last, keys, values, fused = stack(self, prompt_ids, prompt_mask, n, T, static)
        if static:  # the compiled prefill may return a weight in the parameter's own [out, in] layout; the decode
            # step's C++ GEMMs pack their weights every call, which is a scalar transpose more unless [in, out]
            # contiguous ((a) generate 30.4 -> 26.4 ms, 5 alternating rounds in one process)
            fused = [tuple(None if t is None else t.contiguous() for t in layer) for layer in fused]
        # tables for the decode steps: rotary cos/sin of every position, additive key bias (-inf on prompt padding)
        like = self.inner.embed_tokens.weight
        rope = self.rope_table(T)
        key_ok = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(G, T - P, dtype=torch.bool)], 1)
        bias = torch.zeros(G, T, dtype=like.dtype, device=like.device).masked_fill_(~key_ok, float("-inf"))
        bias = bias.repeat_interleave(n * self.KV, 0).unsqueeze(1)  # [G * n * KV, 1, T]
        return last, LeanCache(keys, values, bias, P, fused, self.KV, rope, static)

    def prefill_stack(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int, T: int, static: bool):
        """``prefill``'s layer stack: (last logits [G, V], keys, values, fused weights), the cache T columns wide;
        ``static``: compiled (the attention written out, which inductor fuses) and the cache zero-filled."""
        G, P = prompt_ids.shape
        fused = [self.fused(layer) for layer in self.inner.layers]
        pos = (prompt_mask.cumsum(1) - 1).clamp(min=0)
        x = self.inner.embed_tokens(prompt_ids).flatten(0, 1)
        cos, sin = self.rope(x, pos.flatten())
        mask = _prompt_attention_mask(prompt_mask)
        attend = self.attend_written_out if static else self.attend
        keys, values = [], []
        for layer, fw in zip(self.inner.layers, fused):
            q, k, v = self.qkv(layer, fw, x, cos, sin)
            q, k, v = (t.view(G, P, t.shape[1], self.D).transpose(1, 2) for t in (q, k, v))
            out = attend(layer, q, k, v, mask).transpose(1, 2).reshape(G * P, -1)
            x = self.finish_layer(layer, fw, x, out)
            for store, t in ((keys, k), (values, v)):  # [G, KV, P, D] -> [G * n * KV, P + max_new, D], one copy
                # columns past the prompt are written before they are read; the static step reads every column
                # (masked, weight 0), so there they must hold zeros, not uninitialised memory that may be NaN
                full = (t.new_zeros if static else t.new_empty)(G, n, self.KV, T, self.D)
                full[:, :, :, :P] = t.unsqueeze(1)
                store.append(full.view(G * n * self.KV, T, self.D))
        return self.logits(x.view(G, P, -1)[:, -1]), keys, values, fused

    @torch.no_grad()
    def decode(self, cache: LeanCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per active row: writes its k/v at the cache's next column; returns logits [b, V]."""
        if cache.static:  # the compiled step (its draw, from dummy uniforms, unused)
            return self.decode_and_draw(cache, tokens, positions, 1.0, positions.new_zeros(len(positions), dtype=torch.float64))[0]
        col = cache.length
        x = self.inner.embed_tokens(tokens)
        cos, sin = cache.cos[positions], cache.sin[positions]
        logits = self.decode_layers(cache.fused, cache.keys, cache.values, x, cos, sin, cache.bias[:, :, :col + 1], col)
        cache.length += 1
        return logits

    @torch.no_grad()
    def decode_and_draw(self, cache: LeanCache, tokens: torch.Tensor, positions: torch.Tensor, temperature: float,
                        u: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``decode`` on a static cache (every cache row), then ``sampling.draw`` of the next token from uniforms u
        [rows], all in one compiled graph: (logits, token, log-prob, entropy, mean log-softmax). A decode step's time
        is per-op overhead, not FLOPs, so the sampling math and the embedding lookup go inside the graph too."""
        step = _compiled_decode_and_draw()
        # a cache's first step has dynamo check its guards; the later ones pass the same cache tensors and inputs
        # of the same shapes and dtypes (only their values change), so the check (~0.1 ms a token) is skipped
        unchecked = cache.checked_temperature == temperature
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=unchecked):
            out = step(self, cache.fused, cache.keys, cache.values, tokens, positions, cache.cos, cache.sin,
                       cache.bias, cache.columns[cache.length:cache.length + 1], temperature, u)
        cache.length += 1
        cache.checked_temperature = temperature
        return out

    def decode_and_draw_stack(self, fused, keys, values, tokens, positions, cos, sin, bias, col, temperature, u):
        """``decode_and_draw``'s graph: embedding, rotary lookup, ``decode_layers``, ``sampling.draw``."""
        x = self.inner.embed_tokens(tokens)
        logits = self.decode_layers(fused, keys, values, x, cos[positions], sin[positions], bias, col).float()
        return (logits, *draw(logits, temperature, u))

    def decode_layers(self, fused, keys, values, x, cos, sin, bias, col):
        """The layer stack of one decode step; ``col`` is the cache column to write: an int (eager: attention over
        columns ``:col + 1`` of the cache views) or a 1-element tensor (static shapes, for torch.compile: attention
        over every column, those after ``col`` masked)."""
        b = len(x)
        static = isinstance(col, torch.Tensor)
        if static:
            bias = bias.masked_fill(torch.arange(bias.shape[-1], device=x.device) > col, float("-inf"))
        for layer, fw, k_cache, v_cache in zip(self.inner.layers, fused, keys, values):
            q, k, v = self.qkv(layer, fw, x, cos, sin)
            k, v = k.reshape(b * self.KV, 1, self.D), v.reshape(b * self.KV, 1, self.D)
            if static:
                k_cache.index_copy_(1, col, k)
                v_cache.index_copy_(1, col, v)
            else:
                k_cache[:, col:col + 1], v_cache[:, col:col + 1] = k, v
                k_cache, v_cache = k_cache[:, :col + 1], v_cache[:, :col + 1]
            # one query per row: three batched matmuls over the cache's [b * KV, T, D] views, no copies (SDPA's
            # CPU flash kernel is slow for a single query); the query heads sharing a key/value head go together
            scores = torch.baddbmm(bias, q.reshape(b * self.KV, self.H // self.KV, self.D), k_cache.transpose(1, 2),
                                   alpha=layer.self_attn.scaling)
            out = torch.bmm(scores.softmax(-1), v_cache).view(b, self.H * self.D)
            x = self.finish_layer(layer, fw, x, out)
        return self.logits(x)


class LeanCache:
    """Per-layer keys/values [rows * KV, P + max_new, D], the additive key bias [rows * KV, 1, P + max_new] (-inf on
    prompt padding) and the rotary tables cos / signed sin [P + max_new, 1, D] of every position."""

    def __init__(self, keys, values, bias: torch.Tensor, P: int, fused, kv_heads: int, rope, static: bool = False):
        self.keys, self.values, self.bias, self.fused, self.length, self.kv_heads = keys, values, bias, fused, P, kv_heads
        self.cos, self.sin = rope
        self.static = static  # decoded by the compiled step: shapes never change (see compile_decoding)
        self.checked_temperature: float | None = None  # set once a compiled step ran with guards checked
        self.columns = torch.arange(bias.shape[-1], device=bias.device)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (finished rows leave the batch)."""
        flat = (rows.unsqueeze(1) * self.kv_heads + torch.arange(self.kv_heads, device=rows.device)).flatten()
        self.keys = [k.index_select(0, flat) for k in self.keys]
        self.values = [v.index_select(0, flat) for v in self.values]
        self.bias = self.bias.index_select(0, flat)
