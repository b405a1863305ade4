#!/usr/bin/env python3
"""A stand-in for the licensed ``vasp`` program: replays recorded VASP outputs into the run folder.

``python fake_vasp.py SCENARIOS.json`` in a candidate directory (the way custodian starts VASP).
SCENARIOS maps a candidate id (from ``candidate.json``) or ``"default"`` to a list of steps; call n
of the program in that directory replays step n (the last step repeats). A step is a dict:

- ``vasprun``: a recorded ``vasprun.xml(.gz)`` under tests/dft/files, written as ``vasprun.xml``
  (omit it for a run that dies before writing one);
- ``stdout``: a recorded VASP standard output (error messages custodian's handlers look for);
- ``exit``: the exit code (default 0);
- ``sleep``: seconds to run first (a calculation still running when its job ends).

Like real VASP it refuses a folder without INCAR, KPOINTS or POSCAR, and it keeps what it was
given (``.fake_vasp/INCAR.<n>``, ``KPOINTS.<n>``, ``POSCAR.<n>``) so tests can check the inputs
and the corrections custodian made between calls. Standard library only: it starts fast.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
import time
from pathlib import Path

FILES = Path(__file__).resolve().parent / "files"
NORMAL_STDOUT = """ running on    1 total cores
 vasp.6 (fake: replaying recorded outputs)
 POSCAR found :  1 types and       2 ions
 entering main loop
       N       E                     dE             d eps       ncg     rms          rms(c)
DAV:   1    -0.100000000000E+02   -0.10000E+02   -0.10000E+02   100   0.100E+02
   1 F= -.10000000E+02 E0= -.10000000E+02  d E =-.100000E+02
 reached required accuracy - stopping structural energy minimisation
"""
OSZICAR = """       N       E                     dE             d eps       ncg     rms          rms(c)
DAV:   1    -0.100000000000E+02   -0.10000E+02   -0.10000E+02   100   0.100E+02
   1 F= -.10000000E+02 E0= -.10000000E+02  d E =-.100000E+02
"""
OUTCAR = """ vasp.6 (fake)
 General timing and accounting informations for this job:
 ========================================================
"""


def main(argv: list[str]) -> int:
    here = Path.cwd()
    scenarios = json.loads(Path(argv[1]).read_text())
    for name in ("INCAR", "KPOINTS", "POSCAR"):
        if not (here / name).is_file():
            print(f" ERROR: fake vasp: no {name} in {here}", file=sys.stderr)
            return 1
    incar = (here / "INCAR").read_text()
    if not re.search(r"^\s*ENCUT\s*=", incar, re.MULTILINE):
        print(" ERROR: fake vasp: INCAR without ENCUT", file=sys.stderr)
        return 1
    record = here / ".fake_vasp"
    record.mkdir(exist_ok=True)
    calls = len(list(record.glob("INCAR.*")))
    for name in ("INCAR", "KPOINTS", "POSCAR"):
        shutil.copy(here / name, record / f"{name}.{calls}")
    candidate = json.loads((here / "candidate.json").read_text())["id"] if (here / "candidate.json").is_file() else ""
    steps = scenarios.get(candidate) or scenarios["default"]
    step = steps[min(calls, len(steps) - 1)]
    if step.get("sleep"):
        time.sleep(float(step["sleep"]))
    stdout = (FILES / step["stdout"]).read_text() if step.get("stdout") else NORMAL_STDOUT
    sys.stdout.write(stdout)
    sys.stdout.flush()
    if step.get("vasprun"):
        src = FILES / step["vasprun"]
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(here / "vasprun.xml", "wb") as fout:
            shutil.copyfileobj(fin, fout)
        (here / "OSZICAR").write_text(OSZICAR)
        (here / "OUTCAR").write_text(OUTCAR)
        # the structure does not move: the replayed energies are what the test checks
        shutil.copy(here / "POSCAR", here / "CONTCAR")
    return int(step.get("exit", 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
