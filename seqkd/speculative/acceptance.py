"""The speculative-decoding acceptance rule (Leviathan et al. 2023, arXiv 2211.17192; Chen et al. 2023,
arXiv 2302.01318), isolated from any model: tensors in, accepted tokens out.

Shapes, for a batch of ``B`` rows, ``G`` (gamma) drafted tokens per row and vocabulary ``V``:

* ``draft_tokens``  ``[B, G]``      the draft's proposals.
* ``draft_probs``   ``[B, G, V]``   the draft's (processed: temperature, top-p) distributions they were drawn
  from, or ``None`` for a greedy / deterministic draft (a one-hot ``q`` at the proposed token).
* ``target_probs``  ``[B, G + 1, V]`` the target's processed distributions at the ``G`` drafted positions and at
  the one after them (the bonus position).

Result (:class:`Verdict`): ``tokens`` ``[B, G + 1]`` holds, per row, the accepted draft tokens followed by one
target token (the correction drawn at the first rejection, or the bonus token when all ``G`` are accepted), padded
with ``-1``; ``num_accepted`` ``[B]`` counts accepted draft tokens, so each row emits ``num_accepted + 1`` tokens.
This is the one place that defines acceptance length; :mod:`seqkd.speculative.metrics` counts from it.

Two separate paths, as in vLLM's rejection sampler:

* :func:`greedy_accept` (temperature 0): accept while the draft token equals the target's argmax; the emitted
  token after the run is the target's argmax there. Output equals target-only greedy decoding.
* :func:`sample_accept`: accept token ``x`` with probability ``min(1, p(x) / q(x))``; at the first rejection draw
  from ``norm(max(0, p - q))``; if all are accepted draw the bonus from ``p`` at position ``G``. Output
  is distributed exactly as the target's sampling. ``lenience`` < 1 is DistillSpec's lossy variant (accept with
  ``min(1, p(x) / (lenience * q(x)))``, residual ``norm(max(0, p - lenience * q))``): more acceptance, not exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Verdict:
    tokens: Tensor  # [B, G + 1] accepted draft tokens, then the correction / bonus token; -1 padding
    num_accepted: Tensor  # [B] accepted draft tokens per row (0..G)

    @property
    def num_emitted(self) -> Tensor:  # [B] tokens each row gains this step: accepted + the target's token
        return self.num_accepted + 1


def _check(draft_tokens: Tensor, draft_probs: Tensor | None, target: Tensor) -> tuple[int, int]:
    if draft_tokens.dim() != 2:
        raise ValueError(f"draft_tokens must be [B, G], got shape {tuple(draft_tokens.shape)}")
    b, g = draft_tokens.shape
    if target.dim() != 3 or target.shape[:2] != (b, g + 1):
        raise ValueError(f"target distributions must be [B, G+1, V] = [{b}, {g + 1}, V], got {tuple(target.shape)}")
    if draft_probs is not None and draft_probs.shape != (b, g, target.shape[-1]):
        raise ValueError(f"draft_probs must be [B, G, V] = [{b}, {g}, {target.shape[-1]}], "
                         f"got {tuple(draft_probs.shape)}")
    return b, g


def _first_false(ok: Tensor) -> Tensor:
    """``ok`` [B, G] bool -> [B] number of leading True values (the accepted prefix length)."""
    return ok.to(torch.int64).cumprod(dim=1).sum(dim=1)


def _assemble(draft_tokens: Tensor, n: Tensor, last: Tensor) -> Tensor:
    """[B, G] drafts, [B] accepted counts, [B] final tokens -> [B, G + 1] emitted tokens, -1 padded."""
    b, g = draft_tokens.shape
    pos = torch.arange(g + 1, device=draft_tokens.device).expand(b, g + 1)
    out = torch.full((b, g + 1), -1, dtype=torch.long, device=draft_tokens.device)
    out[:, :g] = torch.where(pos[:, :g] < n[:, None], draft_tokens, out[:, :g])
    out.scatter_(1, n[:, None], last[:, None].long())
    return out


def greedy_accept(draft_tokens: Tensor, target_logits: Tensor) -> Verdict:
    """Temperature-0 rule. ``target_logits`` (or probabilities) ``[B, G + 1, V]``; the target's argmax decides."""
    b, g = _check(draft_tokens, None, target_logits)
    best = target_logits.argmax(dim=-1)  # [B, G + 1]
    n = _first_false(draft_tokens == best[:, :g])  # [B]
    last = best.gather(1, n[:, None])[:, 0]  # [B] target argmax after the accepted run
    return Verdict(_assemble(draft_tokens, n, last), n)


def sample_accept(
    draft_tokens: Tensor,
    draft_probs: Tensor | None,
    target_probs: Tensor,
    *,
    generator: torch.Generator | None = None,
    lenience: float = 1.0,
) -> Verdict:
    """Speculative sampling rule (exact for ``lenience=1``). ``draft_probs=None``: the draft is deterministic
    (``q`` one-hot at its token: accept with probability ``p(x)``, residual ``p`` without ``x``)."""
    b, g = _check(draft_tokens, draft_probs, target_probs)
    if not 0.0 < lenience <= 1.0:
        raise ValueError(f"lenience must be in (0, 1], got {lenience}")
    p = target_probs.float()
    v = p.shape[-1]
    idx = draft_tokens[..., None]  # [B, G, 1]
    p_x = p[:, :g].gather(2, idx)[..., 0]  # [B, G]
    if draft_probs is None:
        q = torch.zeros_like(p[:, :g]).scatter_(2, idx, 1.0)
    else:
        q = draft_probs.float()
    q_x = q.gather(2, idx)[..., 0]  # [B, G]
    u = torch.rand((b, g), generator=generator, device=p.device)
    # u < p/(l q)  <=>  u * l * q < p; q(x) > 0 for any token the draft could have drawn
    n = _first_false(u * lenience * q_x < p_x)  # [B]
    # the distribution of the emitted token: residual at the rejected position, p itself at the bonus position
    row = torch.arange(b, device=p.device)
    p_n = p[row, n]  # [B, V]
    q_n = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)[row, n]  # [B, V] (zero at the bonus position)
    resid = (p_n - lenience * q_n).clamp_min(0.0)
    mass = resid.sum(-1, keepdim=True)
    # p == q at a rejected position has probability 0 but can occur numerically: fall back to p there
    resid = torch.where(mass > 1e-12, resid / mass.clamp_min(1e-30), p_n)
    last = torch.multinomial(resid.view(b, v), 1, generator=generator)[:, 0]
    return Verdict(_assemble(draft_tokens, n, last), n)
