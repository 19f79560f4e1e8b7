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


def test_kl_to_reference_is_zero_for_the_same_model_and_matches_exact_single_token(tiny_model, tokenizer):
    from tiltlm.evaluate import kl_to_reference
    from tiltlm.models import build_tiny_llama

    task = Arithmetic(1, 1)
    ex = task.heldout(4)
    kl, se, ent = kl_to_reference(tiny_model, tiny_model, tokenizer, ex, 8, 4, seed=0)
    assert abs(kl) < 1e-5 and ent > 0
    # one generated token: the MC estimate must agree with the exact KL of the first-token distributions within 4 SE
    other = build_tiny_llama(len(tokenizer), hidden=32, layers=2, heads=2, seed=1)
    kl, se, _ = kl_to_reference(tiny_model, other, tokenizer, ex[:1], 4000, 1, seed=0)
    ids = torch.tensor([tokenizer(ex[0].prompt)["input_ids"]])
    with torch.no_grad():
        p = torch.log_softmax(tiny_model(ids).logits[0, -1], -1)
        q = torch.log_softmax(other(ids).logits[0, -1], -1)
    exact = float((p.exp() * (p - q)).sum())
    assert se > 0 and abs(kl - exact) < 4 * se, (kl, se, exact)
