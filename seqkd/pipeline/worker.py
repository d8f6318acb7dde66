"""One stage of ``seqkd run --jobs N`` in its own process: ``python -m seqkd.pipeline.worker STEP_FILE``.

The ``seqkd run`` that starts it (and holds the run directory's lock) pickles the stage's plan step and the outputs
of the stages before it into ``STEP_FILE``; the worker runs the stage exactly as a sequential run does
(:func:`seqkd.pipeline.run.run_stage`: the stage's directory, resuming what the job can, its marker written last) and
exits 0, or prints the error in one line and exits 1. Its thread count comes from the environment the run gives it.
"""

from __future__ import annotations

import pickle
import sys


def main(argv: list[str] | None = None) -> int:
    from seqkd.errors import SeqkdError
    from seqkd.pipeline.run import run_stage

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
