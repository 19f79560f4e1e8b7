"""Sampling log-probs must equal a fresh forward pass (the rollout/trainer mismatch bug), and the batch layout
(left-padded prompts, right-padded completions) must not leak into the loss."""

import copy

import torch

from tiltlm.advantages import AdvantageInputs, group_zscore
from tiltlm.batch import RolloutBatch
from tiltlm.config import AdvantageConfig
from tiltlm.logprobs import sequence_logprobs
from tiltlm.objectives import AGGREGATIONS, ClippedPolicyGradient
from tiltlm.rollout import HFEngine, decode_completions

PROMPTS = ["1+2=", "123+456=", "7+89=", "99+1="]


def zscore(rewards, groups):
    return group_zscore(AdvantageInputs(rewards, groups), AdvantageConfig()).float()


def _generate(model, tokenizer, n=4, temperature=1.0, seed=0, max_new=8):
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    ids = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return engine.generate(ids, n, max_new, temperature, torch.Generator().manual_seed(seed))


def test_sampling_logprobs_equal_fresh_forward(tiny_model, tokenizer):
    for temperature in (1.0, 0.7):
        gen = _generate(tiny_model, tokenizer, temperature=temperature)
        mask = gen.completion_mask.bool()
        assert mask.sum() > len(PROMPTS)  # rows of different lengths, some padding
        with torch.no_grad():
            logp, extra = sequence_logprobs(
                tiny_model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, temperature,
                {"entropy", "mean_logsoftmax"},
            )
        ent = extra["entropy"]
        assert torch.allclose(extra["mean_logsoftmax"][mask], gen.mean_logsoftmax[mask], atol=1e-5)
        assert torch.allclose(logp[mask], gen.sample_logprobs[mask], atol=1e-5)
        assert torch.allclose(ent[mask], gen.entropy[mask], atol=1e-5)
        assert torch.all(gen.sample_logprobs[~mask] == 0)


def test_sampling_is_seeded_and_layout_is_consistent(tiny_model, tokenizer):
    a = _generate(tiny_model, tokenizer, seed=3)
    b = _generate(tiny_model, tokenizer, seed=3)
    assert torch.equal(a.completion_ids, b.completion_ids)
    # after EOS a row is all padding, masked out; finished iff an EOS was emitted
    for ids, m, fin in zip(a.completion_ids, a.completion_mask, a.finished):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()
        assert bool(fin) == (tokenizer.eos_token_id in ids[:n].tolist())
        if fin:
            assert ids[n - 1].item() == tokenizer.eos_token_id
    # prompts are left-padded: the last prompt column is real in every row
    assert a.prompt_mask[:, -1].all()
    texts = decode_completions(tokenizer, a.completion_ids, a.completion_mask)
    assert len(texts) == len(PROMPTS) * 4 and not any(tok in t for t in texts for tok in ("</s>", "<pad>", "<s>"))


def test_decode_completions_equals_batch_decode(tokenizer):
    """The backend shortcut gives transformers' batch_decode texts: masked-out ids dropped (wherever the mask is
    off, not only after EOS), special tokens skipped; a tokenizer that cleans up spaces takes batch_decode."""
    ids = torch.tensor([tokenizer("a+b= 12 ,x")["input_ids"], tokenizer("9 ?z")["input_ids"] + [0] * 6])
    ids[1, 4] = tokenizer.eos_token_id
    mask = torch.ones_like(ids)
    mask[0, 3], mask[1, 6:] = 0, 0
    want = tokenizer.batch_decode([r[m.bool()].tolist() for r, m in zip(ids, mask)], skip_special_tokens=True)
    assert want[0] == "a+= 12 ,x" and decode_completions(tokenizer, ids, mask) == want
    cleaning = copy.deepcopy(tokenizer)
    cleaning.clean_up_tokenization_spaces = True  # " ," -> ",": only transformers' wrapper does this
    assert decode_completions(cleaning, ids, mask) == cleaning.batch_decode(
        [r[m.bool()].tolist() for r, m in zip(ids, mask)], skip_special_tokens=True) != want


def test_greedy_matches_argmax(tiny_model, tokenizer):
    g = _generate(tiny_model, tokenizer, n=1, temperature=0.0, max_new=3)
    ids = torch.cat([g.prompt_ids, g.completion_ids], 1)
    mask = torch.cat([g.prompt_mask, g.completion_mask], 1)
    with torch.no_grad():
        out = tiny_model(input_ids=ids[:, : g.prompt_ids.shape[1]], attention_mask=mask[:, : g.prompt_ids.shape[1]],
                         position_ids=(mask[:, : g.prompt_ids.shape[1]].cumsum(-1) - 1).clamp(min=0))
    assert torch.equal(out.logits[:, -1].argmax(-1), g.completion_ids[:, 0])


def _loss_and_grad(model, batch, micro_batch_size=None):
    """Accumulated loss and gradient; ``micro_batch_size=None`` uses the batch exactly as given (no trimming)."""
    model.zero_grad()
    total = 0.0
    for mb in batch.micro_batches(micro_batch_size) if micro_batch_size else [batch]:
        logp, _ = sequence_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask)
        tl, _ = ClippedPolicyGradient().token_loss(logp, mb)
        loss = (tl * mb.loss_weights).sum()
        loss.backward()
        total += loss.item()
    return total, torch.cat([p.grad.flatten() for p in model.parameters()]).clone()


def test_loss_and_gradient_invariant_to_micro_batching_and_padding(tiny_model, tokenizer):
    gen = _generate(tiny_model, tokenizer, n=4)
    rewards = torch.tensor([float(i % 3 == 0) for i in range(16)])
    groups = torch.arange(4).repeat_interleave(4)
    for agg in AGGREGATIONS:
        batch = RolloutBatch(
            gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, gen.sample_logprobs,
            groups, gen.finished, rewards=rewards, advantages=zscore(rewards, groups),
        )
        batch.loss_weights = AGGREGATIONS[agg](batch.completion_mask, 8.0)
        full_loss, full_grad = _loss_and_grad(tiny_model, batch, 16)
        for mbs in (1, 3, 5):
            loss, grad = _loss_and_grad(tiny_model, batch, mbs)
            assert abs(loss - full_loss) < 1e-5, (agg, mbs)
            assert torch.allclose(grad, full_grad, atol=1e-6), (agg, mbs)
        # extra padding columns on both sides change nothing
        pad = tokenizer.pad_token_id
        padded = RolloutBatch(
            torch.nn.functional.pad(batch.prompt_ids, (3, 0), value=pad), torch.nn.functional.pad(batch.prompt_mask, (3, 0)),
            torch.nn.functional.pad(batch.completion_ids, (0, 2), value=pad), torch.nn.functional.pad(batch.completion_mask, (0, 2)),
            torch.nn.functional.pad(batch.sample_logprobs, (0, 2)), groups, gen.finished,
            rewards=rewards, advantages=batch.advantages,
            loss_weights=torch.nn.functional.pad(batch.loss_weights, (0, 2)),
        )
        loss, grad = _loss_and_grad(tiny_model, padded)
        assert abs(loss - full_loss) < 1e-5 and torch.allclose(grad, full_grad, atol=1e-6), agg


def test_inverse_cdf_sampling_draws_the_row_distribution():
    """sampling.inverse_cdf: frequencies match each row's (unnormalised) probabilities within 5 standard errors over
    40k seeded draws, and zero-probability tokens (first, middle, last) are never drawn."""
    from tiltlm.sampling import inverse_cdf

    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0],
                          [0.5, 0.0, 0.25, 0.0, 0.0, 0.25],
                          [0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])  # unnormalised: only the last token has mass
    n = 40_000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([inverse_cdf(probs, torch.rand(3, generator=g, dtype=torch.float64)) for _ in range(n)])
    for row in range(3):
        p = probs[row] / probs[row].sum()
        freq = torch.bincount(draws[:, row], minlength=6).double() / n
        se = (p * (1 - p) / n).sqrt().double()
        assert ((freq - p.double()).abs() <= 5 * se + 1e-12).all(), (row, freq, p)
        assert (freq[p == 0] == 0).all()


def test_cache_keyword_follows_the_forward_signature():
    from tiltlm.rollout.hf import cache_keyword

    class OldForward(torch.nn.Module):  # transformers before the rename: past_key_values, no cache
        def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None, **kwargs):
            return input_ids

    class NewForward(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, cache=None, use_cache=None, **kwargs):
            return input_ids

    assert cache_keyword(OldForward()) == "past_key_values"
    assert cache_keyword(NewForward()) == "cache"
