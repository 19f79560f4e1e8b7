import math
from itertools import combinations

import pytest
import torch

from tiltlm.evaluate import evaluate, pass_at_k
from tiltlm.tasks.arithmetic import Arithmetic


def brute_force_pass_at_k(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_golden():
    assert pass_at_k(4, 2, 1) == pytest.approx(0.5)
    assert pass_at_k(4, 2, 2) == pytest.approx(0.833333, abs=1e-6)
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0
    assert pass_at_k(10, 10, 10) == 1.0


@pytest.mark.parametrize("n", [1, 3, 6, 9])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_evaluate_is_seeded(tiny_model, tokenizer):
    task = Arithmetic(1, 1)
    ex = task.heldout(5)
    a = evaluate(tiny_model, tokenizer, task, ex, 4, [1, 4], 4, seed=1)
    b = evaluate(tiny_model, tokenizer, task, ex, 4, [1, 4], 4, seed=1)
    assert a.as_dict() == b.as_dict() and a.n_prompts == len(ex)
    assert 0.0 <= a.pass_at[1] <= a.pass_at[4] <= 1.0


def test_evaluate_reports_the_whole_measurement_set(tiny_model, tokenizer):
    task = Arithmetic(1, 1)
    r = evaluate(tiny_model, tokenizer, task, task.heldout(6), 8, None, 4, seed=0, greedy=False)
    assert list(r.pass_at) == list(r.mean_at) == list(r.maj_at) == [1, 2, 4, 8]  # default grid 1, 2, 4, ..., n
    # identities that hold for any model: one-sample blocks are the samples themselves
    assert r.mean_at[1] == pytest.approx(r.pass_at[1]) and r.maj_at[1] == pytest.approx(r.pass_at[1])
    assert r.pass_at[8] == pytest.approx(sum(c > 0 for c in r.per_prompt_correct) / 6)
    assert 0 <= r.distinct_correct_answers <= min(1.0, r.distinct_answers)  # a+b has one right answer
    assert 0 < r.distinct_1 <= 1 and 0 < r.distinct_2 <= 1 and r.entropy > 0
    assert r.kl_to_ref is None and "eval/kl_to_base" not in r.as_metrics()
    d = r.as_dict()
    assert d["pass_at"]["8"] == d["pass@8"] and set(d["maj_at"]) == {"1", "2", "4", "8"}


def test_evaluate_kl_is_zero_against_itself_and_matches_exact_one_token_kl(tiny_model, tokenizer):
    from tiltlm.models import build_tiny_llama

    task = Arithmetic(1, 1)
    ex = task.heldout(4)
    r = evaluate(tiny_model, tokenizer, task, ex, 8, [1], 4, seed=0, greedy=False, reference=tiny_model)
    assert abs(r.kl_to_ref) < 1e-5 and r.kl_to_ref_se < 1e-5 and r.entropy > 0
    assert r.as_metrics()["eval/kl_to_base"] == r.kl_to_ref
    # one generated token: the MC estimate must agree with the exact KL of the first-token distributions within 4 SE
    other = build_tiny_llama(len(tokenizer), hidden=32, layers=2, heads=2, seed=1)
    r = evaluate(tiny_model, tokenizer, task, ex[:1], 4000, [1], 1, seed=0, greedy=False, reference=other)
    ids = torch.tensor([tokenizer(ex[0].prompt)["input_ids"]])
    with torch.no_grad():
        p = torch.log_softmax(tiny_model(ids).logits[0, -1], -1)
        q = torch.log_softmax(other(ids).logits[0, -1], -1)
    exact = float((p.exp() * (p - q)).sum())
    assert r.kl_to_ref_se > 0 and abs(r.kl_to_ref - exact) < 4 * r.kl_to_ref_se, (r.kl_to_ref, r.kl_to_ref_se, exact)


@torch.no_grad()
def _exact_two_token_kl(p_model, q_model, prompt_ids: list[int], eos: int) -> float:
    """KL over every completion of at most 2 tokens (EOS first ends the sequence), by enumeration."""
    ids = torch.tensor([prompt_ids])
    lp1, lq1 = (torch.log_softmax(m(ids).logits[0, -1], -1) for m in (p_model, q_model))
    V = lp1.numel()
    two = torch.cat([ids.repeat(V, 1), torch.arange(V)[:, None]], 1)
    lp2, lq2 = (torch.log_softmax(m(two).logits[:, -1], -1) for m in (p_model, q_model))
    seq_p = lp1[:, None] + lp2  # [t1, t2]
    seq_q = lq1[:, None] + lq2
    kl = float(((seq_p.exp() * (seq_p - seq_q)).sum(-1))[torch.arange(V) != eos].sum())
    return kl + float(lp1[eos].exp() * (lp1[eos] - lq1[eos]))


@pytest.mark.parametrize("prompt", ["0+3=3", "3+1="])  # EOS next (p 0.995) / a digit then EOS
def test_evaluate_kl_matches_exact_two_token_sequence_kl(prompt):
    """The sequence-level estimate (EOS handling, masking, summing over positions) against exact enumeration, for
    the embedded base against the embedded teacher (exact KL 0.035 and 0.49 nats)."""
    from tiltlm.models import load_model_and_tokenizer
    from tiltlm.tasks.base import Example

    p, tokenizer = load_model_and_tokenizer("embedded")
    q, _ = load_model_and_tokenizer("embedded-teacher")
    r = evaluate(p, tokenizer, Arithmetic(1, 1), [Example(prompt, "")], 4000, [1], 2, seed=0, greedy=False,
                 reference=q)
    exact = _exact_two_token_kl(p, q, tokenizer(prompt)["input_ids"], tokenizer.eos_token_id)
    assert exact > 0.02 and abs(r.kl_to_ref - exact) < 4 * r.kl_to_ref_se, (r.kl_to_ref, r.kl_to_ref_se, exact)
