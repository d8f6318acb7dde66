"""Initialise a smaller student from its teacher: embeddings, output layer, final norms and every k-th layer
(DistilBERT, Sanh et al. 2019; "well-read students", Turc et al. 2019). Both models must share the family, the
vocabulary and the layer shapes (hidden size, heads, FFN size); only the layer counts differ.

:func:`draft_from_target` builds such a student from the teacher itself (its configuration with fewer layers), for
a pretrained decoder-only target whose shape no preset has: a speculative-decoding draft that starts where the
target is (its embeddings, output layer and a chosen subset of its layers) rather than from random weights."""

from __future__ import annotations

import torch

from seqkd.errors import SeqkdError


def layer_map(n_teacher: int, n_student: int) -> list[int]:
    """Teacher layer copied into each student layer: every k-th, ending at the teacher's last layer
    (k = n_teacher // n_student; 6 -> 2 gives [2, 5], 3 -> 1 gives [2], 3 -> 3 gives [0, 1, 2])."""
    if not 1 <= n_student <= n_teacher:
        raise SeqkdError(f"a student with {n_student} layers cannot take every k-th of the teacher's {n_teacher}")
    k = n_teacher // n_student
    return [n_teacher - 1 - k * (n_student - 1 - j) for j in range(n_student)]


def _stacks(model) -> dict[str, torch.nn.ModuleList]:
    """The model's layer stacks by name (llama: decoder; marian: encoder and decoder)."""
    inner = model.model
    if hasattr(inner, "layers"):
        return {"layers": inner.layers}
    return {"encoder.layers": inner.encoder.layers, "decoder.layers": inner.decoder.layers}


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """The target layers a draft keeps, from ``spec``: ``first:K`` (layers 0..K-1: an early exit), ``every:N``
    (layers N-1, 2N-1, ..., the last one included when N divides the count), or an explicit increasing list
    ``0,10,29``. One-line error for anything else or out of range."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "first" and arg:
            layers = list(range(int(arg)))
        elif kind == "every" and arg:
            layers = list(range(int(arg) - 1, n_layers, int(arg))) if int(arg) > 0 else []
        else:
            layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise SeqkdError(f"--layers {spec!r}: expected first:K, every:N or a list like 0,10,29") from None
    if not layers or layers != sorted(set(layers)) or layers[0] < 0 or layers[-1] >= n_layers:
        raise SeqkdError(f"--layers {spec!r} gives {layers}: need at least one layer, increasing, each in "
                         f"0..{n_layers - 1} (the target has {n_layers})")
    return layers


def draft_from_target(target, layers: list[int]):
    """A new model of ``target``'s class and configuration with ``len(layers)`` decoder layers, draft layer ``j``
    a copy of target layer ``layers[j]``, and every other weight (embeddings, final norm, output layer; tied where
    the target ties them) copied. Decoder-only targets. With ``layers = first:K`` its logits are the target's
    early exit after K layers (its hidden state after layer K-1, through the final norm and the output layer)."""
    import copy

    if not hasattr(target.model, "layers"):
        raise SeqkdError(f"a draft is made from a decoder-only target; this one is a {type(target).__name__}")
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:  # per-layer attention kinds (sliding / full) follow
        config.layer_types = [config.layer_types[i] for i in layers]
    draft = type(target)(config).to(dtype=next(target.parameters()).dtype)
    init_from_teacher(draft, target, layers={"layers": layers})
    draft.tie_weights()
    return draft.eval()


@torch.no_grad()
def init_from_teacher(student, teacher, layers: dict[str, list[int]] | None = None) -> dict:
    """Copy the teacher's weights into ``student`` in place; returns ``{stack: [teacher layer per student layer]}``.

    Every parameter outside the layer stacks (embeddings, positions, norms, output projection) is copied by name;
    each student layer ``j`` of a stack takes teacher layer ``layers[stack][j]`` (default: :func:`layer_map`, every
    k-th). Shapes must match exactly."""
    if type(student) is not type(teacher):
        raise SeqkdError(f"cannot initialise a {type(student).__name__} student from a {type(teacher).__name__} "
                         "teacher (the families and architectures must match)")
    s_stacks, t_stacks = _stacks(student), _stacks(teacher)
    mapping = layers or {name: layer_map(len(t_stacks[name]), len(s_stacks[name])) for name in s_stacks}
    t_state = teacher.state_dict()
    copied = 0
    for key, param in student.state_dict().items():
        src = key
        for name, idx in mapping.items():
            marker = f".{name}."
            if marker in f".{key}":
                head, tail = f".{key}".split(marker, 1)
                j, rest = tail.split(".", 1)
                src = f"{head}{marker}{idx[int(j)]}.{rest}".lstrip(".")
                break
        if src not in t_state:
            raise SeqkdError(f"the teacher has no parameter {src} for the student's {key}")
        if t_state[src].shape != param.shape:
            raise SeqkdError(f"shape mismatch for {key}: student {tuple(param.shape)}, teacher {src} "
                             f"{tuple(t_state[src].shape)} (hidden size, heads and FFN size must match)")
        param.copy_(t_state[src])
        copied += 1
    return {name: idx for name, idx in mapping.items()}
