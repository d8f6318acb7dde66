"""oneDNN linear layers for decoding on a CPU: each ``nn.Linear`` of a float32 model with its weight reordered once
into oneDNN's blocked layout (as ``torch.utils.mkldnn`` does), so every product runs oneDNN's GEMM instead of
torch's default CPU path (MKL's sgemm).

Why: a verification call multiplies 2 to gamma + 1 rows, and MKL's sgemm picks kernels for such small row counts
that read the weights again per row: on a 2-core AMD EPYC, SmolLM2's 576 x 49,152 output layer costs 10.2 ms for one
row but 22.4 / 34.5 / 18.4 ms for 2 / 3 / 4 rows; oneDNN takes 4.8 ms for one row and 6.7 / 7.6 / 7.5 ms for 2 / 3
/ 4 (``benchmarks/matmul_rows.py``). A whole SmolLM2-135M forward step with a cache, measured there, went from 53 ms
(1 row) / 81 ms (4 rows) through MKL to 50 / 59 ms through oneDNN: a verification call of gamma = 3 costs 1.2 target
steps instead of 1.5. No compilation (unlike :mod:`seqkd.models.compiled`, whose inductor prepacking does the same
and more at the price of minutes of compiling).

Float32 either way; the sums run in another order, so logits differ from MKL's by ~1e-4 (on SmolLM2: 1.9e-4 at
most, the same argmax at every position) and, as with MKL, a row's logits depend on the other rows of its call at
~5e-5. Speculative decoding stays exact with respect to the model it decodes (the target-only baseline uses the same
prepacked target). Decoding only: the weights are buffers in oneDNN's layout, not parameters; nothing trains or saves.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class OneDNNLinear(nn.Module):
    """``nn.Linear``'s product through oneDNN: the weight reordered once into oneDNN's layout (a buffer, not a
    parameter), each call's input converted to a oneDNN tensor and the output back (a copy of the activations, small
    beside the weights). As ``torch.utils.mkldnn.MkldnnLinear``, without its TorchScript (deprecated in torch)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("weight", weight.to_mkldnn(), persistent=False)  # [out, in], oneDNN's blocked layout
        bias = None if linear.bias is None else linear.bias.detach().to_mkldnn()
        self.register_buffer("bias", bias, persistent=False)  # [out] or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] float32 -> [..., out] float32 (dense)."""
        return torch.ops.aten.mkldnn_linear(x.contiguous().to_mkldnn(), self.weight, self.bias).to_dense()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def prepack_linears(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (left untouched) whose ``nn.Linear`` layers compute through oneDNN; every other module,
    parameter and attribute (config, a pruned draft's ``seqkd_vocab_map``) is shared with ``model``, not copied.
    A tied output layer gets its own oneDNN weight (the input embedding keeps the float one). Float32 CPU models
    only; call it in eval mode under ``torch.no_grad()``."""
    if not torch.backends.mkldnn.is_available():
        raise ValueError("this torch build has no oneDNN (mkldnn): decode without --onednn")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("oneDNN linear layers run on the CPU: load the model with device='cpu'")
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise ValueError("oneDNN linear layers here start from float32 weights: load the model with dtype float32")

    def swap(module: nn.Module) -> nn.Module:
        if type(module) is nn.Linear:  # exactly: int8 (torch.ao) layers are not nn.Linear, other subclasses unknown
            return OneDNNLinear(module)
        clone = copy.copy(module)  # a shallow copy: its parameters are the original's; only its children are new
        clone._modules = {name: None if child is None else swap(child) for name, child in module._modules.items()}
        return clone

    out = swap(model)
    out.seqkd_linears = "onednn"
    return out
