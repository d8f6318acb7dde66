"""Speculative-decoding metrics, defined once (the CLI, ``align`` and the benchmarks all read these).

* acceptance rate = accepted draft tokens / drafted tokens (empirical; vLLM's definition). Drafted tokens after
  the first rejection in a block are never tested, so this is below the per-token acceptance probability.
* verified acceptance rate ``alpha`` = accepted / tested tokens (each block tests its accepted run and the first
  rejected token): the estimate of Leviathan et al.'s ``alpha = E[sum_x min(p(x), q(x))]``, and the ``a`` of
  their bound.
* block efficiency ``tau`` = emitted tokens / target calls (each call emits its accepted run plus one target
  token, so ``1 <= tau <= gamma + 1``).
* per-position acceptance: the fraction of blocks whose draft token ``i`` was accepted, ``i = 1..gamma`` (vLLM's
  definition: accepted at ``i`` / blocks; non-increasing in ``i``).
* analytic acceptance ``E[sum_x min(p(x), q(x))] = 1 - TVD(p, q)`` over the same (tested) contexts: the
  expectation of the verified acceptance rate, exactly, for the sampling rule.
* cost ratio ``c`` = time of one draft step / time of one target step (measured).
* Leviathan et al.'s expected speedup for i.i.d. acceptance ``a``:
  ``(1 - a^(g+1)) / ((1 - a) (g c + 1))``, and expected tokens per target call ``(1 - a^(g+1)) / (1 - a)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor


def expected_tokens_per_call(a: float, gamma: int) -> float:
    """E[tokens per target call] for i.i.d. acceptance ``a``: ``(1 - a^(g+1)) / (1 - a)`` (``g + 1`` at a = 1)."""
    if a >= 1.0:
        return float(gamma + 1)
    return (1.0 - a ** (gamma + 1)) / (1.0 - a)


def leviathan_speedup(a: float, gamma: int, c: float) -> float:
    """Leviathan et al. (2023), Theorem 3.8: expected wall-time improvement ``(1 - a^(g+1)) / ((1 - a)(g c + 1))``."""
    return expected_tokens_per_call(a, gamma) / (gamma * c + 1.0)


def analytic_acceptance(target_probs: Tensor, draft_probs: Tensor, mask: Tensor | None = None) -> float:
    """Mean of ``sum_x min(p(x), q(x))`` (= 1 - TVD) over contexts. Probabilities ``[..., V]``, mask ``[...]``."""
    overlap = torch.minimum(target_probs.double(), draft_probs.double()).sum(-1)
    if mask is not None:
        overlap = overlap[mask]
    return float(overlap.mean()) if overlap.numel() else 0.0


@dataclass
class SpecStats:
    """Counters of one or more speculative generations; merge with ``+=``."""

    gamma: int = 0  # the largest gamma used (per-position counts have this length)
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    verified: int = 0  # draft tokens the rule tested (accepted + first rejection of each block)
    target_calls: int = 0  # target forward passes (one per block)
    emitted: int = 0  # tokens generated (accepted + corrections/bonus), eos included, before max-length clipping
    generated: int = 0  # tokens actually returned
    drafted_at: list[int] = field(default_factory=list)  # [gamma] proposals made at position i
    accepted_at: list[int] = field(default_factory=list)  # [gamma] of them accepted
    draft_steps: int = 0  # single-token draft forward passes
    draft_seconds: float = 0.0
    target_seconds: float = 0.0
    wall_seconds: float = 0.0
    overlap_sum: float = 0.0  # sum over drafted positions of sum_x min(p, q) (the analytic acceptance)
    overlap_count: int = 0

    def record_block(self, gamma: int, num_accepted: int, emitted: int) -> None:
        """One target call verified ``gamma`` drafted tokens, accepted ``num_accepted``, emitted ``emitted``."""
        if gamma > len(self.drafted_at):
            grow = gamma - len(self.drafted_at)
            self.drafted_at += [0] * grow
            self.accepted_at += [0] * grow
        self.gamma = max(self.gamma, gamma)
        self.drafted += gamma
        self.accepted += num_accepted
        self.target_calls += 1
        self.emitted += emitted
        for i in range(gamma):
            self.drafted_at[i] += 1
            self.accepted_at[i] += int(i < num_accepted)

    def __iadd__(self, other: SpecStats) -> SpecStats:
        for i in range(max(len(self.drafted_at), len(other.drafted_at))):
            if i >= len(self.drafted_at):
                self.drafted_at.append(0)
                self.accepted_at.append(0)
            if i < len(other.drafted_at):
                self.drafted_at[i] += other.drafted_at[i]
                self.accepted_at[i] += other.accepted_at[i]
        for k in ("drafted", "accepted", "verified", "target_calls", "emitted", "generated", "draft_steps",
                  "draft_seconds",
                  "target_seconds", "wall_seconds", "overlap_sum", "overlap_count"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.gamma = max(self.gamma, other.gamma)
        return self

    # --- derived ----------------------------------------------------------------------------------------------
    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def verified_acceptance_rate(self) -> float:
        return self.accepted / self.verified if self.verified else 0.0

    @property
    def block_efficiency(self) -> float:
        return self.emitted / self.target_calls if self.target_calls else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        blocks = self.drafted_at[0] if self.drafted_at else 0  # blocks that drafted at least one token
        return [a / blocks if blocks else 0.0 for a in self.accepted_at]

    @property
    def analytic_acceptance(self) -> float:
        return self.overlap_sum / self.overlap_count if self.overlap_count else 0.0

    @property
    def cost_ratio(self) -> float:
        """Measured ``c``: mean draft step time / mean target call time."""
        if not (self.draft_steps and self.target_calls and self.target_seconds):
            return 0.0
        return (self.draft_seconds / self.draft_steps) / (self.target_seconds / self.target_calls)

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.wall_seconds if self.wall_seconds else 0.0

    def bound(self, gamma: int | None = None) -> float:
        """Leviathan's expected speedup for the measured (verified) acceptance rate and cost ratio."""
        return leviathan_speedup(self.verified_acceptance_rate, gamma or self.gamma, self.cost_ratio)

    def summary(self) -> dict:
        d = asdict(self)
        d.update(acceptance_rate=self.acceptance_rate, verified_acceptance_rate=self.verified_acceptance_rate,
                 block_efficiency=self.block_efficiency,
                 per_position_acceptance=self.per_position_acceptance, analytic_acceptance=self.analytic_acceptance,
                 cost_ratio=self.cost_ratio, tokens_per_s=self.tokens_per_s,
                 leviathan_bound=self.bound() if self.gamma else 0.0)
        return d
