"""An exact test bed: every sequence enumerable, so pi*, Z and every divergence are computed exactly.

Sequences are all V^L token strings of length L. The prior pi0 and the policy pi_theta are *tabular* autoregressive
models -- one row of logits per prefix, sum_{t<L} V^t rows -- so pi_theta can represent any distribution, pi* included,
and a method's remaining divergence is the method's, not the model's. Training uses the library's own objectives,
advantage estimators, aggregations and update step (``tiltlm.trainer.update``) on batches of sampled sequences; only
the model is different. V=4, L=8 is 65,536 sequences.

    bed = Testbed(vocab=4, length=8, reward="count:0", seed=0)
    curve = bed.train("dpg", beta=1.0, samples=2**16, samples_per_step=128)
    curve[-1]["kl_target_policy"]      # exact KL(pi* || pi_theta)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltlm.advantages import ADVANTAGE_NEEDS, ADVANTAGES, advantages_for, make_advantage
from tiltlm.batch import RolloutBatch
from tiltlm.config import AdvantageConfig, ObjectiveConfig
from tiltlm.logprobs import _token_stat as token_stat
from tiltlm.objectives import AGGREGATIONS, OBJECTIVES
from tiltlm.target import ConstraintEvidence, MomentEvidence, RewardEvidence, Target


class TabularPolicy(torch.nn.Module):
    """pi(y) = prod_t softmax(logits[prefix(y_<t)])[y_t], one logit row per prefix (a full prefix tree)."""

    def __init__(self, vocab: int, length: int, logits: torch.Tensor | None = None):
        super().__init__()
        self.V, self.L = vocab, length
        self.offsets = [(vocab**t - 1) // (vocab - 1) for t in range(length)]
        n = (vocab**length - 1) // (vocab - 1)
        self.logits = torch.nn.Parameter(torch.zeros(n, vocab, dtype=torch.float64) if logits is None else logits.clone())

    def prefix_index(self, seqs: torch.Tensor) -> torch.Tensor:
        """[B, L] index of the logit row used at each position."""
        idx = torch.zeros_like(seqs)
        code = torch.zeros(seqs.shape[0], dtype=torch.long)
        for t in range(self.L):
            idx[:, t] = self.offsets[t] + code
            code = code * self.V + seqs[:, t]
        return idx

    def token_logprobs(self, seqs: torch.Tensor, stats: set | None = None):
        """[B, L] log-probs; with ``stats`` given, a tuple (log-probs, {stat: [B, L]}) as ``update`` wants."""
        lsm = torch.log_softmax(self.logits, -1)
        rows = lsm[self.prefix_index(seqs)]
        logp = rows.gather(-1, seqs.unsqueeze(-1)).squeeze(-1)
        if stats is None:
            return logp
        return logp, {name: token_stat(name)(rows) for name in stats}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = torch.zeros(n, self.L, dtype=torch.long)
        code = torch.zeros(n, dtype=torch.long)
        lsm = torch.log_softmax(self.logits, -1)
        logps = torch.zeros(n, self.L, dtype=torch.float64)
        for t in range(self.L):
            rows = lsm[self.offsets[t] + code]
            tok = torch.multinomial(rows.exp(), 1, generator=generator).squeeze(-1)
            seqs[:, t], logps[:, t] = tok, rows.gather(-1, tok[:, None]).squeeze(-1)
            code = code * self.V + tok
        return seqs, logps


def all_sequences(vocab: int, length: int) -> torch.Tensor:
    """[V^L, L] every sequence, lexicographic."""
    n = vocab**length
    codes = torch.arange(n)
    return torch.stack([(codes // vocab ** (length - 1 - t)) % vocab for t in range(length)], 1)


def _xlogy_sum(p: torch.Tensor, log_p: torch.Tensor, log_q: torch.Tensor) -> float:
    """sum p (log p - log q) with 0 log 0 = 0; +inf where p > 0 and q = 0."""
    mask = p > 0
    return float((p[mask] * (log_p[mask] - log_q[mask])).sum())


def divergences(log_p: torch.Tensor, log_pi: torch.Tensor) -> dict[str, float]:
    """Exact KL(p||pi), KL(pi||p), TV, JS and entropy of pi, for two log-distributions over the same support."""
    p, pi = log_p.exp(), log_pi.exp()
    log_m = torch.logaddexp(log_p, log_pi) - math.log(2)
    return {
        "kl_target_policy": _xlogy_sum(p, log_p, log_pi),
        "kl_policy_target": _xlogy_sum(pi, log_pi, log_p),
        "tv": float(0.5 * (p - pi).abs().sum()),
        "js": 0.5 * _xlogy_sum(p, log_p, log_m) + 0.5 * _xlogy_sum(pi, log_pi, log_m),
        "entropy": -_xlogy_sum(pi, log_pi, torch.zeros_like(log_pi)),
    }


def make_reward(spec: str, seqs: torch.Tensor) -> torch.Tensor:
    """``count:T`` (occurrences of token T / L), ``contains:T`` (0/1), ``first:T`` (0/1, y_1 == T)."""
    kind, _, arg = spec.partition(":")
    t = int(arg)
    if kind == "count":
        return (seqs == t).double().mean(-1)
    if kind == "contains":
        return (seqs == t).any(-1).double()
    if kind == "first":
        return (seqs[:, 0] == t).double()
    raise ValueError(f"unknown test-bed reward '{spec}' (count:T | contains:T | first:T)")


@dataclass
class Exact:
    log_p: torch.Tensor  # log pi*(y) for every sequence
    log_z: float


class Testbed:
    """A random tabular prior over V^L sequences plus a reward; exact posteriors and divergences for any policy."""

    def __init__(self, vocab: int = 4, length: int = 8, reward: str = "count:0", seed: int = 0, prior_scale: float = 1.0,
                 rare_token_bias: float = 0.0):
        """``rare_token_bias`` lowers the prior logit of the last token everywhere, making "contains:V-1" a hard
        constraint (small Z) like disco's word-inclusion targets."""
        self.V, self.L = vocab, length
        g = torch.Generator().manual_seed(seed)
        n_rows = (vocab**length - 1) // (vocab - 1)
        logits = prior_scale * torch.randn(n_rows, vocab, generator=g, dtype=torch.float64)
        logits[:, -1] -= rare_token_bias
        self.prior = TabularPolicy(vocab, length, logits)
        self.prior.requires_grad_(False)
        self.seqs = all_sequences(vocab, length)
        self.rewards = make_reward(reward, self.seqs)
        self.log_prior = self.prior.token_logprobs(self.seqs).sum(-1)

    def target(self, evidence: str = "reward", beta: float = 1.0, moment: float = 0.5) -> Target:
        """pi0 x evidence; ``moment`` fits the GDC coefficient exactly (every sequence, weighted by pi0)."""
        if evidence == "moment":
            ev = MomentEvidence([moment])
            ev.fit(self.rewards.unsqueeze(-1), self.log_prior, torch.zeros_like(self.log_prior), steps=20000)
            return Target(ev)
        return Target(RewardEvidence(beta) if evidence == "reward" else ConstraintEvidence(1.0))

    def exact(self, target: Target) -> Exact:
        log_w = target.log_weights(self.log_prior, self.rewards)
        log_z = torch.logsumexp(log_w, 0)
        return Exact(log_w - log_z, float(log_z))

    def policy_log_probs(self, policy: TabularPolicy) -> torch.Tensor:
        with torch.no_grad():
            return policy.token_logprobs(self.seqs).sum(-1)

    def measure(self, policy: TabularPolicy, exact: Exact) -> dict[str, float]:
        log_pi = self.policy_log_probs(policy)
        out = divergences(exact.log_p, log_pi)
        out["kl_policy_prior"] = _xlogy_sum(log_pi.exp(), log_pi, self.log_prior)
        out["reward"] = float((log_pi.exp() * self.rewards).sum())
        return out

    def batch(self, policy: TabularPolicy, n: int, group: int, generator: torch.Generator,
              proposal: TabularPolicy | None = None) -> RolloutBatch:
        """n sequences from ``proposal`` (default: the policy), grouped ``group`` at a time, prior log-probs attached."""
        sampler = proposal or policy
        seqs, logq = sampler.sample(n, generator)
        policy_lp = None
        if proposal is not None:
            with torch.no_grad():
                policy_lp = policy.token_logprobs(seqs).float()
        ones = torch.ones(n, self.L, dtype=torch.long)
        return RolloutBatch(
            prompt_ids=torch.zeros(n, 0, dtype=torch.long), prompt_mask=torch.zeros(n, 0, dtype=torch.long),
            completion_ids=seqs, completion_mask=ones, sample_logprobs=logq.float(),
            group_ids=torch.arange(n) // group, finished=torch.ones(n, dtype=torch.bool),
            rewards=make_reward_lookup(self, seqs).float(),
            ref_logprobs=self.prior.token_logprobs(seqs).float(), policy_logprobs=policy_lp,
        )

    def train(
        self, objective: str, samples: int = 65536, samples_per_step: int = 128, group: int = 0, lr: float = 0.05,
        seed: int = 0, measure_every: int = 10, advantage: str = "auto", aggregation: str = "auto",
        target_beta: float | None = None, target_evidence: str | None = None, proposal_every: int = 0,
        **objective_kw,
    ) -> list[dict]:
        """Train a fresh copy of the prior with ``objective`` for ``samples`` sampled sequences; exact curve.

        Divergences are measured to pi0 * ``target_evidence`` at ``target_beta`` (defaults: the objective's).
        ``proposal_every > 0`` samples from a frozen proposal q (initially pi0) and, every that many steps, replaces
        q by the policy when the policy is estimated closer to the target (KL-adaptive DPG, Khalifa et al. 2021)."""
        from tiltlm.trainer import update

        objective_kw.setdefault("z_estimate", "running")  # one context: Z is shared by every sample seen
        cfg = ObjectiveConfig(name=objective, **objective_kw)
        obj = OBJECTIVES[objective][0](cfg)
        target = self.target(target_evidence or cfg.evidence, target_beta or cfg.beta or 1.0, cfg.moment)
        if isinstance(getattr(obj, "target", None), Target) and cfg.evidence == "moment":
            obj.target = target  # the exactly fitted lambda
        exact = self.exact(target)
        adv_name = obj.default_advantage if advantage == "auto" else advantage
        adv_fn = make_advantage(ADVANTAGES[adv_name])
        needs = set(obj.needs) | ADVANTAGE_NEEDS.get(adv_name, set())
        agg_fn = AGGREGATIONS[obj.default_aggregation if aggregation == "auto" else aggregation]
        policy = TabularPolicy(self.V, self.L, self.prior.logits.detach())
        opt = torch.optim.SGD(policy.parameters(), lr=lr)  # plain SGD: Adam turns rare rows' noise into full steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        gen = torch.Generator().manual_seed(seed)
        curve = [{"samples": 0, **self.measure(policy, exact)}]
        proposal = TabularPolicy(self.V, self.L, self.prior.logits.detach()) if proposal_every else None
        swaps = 0
        steps = samples // samples_per_step
        for step in range(1, steps + 1):
            batch = self.batch(policy, samples_per_step, group or samples_per_step, gen, proposal)
            if proposal is not None and step % proposal_every == 0 and obj.policy_is_closer(batch):
                proposal.logits.data.copy_(policy.logits.data)
                swaps += 1
            if "ref" not in needs:
                batch.ref_logprobs = None
            batch.advantages = advantages_for(adv_fn, batch, obj.sequence_signal(batch), AdvantageConfig())
            batch.loss_weights = agg_fn(batch.completion_mask, float(self.L))
            if getattr(obj, "needs_rehearsal", False):  # DPH-RL: samples of pi0 (a fresh draw = a stored pool)
                rehearsal = self.batch(self.prior, obj.rehearsal_rows, obj.rehearsal_rows, gen)
                rehearsal.rehearsal = torch.ones(rehearsal.size, dtype=torch.bool)
                rehearsal.loss_weights = obj.rehearsal_weights(rehearsal.completion_mask)
                batch = RolloutBatch.concat(batch, rehearsal, pad_id=0)
            update(lambda mb, stats: policy.token_logprobs(mb.completion_ids, stats), batch, obj, opt, sched,
                   list(policy.parameters()), micro_batch_size=samples_per_step, grad_clip=0.0)
            if step % measure_every == 0 or step == steps:
                curve.append({"samples": step * samples_per_step, "proposal_swaps": swaps, **self.measure(policy, exact)})
        return curve


def make_reward_lookup(bed: Testbed, seqs: torch.Tensor) -> torch.Tensor:
    """Rewards of sampled sequences, read from the enumerated table (sequence code = base-V number)."""
    code = torch.zeros(seqs.shape[0], dtype=torch.long)
    for t in range(bed.L):
        code = code * bed.V + seqs[:, t]
    return bed.rewards[code]
