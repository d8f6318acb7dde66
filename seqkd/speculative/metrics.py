"""Speculative-decoding metrics, defined once (the CLI, ``align`` and the benchmarks all read these), each as its
anchor defines it (tests/test_spec_metrics.py pins each on a crafted case).

* acceptance rate = accepted draft tokens / drafted tokens (vLLM's ``num_accepted_tokens / num_draft_tokens``).
  Drafted tokens after the first rejection in a block are never tested, so this is below the per-token acceptance.
* per-token acceptance ``alpha`` = accepted / tested tokens (each block tests its accepted run and the first
  rejected token): the estimate of Leviathan et al.'s ``alpha = E[sum_x min(p(x), q(x))]``, the ``a`` of their bound.
* analytic acceptance = the expectation of ``alpha`` over the same (tested) contexts: ``sum_x min(p(x), q(x))``
  (= 1 - TVD) for the exact rule; ``sum_x min(q(x), p(x) / l)`` under DistillSpec's lenience ``l`` (a token is
  accepted with probability ``min(1, p / (l q))``).
* block efficiency ``tau`` = tokens emitted / target calls, counting only tokens that reach the output: nothing after
  an accepted EOS, nothing past ``max_new_tokens`` (HF's and vLLM's count of new tokens per target forward).
* per-position acceptance: the fraction of blocks whose draft token ``i`` was accepted, ``i = 1..gamma`` (vLLM's
  ``num_accepted_tokens_per_pos / num_drafts``; non-increasing in ``i``).
* cost ratio ``c`` (Leviathan et al.) = time of one draft forward step / time of one target-only forward step (the
  target decoding alone, one token per call). Measured against the target-only run the speculative run is compared
  with (:meth:`SpecStats.costs`); the prompt's first call (the prefill) is left out of both step times.
* verification cost ``v`` = time of one verification call (the target over gamma + 1 positions) / one target-only
  step. The bound below takes ``v = 1``; on small-batch CPUs it is not.
* Leviathan et al.'s expected speedup for i.i.d. acceptance ``a``: ``(1 - a^(g+1)) / ((1 - a) (g c + 1))``, and
  expected tokens per target call ``(1 - a^(g+1)) / (1 - a)``; the overhead-aware prediction
  ``tau / (gbar c + v)`` (``gbar`` = drafted tokens per call) puts the measured ``tau``, ``c`` and ``v`` together:
  what the speedup would be if the decoder spent no time outside the two models' forward passes.
"""

from __future__ import annotations

import statistics
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


def acceptance_probability(target_probs: Tensor, draft_probs: Tensor, lenience: float = 1.0) -> Tensor:
    """Probability that a token drafted from ``q`` is accepted: ``sum_x q(x) min(1, p(x) / (l q(x))) = sum_x min(q(x),
    p(x) / l)``; at ``l = 1`` that is ``sum_x min(p, q) = 1 - TVD(p, q)``. Probabilities ``[..., V]`` -> ``[...]``."""
    if not 0.0 < lenience <= 1.0:
        raise ValueError(f"lenience must be in (0, 1], got {lenience}")
    return torch.minimum(draft_probs, target_probs / lenience).sum(-1)


def analytic_acceptance(target_probs: Tensor, draft_probs: Tensor, mask: Tensor | None = None,
                        lenience: float = 1.0) -> float:
    """Mean of :func:`acceptance_probability` over contexts (float64). Probabilities ``[..., V]``, mask ``[...]``."""
    overlap = acceptance_probability(target_probs.double(), draft_probs.double(), lenience)
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
    target_calls: int = 0  # target forward passes (one per block; one per token target-only)
    emitted: int = 0  # tokens the blocks added to the output (eos included; none after it, none past the budget)
    generated: int = 0  # tokens returned
    drafted_at: list[int] = field(default_factory=list)  # [gamma] proposals made at position i
    accepted_at: list[int] = field(default_factory=list)  # [gamma] of them accepted
    draft_steps: int = 0  # single-token draft forward passes
    draft_seconds: float = 0.0
    target_seconds: float = 0.0
    draft_prefills: int = 0  # the first draft call of each sequence (the prompt): left out of the step time
    draft_prefill_seconds: float = 0.0
    target_prefills: int = 0  # the first target call of each sequence
    target_prefill_seconds: float = 0.0
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

    def add_time(self, who: str, seconds: float) -> None:
        """One forward call of the ``"draft"`` or the ``"target"`` while decoding one sequence: the first call of each
        model is the prompt's prefill, kept apart from the step times (``*_prefill_seconds``)."""
        if getattr(self, f"{who}_prefills") == 0:
            setattr(self, f"{who}_prefills", 1)
            setattr(self, f"{who}_prefill_seconds", seconds)
        setattr(self, f"{who}_seconds", getattr(self, f"{who}_seconds") + seconds)

    def __iadd__(self, other: SpecStats) -> SpecStats:
        for i in range(max(len(self.drafted_at), len(other.drafted_at))):
            if i >= len(self.drafted_at):
                self.drafted_at.append(0)
                self.accepted_at.append(0)
            if i < len(other.drafted_at):
                self.drafted_at[i] += other.drafted_at[i]
                self.accepted_at[i] += other.accepted_at[i]
        for k in ("drafted", "accepted", "verified", "target_calls", "emitted", "generated", "draft_steps",
                  "draft_seconds", "target_seconds", "draft_prefills", "draft_prefill_seconds", "target_prefills",
                  "target_prefill_seconds", "wall_seconds", "overlap_sum", "overlap_count"):
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
    def draft_step_seconds(self) -> float:
        """Mean time of a draft step after the prefill."""
        n = self.draft_steps - self.draft_prefills
        return (self.draft_seconds - self.draft_prefill_seconds) / n if n > 0 else 0.0

    @property
    def target_step_seconds(self) -> float:
        """Mean time of a target call after the prefill: a verification call (speculative) or a decoding step
        (target-only)."""
        n = self.target_calls - self.target_prefills
        return (self.target_seconds - self.target_prefill_seconds) / n if n > 0 else 0.0

    @property
    def drafted_per_call(self) -> float:
        return self.drafted / self.target_calls if self.target_calls else 0.0

    def costs(self, baseline: SpecStats, gamma: int | None = None,
              times: SpecStats | None = None) -> dict[str, float | None]:
        """``c``, ``v``, Leviathan's bound (``a`` = per-token acceptance, with ``c``) and the overhead-aware prediction
        ``tau / (gbar c + v)``, relative to ``baseline``: the target-only run of the same prompts. ``times``: where the
        step times come from when they are not this object's (a batch: its calls serve every row, whose acceptance
        counts this object holds)."""
        t = times or self
        step = baseline.target_step_seconds
        if not (step and t.draft_step_seconds and t.target_step_seconds):
            return {"cost_ratio": None, "verification_cost": None, "leviathan_bound": None,
                    "predicted_speedup": None}
        c = t.draft_step_seconds / step
        v = t.target_step_seconds / step
        g = gamma or self.gamma
        return {"cost_ratio": c, "verification_cost": v,
                "leviathan_bound": leviathan_speedup(self.verified_acceptance_rate, g, c),
                "predicted_speedup": self.block_efficiency / (self.drafted_per_call * c + v)}

    @property
    def tokens_per_s(self) -> float:
        return self.generated / self.wall_seconds if self.wall_seconds else 0.0

    @property
    def time_shares(self) -> dict[str, float | None]:
        """Where the wall time went: the draft's forward calls, the target's (prefills included), and the rest, the
        decoder's own work between forwards (sampling, the acceptance rule, cache crops, bookkeeping)."""
        if not self.wall_seconds:
            return {"draft": None, "target": None, "decoder": None}
        d, t = self.draft_seconds / self.wall_seconds, self.target_seconds / self.wall_seconds
        return {"draft": d, "target": t, "decoder": 1.0 - d - t}

    def summary(self, baseline: SpecStats | None = None, gamma: int | None = None,
                times: SpecStats | None = None) -> dict:
        """Every counter and derived number; the costs (``c``, ``v``, bound, prediction) where ``baseline`` (the
        target-only run of the same prompts) is given, else None. ``times``: as in :meth:`costs`."""
        t = times or self
        d = asdict(self)
        d.update(acceptance_rate=self.acceptance_rate, verified_acceptance_rate=self.verified_acceptance_rate,
                 block_efficiency=self.block_efficiency,
                 per_position_acceptance=self.per_position_acceptance, analytic_acceptance=self.analytic_acceptance,
                 tokens_per_s=t.tokens_per_s, draft_step_seconds=t.draft_step_seconds,
                 verification_seconds=t.target_step_seconds, time_shares=t.time_shares)
        d.update(self.costs(baseline, gamma, times) if baseline is not None else
                 {"cost_ratio": None, "verification_cost": None, "leviathan_bound": None, "predicted_speedup": None})
        return d


def spread(values: list[float]) -> dict:
    """Median, min and max of repeated (per-pass) measurements, with the values: how every timed comparison is
    reported."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "per_pass": list(values)}
