"""Golden numbers for the evaluation estimators (tiltlm.metrics), hand-computed in the comments."""

import math

import pytest
import torch

from tiltlm.metrics import (
    crossover_k,
    distinct_answers,
    distinct_n,
    k_grid,
    maj_at_k,
    majority_vote,
    mean_at_k,
    monte_carlo_kl,
    paired_change,
    support_counts,
)
from tiltlm.testbed import TabularPolicy, divergences
from tiltlm.testbed import Testbed as ExactBed


def test_k_grid():
    assert k_grid(64) == [1, 2, 4, 8, 16, 32, 64]
    assert k_grid(6) == [1, 2, 4, 6]  # n itself is always on the grid
    assert k_grid(1) == [1]
    with pytest.raises(ValueError):
        k_grid(0)


def test_mean_at_k_uses_disjoint_blocks():
    c = [1, 0, 1, 1, 0]
    assert mean_at_k(c, 1) == pytest.approx(0.6)
    assert mean_at_k(c, 2) == pytest.approx(0.75)  # blocks [1,0] -> 0.5, [1,1] -> 1.0; sample 5 unused
    assert mean_at_k(c, 5) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        mean_at_k(c, 6)  # k > n is an error, never a silent value


def test_majority_vote_spec_golden_and_ties():
    assert majority_vote(["a", "b", "a", "c"]) == 0  # spec: answers [a,b,a,c] -> a
    assert maj_at_k(["a", "b", "a", "c"], [1, 0, 1, 0], 4) == 1.0  # truth a -> 1
    # tie b:2 a:2 -> the answer that appears first wins (b), scored by the verifier: wrong
    assert majority_vote(["b", "a", "a", "b"]) == 0
    assert maj_at_k(["b", "a", "a", "b"], [0, 1, 1, 0], 4) == 0.0
    assert maj_at_k(["a", "b", "b", "a"], [1, 0, 0, 1], 4) == 1.0  # same counts, a first -> right
    # k = 2: blocks [b,a] -> b (first, wrong), [a,b] -> a (right)
    assert maj_at_k(["b", "a", "a", "b"], [0, 1, 1, 0], 2) == 0.5


def test_majority_vote_abstentions():
    assert majority_vote([None, "x", None]) == 1  # None (truncated / unparsed) never wins
    assert majority_vote([None, None]) is None
    assert maj_at_k([None, None, "a", "a"], [0, 0, 1, 1], 2) == 0.5  # an all-abstain block counts as wrong
    with pytest.raises(ValueError):
        maj_at_k(["a"], [1, 0], 1)


def test_distinct_answers_and_distinct_n():
    assert distinct_answers(["a", "b", "a", None]) == 2
    assert distinct_answers(["a", "b", "a", None], [1, 0, 1, 0]) == 1
    assert distinct_answers(["7", "07", None], [1, 1, 0]) == 2  # two distinct correct spellings
    seqs = [[1, 2, 3], [1, 2, 4]]
    assert distinct_n(seqs, 1) == pytest.approx(4 / 6)  # 1,2,3,1,2,4
    assert distinct_n(seqs, 2) == pytest.approx(3 / 4)  # (1,2) (2,3) (1,2) (2,4)
    assert distinct_n(seqs, 3) == 1.0
    assert distinct_n([[5]], 2) == 0.0  # no bigram at all


def test_monte_carlo_kl_golden():
    kl, se = monte_carlo_kl(torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    assert kl == pytest.approx(2.0) and se == pytest.approx(1 / math.sqrt(3))  # sd(1,2,3) = 1
    with pytest.raises(ValueError):
        monte_carlo_kl(torch.ones(1), torch.zeros(1))


def test_monte_carlo_kl_matches_exact_test_bed_value_within_its_standard_error():
    bed = ExactBed(vocab=4, length=6, seed=3)
    policy = TabularPolicy(4, 6, bed.prior.logits + 0.7 * torch.randn(bed.prior.logits.shape,
                                                                       generator=torch.Generator().manual_seed(1),
                                                                       dtype=torch.float64))
    exact = divergences(bed.log_prior, bed.policy_log_probs(policy))["kl_policy_target"]  # KL(policy || prior)
    seqs, logp = policy.sample(20_000, torch.Generator().manual_seed(0))
    kl, se = monte_carlo_kl(logp.sum(-1), bed.prior.token_logprobs(seqs).sum(-1))
    assert exact > 0.5 and se < 0.05 * exact  # a real, well-resolved divergence, not a vacuous check
    assert abs(kl - exact) < 3 * se, (kl, se, exact)


def test_crossover_k():
    ks = [1, 2, 4, 8]
    assert crossover_k(ks, [0.3, 0.5, 0.7, 0.9], [0.5, 0.6, 0.7, 0.85]) == 8  # RL ahead, tie at 4, base ahead at 8
    assert crossover_k(ks, [0.5, 0.6, 0.7, 0.8], [0.4, 0.55, 0.72, 0.9]) == 4  # base ahead first, RL from k = 4
    assert crossover_k(ks, [0.3, 0.5, 0.7, 0.9], [0.4, 0.6, 0.8, 0.95]) is None  # never flips


def test_support_counts_and_paired_change():
    assert support_counts([0, 3, 0, 2], [1, 0, 0, 5]) == {"preserved": 1, "shrunk": 1, "expanded": 1, "unsolved": 1}
    with pytest.raises(ValueError):
        support_counts([1], [1, 2])
    # d = [0.25, 0, -0.5]: mean -1/12; sd (ddof 1) = sqrt(0.2916667 / 2) = 0.381881; se = 0.381881 / sqrt(3)
    mean, se = paired_change([0.5, 0.2, 1.0], [0.75, 0.2, 0.5])
    assert mean == pytest.approx(-1 / 12) and se == pytest.approx(0.220479, abs=1e-6)
