"""One process of a torchrun or MPI job: ``python -m matra_hpc.launch.worker SPEC.json``.

Builds the context from the launcher's environment (torchrun variables, or mpi4py's
``COMM_WORLD`` under MPI), rebuilds the stage config from the spec and calls the stage. A
failing rank writes its traceback to ``--errors-dir`` so the job's error names it.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from matra_hpc.launch import environment
from matra_hpc.launch.call import read_spec, run_stage_from_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m matra_hpc.launch.worker")
    parser.add_argument("spec", type=Path)
    parser.add_argument("--errors-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    spec = read_spec(args.spec)
    ctx = environment.context_from_environment(
        run_dir=spec["run_dir"], gpus_per_node=spec["launch"]["gpus_per_node"]
    )
    try:
        run_stage_from_spec(spec, ctx)
    except BaseException:
        text = f"rank {ctx.rank} of {ctx.world_size}:\n{traceback.format_exc()}"
        print(text, file=sys.stderr, flush=True)
        if args.errors_dir is not None:
            args.errors_dir.mkdir(parents=True, exist_ok=True)
            (args.errors_dir / f"rank{ctx.rank:05d}.txt").write_text(text)
        if ctx.comm is not None and ctx.world_size > 1:
            ctx.comm.Abort(1)  # the other ranks may be blocked waiting for this one
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
