"""Int8 weights for CPU decoding: a model's linear layers (its output layer included) as dynamically quantized int8
matrix products (int8 weights per output channel, activations quantized per call; fbgemm/x86 kernels).

Why: on a 2-core AVX2 CPU an fp32 matrix-vector product is bound by reading the weights (one 1536 x 8960 product,
3.2 ms), and a product with a few more rows costs nearly as many times more (5 rows: 3.3x) because MKL's small-row
kernels do not reuse what they read. Int8 weights are a quarter of the bytes and fbgemm's kernels reuse them across
rows (one row 6x faster than fp32, five rows 2.1x one row; ``benchmarks/matmul_rows.py`` measures this on the
machine at hand). Speculative decoding stays exact with a quantized draft: only the target's distribution defines
the output.

Not for the target: dynamic quantization scales each call's activations by that call's range, so an int8 model's
output at a position depends on which other rows share the call. A verification call (gamma + 1 rows) and a
target-only step (one row) then see different int8 targets, and speculative decoding is exact with respect to
neither (measured on the tiny test models: seqkd's one-row loop and HF ``generate``, whose prefill computes the
output layer for more rows, already decode the same int8 model differently). A target deployed in int8 needs
row-wise (per-token) activation scales or weight-only int8 to be a fixed function of its input.

``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of torchao but present and working in the torch
this project pins (2.13); its fbgemm kernels are the measured path. Quantized models are for decoding only: they are
not saved (quantize at load time, as CTranslate2's ``compute_type`` does) and cannot be trained.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

QUANTIZATIONS = ("none", "int8")


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (left untouched) whose ``nn.Linear`` layers are int8 dynamically quantized (per-channel
    weights), in eval mode, on the CPU. Embeddings, norms and everything else stay as they are; a tied output layer
    gets its own int8 copy (the embedding keeps its float weights). Custom attributes (e.g. a pruned draft's
    ``seqkd_vocab_map``) are kept."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 dynamic quantization runs on the CPU: load the model with device='cpu'")
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        raise ValueError("int8 dynamic quantization starts from float32 weights: load the model with dtype float32")
    if "x86" in torch.backends.quantized.supported_engines:  # fbgemm, or oneDNN where it is faster
        torch.backends.quantized.engine = "x86"
    q = copy.deepcopy(model).eval()
    with warnings.catch_warnings():  # torch.ao's deprecation notice, once per call: the module docstring says why
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(q, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    q.seqkd_quantization = "int8"
    return q


def maybe_quantize(model: nn.Module, quantization: str) -> nn.Module:
    """``model`` itself for ``"none"``, its int8 copy (:func:`quantize_int8`) for ``"int8"``."""
    if quantization == "none":
        return model
    if quantization == "int8":
        return quantize_int8(model)
    raise ValueError(f"unknown quantization {quantization!r}: choose one of {', '.join(QUANTIZATIONS)}")
