"""One stage of ``seqkd run --jobs N`` in its own process: ``python -m seqkd.pipeline.worker STEP_FILE``.

The ``seqkd run`` that starts it (and holds the run directory's lock) pickles the stage's plan step and the outputs
of the stages before it into ``STEP_FILE``; the worker runs the stage exactly as a sequential run does
(:func:`seqkd.pipeline.run.run_stage`: the stage's directory, resuming what the job can, its marker written last) and
exits 0, or prints the error in one line and exits 1. Its thread count comes from the environment the run gives it.
"""

from __future__ import annotations

import os
import pickle
import sys


def _die_with(parent: int) -> None:
    """Linux: SIGTERM for this worker when the seqkd run that started it dies, so a killed run leaves no stage running
    behind its back (a rerun resumes the stage, as after any kill)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # (not Linux: the worker outlives a killed run)
        return
    if os.getppid() != parent:  # it died before the call above
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    from seqkd.errors import SeqkdError
    from seqkd.pipeline.run import run_stage

    if os.environ.get("SEQKD_RUN_PID"):
        _die_with(int(os.environ["SEQKD_RUN_PID"]))
    (path,) = sys.argv[1:] if argv is None else argv
    with open(path, "rb") as f:
        spec = pickle.load(f)
    try:
        run_stage(spec["step"], spec["outputs"], progress=False, command=spec["command"])
    except SeqkdError as e:
        print(f"seqkd: error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
