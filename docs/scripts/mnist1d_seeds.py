"""The MNIST-1D tutorial's comparison over seeds: how much of it is noise.

Runs the tutorial's own code (the data, the model and the ``train`` function of
``docs/tutorials/mnist1d.md``, all 1000 steps) for several seeds, with one cut (the page's schedule,
the library's default) and with CompreSSM's four cuts, and prints each model's test accuracy as mean and
standard deviation over the seeds and the paired per-seed differences with a 95% t-interval.
About 70 s per seed on two CPU cores.

Run: ``python docs/scripts/mnist1d_seeds.py [--seeds 0 1 2 3 4 5 6 7]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import statistics

import scipy.stats
import torch

from doc_blocks import REPO, python_blocks

PAGE = REPO / "docs" / "tutorials" / "mnist1d.md"


def tutorial_namespace() -> dict:
    """The page's data and model blocks, and its ``train`` function (without the run below it)."""
    blocks = python_blocks(PAGE)
    ns: dict = {}
    with contextlib.redirect_stdout(io.StringIO()):
        for block in blocks[:2]:
            exec(block.code, ns)
    train_block = next(b.code for b in blocks if "def train(" in b.code)
    match = re.search(r"^def train\(.*?^    return history\n", train_block, re.S | re.M)
    if match is None:
        raise RuntimeError(f"{PAGE.name}: no 'def train(...)' ending in 'return history'")
    exec(re.sub(r"num_cuts=\d+", "num_cuts=num_cuts", match.group(0)), ns)
    return ns


def interval(diffs):
    mean = statistics.fmean(diffs)
    half = scipy.stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean, mean - half, mean + half


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ns = tutorial_namespace()
    Classifier, accuracy = ns["Classifier"], ns["accuracy"]
    test = lambda net: 100 * accuracy(net, ns["x_test"], ns["y_test"])  # noqa: E731
    rows = {k: [] for k in ("full", "cut4", "small4", "cut1", "small1")}
    states = {"cut4": [], "cut1": [], "small4": [], "small1": []}
    for seed in args.seeds:
        ns["num_cuts"] = None
        torch.manual_seed(seed)
        full = Classifier(d_state=64)
        with contextlib.redirect_stdout(io.StringIO()):
            ns["train"](full, args.steps, seed=seed)
        rows["full"].append(test(full))
        for cuts in (4, 1):
            ns["num_cuts"] = cuts
            torch.manual_seed(seed)
            model = Classifier(d_state=64)
            with contextlib.redirect_stdout(io.StringIO()):
                ns["train"](model, args.steps, compress=True, seed=seed)
            torch.manual_seed(seed)
            small = Classifier(d_state=max(model.state_dims()))
            with contextlib.redirect_stdout(io.StringIO()):
                ns["train"](small, args.steps, seed=seed)
            rows[f"cut{cuts}"].append(test(model))
            rows[f"small{cuts}"].append(test(small))
            states[f"cut{cuts}"].append(sum(model.state_dims()))
            states[f"small{cuts}"].append(sum(small.state_dims()))
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rows.items())
              + "; states " + ", ".join(f"{k} {v[-1]}" for k, v in states.items()) + " of 128", flush=True)

    print(f"\nMNIST-1D tutorial, {args.steps} steps, seeds {args.seeds} (test accuracy in %, 1000 test examples)")
    print("| model | state after (mean) | test acc. (mean +- std) |")
    print("|---|---:|---:|")
    names = {"full": "full size", "cut4": "compressed, 4 cuts", "small4": "from scratch, size of 4-cut model",
             "cut1": "compressed, 1 cut", "small1": "from scratch, size of 1-cut model"}
    for k, label in names.items():
        st = statistics.fmean(states[k]) if k in states else (128 if k == "full" else None)
        st_text = "-" if st is None else f"{st:.1f}"
        print(f"| {label} | {st_text} | {statistics.fmean(rows[k]):.2f} +- {statistics.stdev(rows[k]):.2f} |")
    print("\n| paired difference [points] | mean | 95% t-interval |")
    print("|---|---:|---:|")
    for a, b in (("cut4", "small4"), ("cut4", "full"), ("cut1", "small1"), ("cut1", "full")):
        m, lo, hi = interval([x - y for x, y in zip(rows[a], rows[b])])
        print(f"| {names[a]} - {names[b]} | {m:+.2f} | [{lo:+.2f}, {hi:+.2f}] |")


if __name__ == "__main__":
    main()
