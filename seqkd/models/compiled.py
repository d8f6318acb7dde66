"""``torch.compile`` for decoding: a model's forward through inductor with its weights frozen (constants of the
graph, so inductor prepacks the linear layers for oneDNN/MKL's packed GEMM and fuses the elementwise work between
them), shapes dynamic (a decode step's rows, the cache length and a prompt's length vary from call to call).

Why: on a 2-core CPU a SmolLM2-135M step is 83% matrix products (torch.profiler), and the products of 2-5 rows a
verification call makes cost 1.5x one row through MKL. ``benchmarks/decode_paths.py`` (AMD EPYC, 2 cores, greedy):
the target alone 1.54x faster compiled than eager, speculation with a draft of the target's first 4 layers 2.2x
faster, a verification call of 4 rows 0.88 of a one-row step, identical tokens. Compiling costs minutes the first
time (inductor caches its kernels on disk for later processes), so it pays for long runs and servers, not for one
prompt.

Decoding only: frozen weights ignore later changes to the parameters, and nothing here trains.
"""

from __future__ import annotations

from torch import nn

# A decode loop calls the forward with a new cache length every step and 1 to gamma + 1 rows: dynamic shapes keep
# that to a handful of graphs, and the limit stays above what a run makes (the default, 8, falls back to eager).
RECOMPILE_LIMIT = 64


def compile_for_decoding(model: nn.Module) -> nn.Module:
    """``model`` with its forward compiled by inductor (weights frozen, dynamic shapes); call it in eval mode under
    ``torch.no_grad()``. The first calls of each kind compile (minutes on 2 cores); the module's attributes (config,
    parameters, a pruned draft's ``seqkd_vocab_map``) are reached through the returned wrapper."""
    import torch
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config
    import torch.fx.experimental._config as fx_config

    inductor_config.freezing = True  # global in torch: what makes the weights constants inductor can prepack
    # A decode step has one row, and dynamo specialises sizes of 1: that graph's products have a fixed row count, for
    # which inductor packs the weights for MKL's GEMM, while a varying count gets oneDNN's, faster on a CPU where
    # MKL's few-row kernels read the weights again per row (SmolLM2-135M, 2-core AMD EPYC: a one-row step 43 ms
    # specialised, 37 ms with this; 4 rows 30 ms either way). Size-oblivious reasoning keeps the row count symbolic.
    # Global in torch and marked experimental there; the compiled models' exactness is tested (tests/test_compiled.py).
    fx_config.backed_size_oblivious = True
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(model, dynamic=True)
