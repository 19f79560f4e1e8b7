"""The lean forward (lean.py) computes what the transformers forward computes: logits, gradients, sampled tokens."""

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tiltlm import lean
from tiltlm.logprobs import completion_logits, sequence_logprobs
from tiltlm.rollout import HFEngine

COMMON = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, pad_token_id=0, eos_token_id=2, bos_token_id=1)


def tiny(kind: str):
    torch.manual_seed(0)
    if kind == "llama_gqa":
        return LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=2))
    if kind == "llama_tied":
        return LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=4, tie_word_embeddings=True))
    model = Qwen2ForCausalLM(Qwen2Config(**COMMON, num_key_value_heads=2))  # q/k/v biases
    with torch.no_grad():  # Qwen2 initialises its biases at zero: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def grouped_batch(groups=3, n=4, P=6, C=5, seed=1):
    """Rows grouped by prompt (n each), prompts left-padded to different lengths, completions of lengths 1..C."""
    g = torch.Generator().manual_seed(seed)
    p_len = torch.tensor([P, P - 2, P - 1, P - 3][:groups])
    p_mask = (torch.arange(P) >= (P - p_len)[:, None]).long()
    p_ids = torch.randint(3, 40, (groups, P), generator=g) * p_mask
    lens = torch.randint(1, C + 1, (groups * n,), generator=g)
    lens[0] = C
    c_mask = (torch.arange(C) < lens[:, None]).long()
    c_ids = torch.randint(3, 40, (groups * n, C), generator=g) * c_mask
    return p_ids.repeat_interleave(n, 0), p_mask.repeat_interleave(n, 0), c_ids, c_mask


@pytest.mark.parametrize("kind", ["llama_gqa", "llama_tied", "qwen2_bias"])
def test_logits_and_gradients_match_transformers(kind):
    model = tiny(kind)
    assert lean.supported(model) is None
    p_ids, p_mask, c_ids, c_mask = grouped_batch()
    real = c_mask.bool()
    weights = torch.randn(*c_ids.shape, 40, generator=torch.Generator().manual_seed(2))

    def logits_and_grads(fn):
        model.zero_grad()
        logits = fn()
        (logits * weights)[real].sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    ref, ref_grads = logits_and_grads(lambda: completion_logits(
        model, torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), c_ids.shape[1]))
    got, got_grads = logits_and_grads(lambda: lean.LeanDecoder(model).completion_logits(p_ids, p_mask, c_ids, c_mask))
    assert (ref - got)[real].abs().max() < 1e-5
    for a, b in zip(ref_grads, got_grads):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())
    # a shared prefix gets the sum of its completions' gradients: the same as with every prompt its own row
    ungrouped = [t[[0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]] for t in (p_ids, p_mask, c_ids, c_mask)]
    order = torch.tensor([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
    mixed = lean.LeanDecoder(model).completion_logits(*ungrouped)  # no two consecutive rows share a prompt
    assert (mixed.detach() - got[order])[real[order]].abs().max() < 1e-5


def test_sequence_logprobs_dispatch_and_a_wrong_model_is_caught():
    model = tiny("llama_gqa")
    p_ids, p_mask, c_ids, c_mask = grouped_batch()
    plain, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)  # not enabled: transformers forward
    assert lean.enable(model)
    fast, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    assert (plain - fast)[c_mask.bool()].abs().max() < 1e-5
    with torch.no_grad():  # the comparison is sharp enough to see a 1e-3 change of one weight
        model.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    moved, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    assert (moved - fast)[c_mask.bool()].abs().max() > 1e-6


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2_bias"])
def test_sampling_matches_transformers_engine(kind):
    model = tiny(kind)
    prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 4, 11, 12, 13]]
    engine = HFEngine(model, eos_id=2, pad_id=0)
    hf = engine.generate(prompts, 5, 7, 1.0, torch.Generator().manual_seed(3))
    greedy_hf = engine.generate(prompts, 2, 7, 0.0)
    lean.enable(model)
    fast = engine.generate(prompts, 5, 7, 1.0, torch.Generator().manual_seed(3))
    greedy_fast = engine.generate(prompts, 2, 7, 0.0)
    assert torch.equal(hf.completion_ids, fast.completion_ids) and torch.equal(hf.finished, fast.finished)
    assert (hf.sample_logprobs - fast.sample_logprobs).abs().max() < 1e-5
    assert (hf.entropy - fast.entropy).abs().max() < 1e-5
    assert torch.equal(greedy_hf.completion_ids, greedy_fast.completion_ids)
    # the recorded sampling log-probs are those of a fresh forward over the sampled rows
    lp, _ = sequence_logprobs(model, fast.prompt_ids, fast.prompt_mask, fast.completion_ids, fast.completion_mask)
    real = fast.completion_mask.bool()
    assert (lp - fast.sample_logprobs)[real].abs().max() < 1e-5


def test_unsupported_architectures_fall_back():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=32, n_layer=1, n_head=4, n_positions=32))
    assert "gpt2" in lean.supported(gpt2)
    assert not lean.enable(gpt2) and not lean.enabled(gpt2)
    torch.manual_seed(0)
    rope_dynamic = LlamaForCausalLM(LlamaConfig(**COMMON, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                            "rope_theta": 10000.0}))
    assert "rope" in lean.supported(rope_dynamic)


def test_loader_enables_the_lean_path_unless_asked_not_to():
    from tiltlm.models import load_model_and_tokenizer

    assert lean.enabled(load_model_and_tokenizer("embedded")[0])
    assert not lean.enabled(load_model_and_tokenizer("embedded", lean_forward=False)[0])


def test_half_precision_follows_transformers():
    """bf16: RMSNorm statistics in float32 as in transformers; logits agree to bf16 precision and sampling runs."""
    model = tiny("llama_gqa").to(torch.bfloat16)
    p_ids, p_mask, c_ids, c_mask = grouped_batch()
    with torch.no_grad():
        ref = completion_logits(model, torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1), c_ids.shape[1])
        got = lean.LeanDecoder(model).completion_logits(p_ids, p_mask, c_ids, c_mask)
    real = c_mask.bool()
    assert got.dtype == torch.bfloat16
    assert (ref.float() - got.float())[real].abs().max() < 0.05 * ref.float()[real].abs().max()
    lean.enable(model)
    out = HFEngine(model, eos_id=2, pad_id=0).generate([[1, 5, 6], [1, 9]], 3, 5, 1.0, torch.Generator().manual_seed(0))
    lp, _ = sequence_logprobs(model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    assert (lp - out.sample_logprobs)[out.completion_mask.bool()].abs().max() < 0.1


def test_a_wrapped_projection_sends_the_model_back_to_its_own_forward():
    """An adapter injected after loading (here a Linear subclass that adds a low-rank term, as LoRA does) must not
    be bypassed: the lean path switches itself off and the model's own forward (with the adapter) is used."""

    class Adapted(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) + 0.5 * x[..., : self.out_features]

    model = tiny("llama_tied")
    assert lean.enable(model) and lean.enabled(model)
    p_ids, p_mask, c_ids, c_mask = grouped_batch()
    before, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    old = model.model.layers[0].mlp.down_proj
    adapted = Adapted(old.in_features, old.out_features, bias=False)
    adapted.weight = old.weight
    model.model.layers[0].mlp.down_proj = adapted
    assert not lean.enabled(model) and "nn.Linear" in lean.supported(model)
    after, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    assert (after - before)[c_mask.bool()].abs().max() > 1e-4  # the adapter acts


def test_enable_off_unmarks_a_supported_model():
    model = tiny("llama_gqa")
    assert lean.enable(model) and lean.enabled(model)
    assert not lean.enable(model, on=False) and not lean.enabled(model)


@pytest.mark.parametrize("kind", ["llama_gqa", "qwen2_bias"])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_bf16_matmuls_stay_within_bf16_error_of_float32(kind, layout, monkeypatch):
    """runtime.matmul_dtype=bfloat16: the projections run in bf16 (so results do differ from float32), the
    parameters and their gradients stay float32, and logits / gradients stay within bf16 rounding of float32 -- on
    the packed forward and on compile_training's padded one (its math run uncompiled here)."""
    model = tiny(kind)
    monkeypatch.setattr(lean, "_COMPILED_KEYS", set())  # other tests' shapes must not spend the budget
    if layout == "padded":
        monkeypatch.setattr(lean, "_compiled_padded_logits", lambda: lean.LeanDecoder.padded_logits)
        monkeypatch.setattr(lean, "MAX_PADDED_RATIO", float("inf"))
    p_ids, p_mask, c_ids, c_mask = grouped_batch()
    real = c_mask.bool()
    weights = torch.randn(*c_ids.shape, 40, generator=torch.Generator().manual_seed(2))

    def logits_and_grads():
        model.zero_grad()
        logits = lean.LeanDecoder(model).completion_logits(p_ids, p_mask, c_ids, c_mask)
        (logits * weights)[real].sum().backward()
        return logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])

    assert lean.enable(model)
    assert lean.compile_training(model, layout == "padded") == (layout == "padded")
    ref, ref_grad = logits_and_grads()  # float32 on the same layout
    assert lean.enable(model, matmul_dtype=torch.bfloat16) and lean.training_compiled(model) == (layout == "padded")
    got, got_grad = logits_and_grads()
    assert (layout == "padded") == bool(lean._COMPILED_KEYS)  # the padded forward did run (its shapes were keyed)
    assert got.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in model.parameters())
    err = (got - ref)[real].abs().max()
    assert 1e-6 < err < 0.02 * ref[real].abs().max()  # engaged (not float32), but only bf16 rounding away
    cos = torch.nn.functional.cosine_similarity(got_grad.double(), ref_grad.double(), 0)
    assert cos > 0.999 and (got_grad - ref_grad).norm() < 0.03 * ref_grad.norm()


def test_bf16_sampling_logprobs_agree_with_the_bf16_training_forward():
    """The PPO ratio at mu = 1 compares sampling log-probs with the training forward's: under bf16 matmuls both are
    bf16 computations of different shapes, so the ratio is no longer exactly 1 -- but it stays within 1e-2."""
    model = tiny("llama_gqa")
    assert lean.enable(model, matmul_dtype=torch.bfloat16)
    out = HFEngine(model, eos_id=2, pad_id=0).generate([[1, 5, 6, 7], [1, 9], [1, 3, 4]], 4, 6, 1.0,
                                                       torch.Generator().manual_seed(0))
    lp, _ = sequence_logprobs(model, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
    diff = (lp - out.sample_logprobs)[out.completion_mask.bool()].abs()
    assert diff.max() < 1e-2
    # the compiled decode step (its projections one-batch bmm's that max-autotune may hand to inductor's C++ GEMM,
    # LeanDecoder.sampling_mm) samples from the same distribution: its log-probs agree with the same forward
    assert lean.compile_decoding(model)
    comp = HFEngine(model, eos_id=2, pad_id=0).generate([[1, 5, 6, 7], [1, 9], [1, 3, 4]], 4, 6, 1.0,
                                                        torch.Generator().manual_seed(0))
    lean.compile_decoding(model, False)
    lp_c, _ = sequence_logprobs(model, comp.prompt_ids, comp.prompt_mask, comp.completion_ids, comp.completion_mask)
    assert (lp_c - comp.sample_logprobs)[comp.completion_mask.bool()].abs().max() < 1e-2
    lean.enable(model)  # and float32 sampling of the same model is a different computation
    exact = HFEngine(model, eos_id=2, pad_id=0).generate([[1, 5, 6, 7], [1, 9], [1, 3, 4]], 4, 6, 1.0,
                                                         torch.Generator().manual_seed(0))
    lp32, _ = sequence_logprobs(model, exact.prompt_ids, exact.prompt_mask, exact.completion_ids, exact.completion_mask)
    assert (lp32 - exact.sample_logprobs)[exact.completion_mask.bool()].abs().max() < 1e-5


def test_lazy_cache_compaction_gives_the_eager_logits():
    """LeanState keeps finished rows in the cache until half of them are finished: the live rows' logits must equal
    those of a cache compacted at once, both while finished rows linger and after the compaction."""
    from tiltlm.rollout.hf import LeanState

    model = tiny("llama_gqa")
    assert lean.enable(model)
    ids = torch.tensor([[1, 5, 6, 7], [0, 0, 1, 9]])
    mask = (ids != 0).long()
    lazy, eager = LeanState(model, ids, mask, 3, 4), LeanState(model, ids, mask, 3, 4)  # 6 rows
    pos = mask.sum(1).repeat_interleave(3)
    tok = torch.tensor([5, 6, 7, 8, 9, 10])
    lazy.step(tok, pos), eager.step(tok, pos)
    keep = torch.tensor([0, 2, 3, 5])  # 2 of 6 finish: lazy keeps them in its cache
    lazy.select(keep)
    eager.cache.select(keep)
    assert lazy.cache_rows == 6 and eager.cache.keys[0].shape[0] == 4 * model.config.num_key_value_heads
    got, want = lazy.step(tok[keep], pos[keep] + 1), eager.decoder.decode(eager.cache, tok[keep], pos[keep] + 1)
    assert got.shape == want.shape and (got - want).abs().max() < 1e-5
    lazy.select(torch.tensor([1, 3]))  # now 2 of 6 live: compacted
    eager.cache.select(torch.tensor([1, 3]))
    assert lazy.cache_rows == 2 and torch.equal(lazy.rows, torch.arange(2))
    got, want = lazy.step(tok[[2, 5]], pos[[2, 5]] + 2), eager.decoder.decode(eager.cache, tok[[2, 5]], pos[[2, 5]] + 2)
    assert (got - want).abs().max() < 1e-5


def test_compiled_decoding_gives_the_eager_logits_and_samples():
    """The compiled prefill (prompts left-padded to a width bucket) and decode step (static cache shapes, masked
    future columns, no compaction) compute the eager logits, including after a parameter update (the compiled graphs
    must read the parameters, not a frozen copy), and the sampler then draws the same tokens from the same random
    stream."""
    from tiltlm.rollout.hf import LeanState

    model = tiny("qwen2")  # q/k/v biases and grouped key/value heads
    assert lean.enable(model)
    ids = torch.tensor([[1, 5, 6, 7], [0, 0, 1, 9]])
    mask = (ids != 0).long()
    eager = LeanState(model, ids, mask, 3, 5)
    assert lean.compile_decoding(model) and lean.decoding_compiled(model)
    static = LeanState(model, ids, mask, 3, 5)
    assert static.cache.static and static.cache.keys[0].shape[1] % lean.STATIC_COLUMNS == 0
    assert static.cache.length == lean.STATIC_COLUMNS  # the compiled prefill left-pads prompts to its bucket
    assert not eager.cache.static and eager.cache.keys[0].shape[1] == 4 + 5
    assert (static.logits - eager.logits).abs().max() < 1e-5  # the prefill's last logits
    pos = mask.sum(1).repeat_interleave(3)
    tok = torch.tensor([5, 6, 7, 8, 9, 10])
    for t in range(3):
        got, want = static.step(tok, pos + t), eager.step(tok, pos + t)
        assert (got - want).abs().max() < 1e-5
        tok = (tok + 3) % 40
    keep = torch.tensor([0, 1, 4])  # half the rows finish: eager compacts, the static cache keeps its 6 rows
    static.select(keep), eager.select(keep)
    assert static.cache_rows == 6 and eager.cache_rows == 3
    got, want = static.step(tok[keep], pos[keep] + 3), eager.step(tok[keep], pos[keep] + 3)
    assert got.shape == (3, 40) and (got - want).abs().max() < 1e-5

    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        model.model.norm.weight.add_(0.5)
    lean.compile_decoding(model, False)
    eager = LeanState(model, ids, mask, 3, 5)
    lean.compile_decoding(model)
    static = LeanState(model, ids, mask, 3, 5)
    got, want = static.step(tok, pos), eager.step(tok, pos)
    assert (got - want).abs().max() < 1e-5

    prompts = [[1, 5, 6, 7], [1, 9], [1, 3, 4]]
    # EOS: the token this random model draws most often early on, so that some rows finish mid-generation
    probe = HFEngine(model, eos_id=-1, pad_id=0).generate(prompts, 4, 6, 1.0, torch.Generator().manual_seed(0))
    eos = int(probe.completion_ids[:, 1:4].flatten().mode().values)
    sampled = HFEngine(model, eos_id=eos, pad_id=0).generate(prompts, 4, 6, 1.0, torch.Generator().manual_seed(0))
    lean.compile_decoding(model, False)
    reference = HFEngine(model, eos_id=eos, pad_id=0).generate(prompts, 4, 6, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(sampled.completion_ids, reference.completion_ids)
    assert (sampled.sample_logprobs - reference.sample_logprobs).abs().max() < 1e-5
    # the compiled loop keeps finished rows decoding: their masks, EOS flags and statistics must still be the eager ones
    assert reference.finished.any() and not reference.finished.all()  # the comparison covers both kinds of row
    assert torch.equal(sampled.completion_mask, reference.completion_mask)
    assert torch.equal(sampled.finished, reference.finished)
    for name in ("entropy", "mean_logsoftmax"):
        assert (getattr(sampled, name) - getattr(reference, name)).abs().max() < 1e-5, name
    greedy = HFEngine(model, eos_id=eos, pad_id=0).generate(prompts, 2, 6, 0.0)  # argmax inside the compiled graph
    lean.compile_decoding(model)
    compiled_greedy = HFEngine(model, eos_id=eos, pad_id=0).generate(prompts, 2, 6, 0.0)
    assert torch.equal(compiled_greedy.completion_ids, greedy.completion_ids)
    assert torch.equal(compiled_greedy.completion_mask, greedy.completion_mask)


def test_compiled_training_forward_gives_the_transformers_logits_and_gradients(monkeypatch):
    """runtime.compile_training: the padded, bucketed forward (widths, prompts and rows rounded up, every padding
    position computed) returns the transformers forward's logits at every real position and the same gradients --
    with grouped and with interleaved prompts, and without grad (the reference log-probs). Compiled, it gives the
    same again, also after a parameter update (the graph reads the live parameters), and a batch of other sizes
    inside the same buckets compiles nothing new."""
    from torch._dynamo.utils import counters

    model = tiny("qwen2_bias")  # q/k/v biases and grouped key/value heads
    assert lean.enable(model) and lean.compile_training(model) and lean.training_compiled(model)
    monkeypatch.setattr(lean, "MAX_PADDED_RATIO", float("inf"))  # this tiny batch is mostly padding once bucketed
    monkeypatch.setattr(lean, "_COMPILED_KEYS", set())  # other tests' shapes must not spend the compile budget
    batches = {"padded": grouped_batch(),  # 3 prompts x 4, P = 6, C = 5: none a multiple of its bucket
               "grouped": grouped_batch(groups=4)}  # 4 x 4: no padding rows, shared-prefix attention
    p_ids, p_mask, c_ids, c_mask = batches["padded"]
    real = c_mask.bool()
    weights = torch.randn(16, c_ids.shape[1], 40, generator=torch.Generator().manual_seed(2))
    shared = []  # calls of the shared-prefix attention (the grouped layout's path)
    monkeypatch.setattr(lean.LeanDecoder, "attend_shared_prompts",
                        lambda *a, _f=lean.LeanDecoder.attend_shared_prompts: shared.append(1) or _f(*a))

    def logits_and_grads(fn, rows):
        model.zero_grad()
        logits = fn()
        (logits * weights[: len(c_ids)][rows])[real[rows]].sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    def transformers(rows):
        ids, mask = torch.cat([p_ids, c_ids], 1)[rows], torch.cat([p_mask, c_mask], 1)[rows]
        return completion_logits(model, ids, mask, c_ids.shape[1])

    def check(rows=slice(None), batch="padded"):
        nonlocal p_ids, p_mask, c_ids, c_mask, real
        p_ids, p_mask, c_ids, c_mask = batches[batch]
        real = c_mask.bool()
        calls = len(shared)

        def lean_logits():
            return lean.LeanDecoder(model).completion_logits(p_ids[rows], p_mask[rows], c_ids[rows], c_mask[rows])

        want, want_grads = logits_and_grads(lambda: transformers(rows), rows)
        got, got_grads = logits_and_grads(lean_logits, rows)
        assert got.shape == want.shape and (got - want)[real[rows]].abs().max() < 1e-5
        for a, b in zip(want_grads, got_grads):
            assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())
        with torch.no_grad():
            assert (lean_logits() - transformers(rows))[real[rows]].abs().max() < 1e-5
        assert (len(shared) > calls) == (batch == "grouped")

    with monkeypatch.context() as eager:  # the padded layout's math, uncompiled: cheap to check more cases
        eager.setattr(lean, "_compiled_padded_logits", lambda: lean.LeanDecoder.padded_logits)
        check()
        check(torch.tensor([0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]))  # no two consecutive rows share a prompt
        check(batch="grouped")
    check(batch="grouped")  # compiled: 4 prompts x 16 rows, P 16, C 8, shared-prefix attention
    check()  # compiled: the same buckets, keys/values copied per row through a one-hot matmul
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        model.model.norm.weight.add_(0.5)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > 0  # the compiled path did compile
    rows = torch.arange(9)  # 3 prompts x 3 rows: still inside the buckets
    want, want_grads = logits_and_grads(lambda: transformers(rows), rows)
    got, got_grads = logits_and_grads(
        lambda: lean.LeanDecoder(model).completion_logits(p_ids[rows], p_mask[rows], c_ids[rows], c_mask[rows]), rows)
    assert (got - want)[real[rows]].abs().max() < 1e-5
    for a, b in zip(want_grads, got_grads):
        assert (a - b).abs().max() <= 1e-5 * max(1.0, a.abs().max().item())
    assert counters["stats"]["unique_graphs"] == compiled


def test_compiled_training_falls_back_to_the_packed_forward_when_ragged_or_out_of_compiles(monkeypatch):
    """A batch the padded layout would blow up by more than MAX_PADDED_RATIO, or a new shape once torch.compile's
    recompile limit is spent on others (dynamo would run the padded forward uncompiled, which is slower), goes to
    the packed forward: the same logits, nothing compiled."""
    import torch._dynamo

    model = tiny("llama_gqa")
    assert lean.enable(model) and lean.compile_training(model)
    monkeypatch.setattr(lean, "_compiled_padded_logits", lambda: pytest.fail("the compiled forward was called"))
    p_ids, p_mask, c_ids, c_mask = grouped_batch()
    inv = torch.arange(3).repeat_interleave(4)
    decoder = lean.LeanDecoder(model)
    # 15 prompt + 43 completion tokens; bucketed: 4 x 16 + 16 x 8 = 192 > 1.5 x 58
    assert decoder.bucketed_logits(p_ids[::4], p_mask[::4], c_ids, c_mask, inv) is None
    monkeypatch.setattr(lean, "MAX_PADDED_RATIO", float("inf"))
    limit = torch._dynamo.config.recompile_limit
    monkeypatch.setattr(lean, "_COMPILED_KEYS", {("other shape", i) for i in range(limit)})
    assert decoder.bucketed_logits(p_ids[::4], p_mask[::4], c_ids, c_mask, inv) is None
    got = decoder.completion_logits(p_ids, p_mask, c_ids, c_mask)
    lean.compile_training(model, False)
    want = lean.LeanDecoder(model).completion_logits(p_ids, p_mask, c_ids, c_mask)
    assert torch.equal(got, want)


def test_quiet_autotune_hides_the_typed_storage_warning_only_from_inductor():
    """max-autotune's benchmarking (inductor's select_algorithm) calls the deprecated TypedStorage API once per
    compile; ``quiet_autotune`` (installed by ``compile_decoding``) hides that warning from that module only."""
    import warnings

    message = "TypedStorage is deprecated. It will be removed in the future"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        lean.quiet_autotune()
        for module in ("torch._inductor.select_algorithm", "my_project.storage_user"):
            warnings.warn_explicit(message, UserWarning, module.replace(".", "/") + ".py", 1, module=module)
    assert [(str(w.message), w.filename) for w in seen] == [(message, "my_project/storage_user.py")]
