"""Initialise a smaller student from its teacher: embeddings, output layer, final norms and every k-th layer
(DistilBERT, Sanh et al. 2019; "well-read students", Turc et al. 2019). Both models must share the family, the
vocabulary and the layer shapes (hidden size, heads, FFN size); only the layer counts differ."""

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


@torch.no_grad()
def init_from_teacher(student, teacher) -> dict:
    """Copy the teacher's weights into ``student`` in place; returns ``{stack: [teacher layer per student layer]}``.

    Every parameter outside the layer stacks (embeddings, positions, norms, output projection) is copied by name;
    each student layer ``j`` of a stack takes teacher layer ``layer_map(...)[j]``. Shapes must match exactly."""
    if type(student) is not type(teacher):
        raise SeqkdError(f"cannot initialise a {type(student).__name__} student from a {type(teacher).__name__} "
                         "teacher (the families and architectures must match)")
    s_stacks, t_stacks = _stacks(student), _stacks(teacher)
    mapping = {name: layer_map(len(t_stacks[name]), len(s_stacks[name])) for name in s_stacks}
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
