"""Regenerate every figure of the documentation into docs/figures/.

Run: ``python docs/scripts/make_figures.py [NAME ...]`` with NAME among cdplayer, theory,
mnist1d (default: all). The figures are committed; rerun after changing the code they show.
Needs matplotlib, and for ``cdplayer`` the SLICOT files in ``../shared/data/slicot/``, for
``mnist1d`` torch and the ``mnist1d`` package.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parents[1]))

SCRIPTS = {"cdplayer": "fig_cdplayer", "theory": "fig_theory", "mnist1d": "fig_mnist1d"}


def main(argv: list[str]) -> int:
    names = argv or list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        print(f"unknown figure set(s) {unknown}; choose from {list(SCRIPTS)}", file=sys.stderr)
        return 2
    for name in names:
        started = time.perf_counter()
        importlib.import_module(SCRIPTS[name]).main()
        print(f"{name}: {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
