"""Internals transfer in training: where the layers are, what is recorded from them, and the learned projections.

:class:`Internals` records, with forward hooks, the mapped layers' outputs (hidden states), their self-attention
distributions (eager attention) and their value vectors (``self_attn.v_proj``) on the student and on the teacher,
for the encoder and decoder stacks of both families (``model.get_encoder().layers``, ``model.get_decoder().layers``:
Marian, Llama and their kin), and turns a student/teacher pair of recordings into loss terms with the pure losses of
:mod:`seqkd.student.losses.internals`. Where the widths differ, a learned linear map (FitNets' regressor, one per
mapped layer) projects the student's hidden states to the teacher's width; it trains with the student, is saved
beside it (``internals.safetensors`` + ``internals.json``) and is not needed at inference.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from seqkd.student.losses import internals as L

PROJECTIONS_FILE = "internals.safetensors"
INTERNALS_FILE = "internals.json"


def layer_stacks(model) -> dict[str, nn.ModuleList]:
    """``{"enc": layers, "dec": layers}`` (encoder-decoder) or ``{"dec": layers}`` (decoder-only)."""
    out = {}
    if getattr(model.config, "is_encoder_decoder", False):
        out["enc"] = model.get_encoder().layers
    dec = model.get_decoder()
    out["dec"] = dec.layers
    return out


def parse_layer_map(spec: str, student, teacher) -> dict[str, list[tuple[int, int]]]:
    """Per stack, (student layer, teacher layer) pairs: ``uniform`` for every stack, or ``enc.s:t,dec.s:t`` pairs
    (a decoder-only model's may leave out ``dec.``). ValueError naming what does not fit."""
    s_st, t_st = layer_stacks(student), layer_stacks(teacher)
    if set(s_st) != set(t_st):
        raise ValueError("internals transfer needs a student and a teacher of the same family")
    if spec == "uniform":
        return {k: L.layer_map(len(s_st[k]), len(t_st[k])) for k in s_st}
    items: dict[str, list[str]] = {k: [] for k in s_st}
    for item in spec.split(","):
        item = item.strip()
        stack, dot, pair = item.partition(".")
        if not dot:
            stack, pair = "dec", item
        if stack not in items:
            raise ValueError(f"layer map item {item!r}: the stacks here are {', '.join(items)} (e.g. dec.0:2)")
        items[stack].append(pair)
    return {k: L.layer_map(len(s_st[k]), len(t_st[k]), ",".join(v)) for k, v in items.items() if v}


class Recorder:
    """Forward hooks on the mapped layers of one model; records only while :meth:`recording` is active."""

    def __init__(self, model, layers: dict[str, list[int]], *, attention: bool, values: bool) -> None:
        self.active = False
        self.hidden: dict[str, torch.Tensor] = {}
        self.attn: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        stacks = layer_stacks(model)
        for stack, idx in layers.items():
            for i in idx:
                key, layer = f"{stack}.{i}", stacks[stack][i]
                self.handles.append(layer.register_forward_hook(self._keep(self.hidden, key)))
                if attention:
                    self.handles.append(layer.self_attn.register_forward_hook(self._keep(self.attn, key, 1)))
                if values:
                    self.handles.append(layer.self_attn.v_proj.register_forward_hook(self._keep(self.values, key)))

    def _keep(self, store: dict, key: str, index: int = 0):
        def hook(module, args, output):
            if self.active:
                out = output[index] if isinstance(output, tuple) else output
                if out is None:
                    raise RuntimeError(f"{type(module).__name__} returned no attention weights: internals transfer "
                                       "of attention needs eager attention (set by Internals)")
                store[key] = out
        return hook

    @contextmanager
    def recording(self) -> Iterator[None]:
        for store in (self.hidden, self.attn, self.values):  # in place: the hooks hold these dicts
            store.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class Internals(nn.Module):
    """The projections (trainable) and the settings of internals transfer between ``student`` and ``teacher``.

    ``hidden``: none | mse | cosine; ``attention``: none | kl | value_relation; ``layer_map``: see
    :func:`parse_layer_map`; ``relation_heads``: MiniLM's relation heads (default: the teacher's attention heads)."""

    def __init__(self, student, teacher, *, hidden: str = "none", attention: str = "none",
                 layer_map: str = "uniform", relation_heads: int = 0) -> None:
        super().__init__()
        self.kind_hidden, self.kind_attention = hidden, attention
        self.map = parse_layer_map(layer_map, student, teacher)
        t_cfg, s_cfg = teacher.config.get_text_config(), student.config.get_text_config()
        self.widths = (s_cfg.hidden_size, t_cfg.hidden_size)
        self.relation_heads = relation_heads or t_cfg.num_attention_heads
        if attention == "value_relation":  # values are num_kv_heads * head_dim wide (narrower than hidden with GQA)
            for m in (student, teacher):
                for layers in layer_stacks(m).values():
                    w = layers[0].self_attn.v_proj.out_features
                    if w % self.relation_heads:
                        raise ValueError(f"{self.relation_heads} relation heads do not divide a value width of {w}: "
                                         "set --relation-heads to a common divisor of both models' value widths")
        if attention == "kl":  # the attention distributions themselves: eager attention returns them
            for m in (student, teacher):
                m.set_attn_implementation("eager")
        self.proj = nn.ModuleDict()
        if hidden != "none" and self.widths[0] != self.widths[1]:
            for stack, pairs in self.map.items():
                for s, _ in pairs:
                    self.proj[f"{stack}_{s}"] = nn.Linear(self.widths[0], self.widths[1], bias=False)
        opts = dict(attention=attention == "kl", values=attention == "value_relation")
        self.student_rec = Recorder(student, {k: [s for s, _ in v] for k, v in self.map.items()}, **opts)
        self.teacher_rec = Recorder(teacher, {k: [t for _, t in v] for k, v in self.map.items()}, **opts)

    def project(self, stack: str, s: int, h: torch.Tensor) -> torch.Tensor:
        key = f"{stack}_{s}"
        return self.proj[key](h) if key in self.proj else h

    def terms(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean loss over mapped layers of each kind, from the last recordings; ``masks``: real positions
        ``[B, S]`` per stack."""
        out: dict[str, torch.Tensor] = {}
        hid, att = [], []
        for stack, pairs in self.map.items():
            mask = masks[stack]
            for s, t in pairs:
                ks, kt = f"{stack}.{s}", f"{stack}.{t}"
                if self.kind_hidden != "none":
                    h_s = self.project(stack, s, self.student_rec.hidden[ks])
                    h_t = self.teacher_rec.hidden[kt].detach()
                    fn = L.hidden_mse if self.kind_hidden == "mse" else L.hidden_cosine
                    hid.append(fn(h_s, h_t, mask))
                if self.kind_attention == "kl":
                    att.append(L.attention_kl(self.student_rec.attn[ks], self.teacher_rec.attn[kt].detach(), mask))
                elif self.kind_attention == "value_relation":
                    att.append(L.value_relation_kl(self.student_rec.values[ks], self.teacher_rec.values[kt].detach(),
                                                   mask, heads=self.relation_heads))
        if hid:
            out["hidden"] = torch.stack(hid).mean()
        if att:
            out["attention"] = torch.stack(att).mean()
        return out

    def describe(self) -> dict:
        return {"hidden": self.kind_hidden, "attention": self.kind_attention,
                "layer_map": {k: [list(p) for p in v] for k, v in self.map.items()},
                "widths": list(self.widths), "relation_heads": self.relation_heads,
                "projections": sorted(self.proj.keys())}

    def save(self, out_dir: str | Path) -> None:
        """``internals.safetensors`` (the projections, if any) and ``internals.json`` (what they map)."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if len(self.proj):
            save_file({k: v.detach().cpu().contiguous() for k, v in self.proj.state_dict().items()},
                      str(out / PROJECTIONS_FILE))
        (out / INTERNALS_FILE).write_text(json.dumps(self.describe(), indent=1) + "\n", encoding="utf-8")

    def load(self, out_dir: str | Path) -> bool:
        """Load the projections saved in ``out_dir`` (a checkpoint being resumed); False when there are none."""
        from safetensors.torch import load_file

        path = Path(out_dir) / PROJECTIONS_FILE
        if not len(self.proj) or not path.is_file():
            return False
        self.proj.load_state_dict(load_file(str(path)))
        return True
