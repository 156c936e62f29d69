"""The MNIST-1D tutorial's figure, from the tutorial's own code.

Runs every code block of ``docs/tutorials/mnist1d.md`` (all 1000 steps; a few minutes on two
CPU cores) and plots the state size and the training loss of its three runs.

Run: ``python docs/scripts/fig_mnist1d.py``
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from _common import REPO, plt, save, style
from doc_blocks import run_page


def smooth(values, width=25):
    values = np.asarray(values, dtype=float)
    kernel = np.ones(width) / width
    return np.convolve(np.pad(values, (width // 2, width - 1 - width // 2), mode="edge"), kernel, mode="valid")


def main():
    style()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        try:
            ns = run_page(REPO / "docs" / "tutorials" / "mnist1d.md")
        finally:
            os.chdir(cwd)
    runs = [("full size", ns["history_full"], ns["full"], "0.5"),
            ("compressed in training", ns["history"], ns["model"], "C0"),
            ("small from scratch", ns["history_small"], ns["small"], "C1")]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.2))
    for name, history, net, color in runs:
        steps = [h[0] for h in history]
        acc = ns["accuracy"](net, ns["x_test"], ns["y_test"])
        left.plot(steps, [h[2] for h in history], color=color, label=f"{name} (test acc. {acc:.3f})")
        right.plot(steps, smooth([h[1] for h in history]), color=color, lw=1)
    left.set_xscale("symlog", linthresh=100)
    left.set_xlabel("training step")
    left.set_ylabel("total state size (complex modes)")
    right.set_yscale("log")
    right.set_xlabel("training step")
    right.set_ylabel("training loss (running mean)")
    fig.suptitle("MNIST-1D, 2-block LRU classifier: compressed at 10 % of training")
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=3, bbox_to_anchor=(0.5, -0.1))
    save(fig, "mnist1d.png")


if __name__ == "__main__":
    main()
