"""Which state score predicts what removing a state costs the language model: measured on the text task's checkpoints.

For the full-size models a ``lti-reduce sweep --task text`` run saved (``OUT/runs/full-seed{S}.pt``), on every
selective layer (Hugging Face ``MambaMixer`` / ``Mamba2Mixer``):

* scores on calibration windows of the training split:
  ``output_energy`` (the library's default), ``gramian``, ``averaged_hsv`` (:func:`adapters.torch.mamba.
  selective_state_scores`; ``averaged_hsv`` is the Hankel singular values of the input-averaged LTI system, a
  data-driven balanced-truncation score), and ``taylor``, the first-order Taylor estimate of the loss change
  of removing the state, ``|sum_i w_i dL/dw_i|`` over the weights that feed the state's ``B`` and ``C``
  (Molchanov et al. 2019; the best ``d_state`` criterion of SSM-Pruner, Ghattas et al. 2025), averaged over
  calibration batches before the absolute value;
* the reference: the validation loss change (bits per byte) when that state alone is removed (its ``B`` and
  ``C`` weights zeroed, which removes it exactly: ``B_t[n] = 0`` keeps ``h[n] = 0``);
* reported per score: Spearman's rank correlation with the reference (per layer, then mean and min over
  layers and seeds), and the validation loss after keeping each score's top ``rank`` states in every layer,
  with no further training.

Usage: ``python benchmarks/bench_text_scores.py OUT [--seeds 0,1,2] [--val 16] [--calib 16] [--threads 1]``
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from adapters.torch.experiment.text import (
    TextConfig,
    _loss,
    _windows,
    build_text_model,
    load_corpus,
    val_bits_per_byte,
    val_windows,
)
from adapters.torch.cut.selective.analysis import _capture_inputs
from adapters.torch.cut.selective.kinds import _kind_of, _selective_layers
from adapters.torch.mamba import RANKINGS, compress_selective_, selective_state_scores

SCORES = (*RANKINGS, "taylor")


def _state_rows(kind, layer):
    """Per state ``(g, n)``: ``{param name: (axis, removed indices)}`` of the weights feeding its B and C."""
    G, N = kind.state_shape(layer)
    if G != 1:
        raise ValueError(f"{kind.label} with {G} groups: this benchmark handles one group of B, C (n_groups=1).")
    full = {p: (axis, set(idx.tolist())) for p, axis, idx in kind.cut_spec(layer, torch.arange(N).expand(G, N))[0]}
    rows = {}
    for g in range(G):
        for n in range(N):
            keep = torch.tensor([[m for m in range(N) if m != n]])
            spec = kind.cut_spec(layer, keep)[0]
            removed = {}
            for p, axis, idx in spec:
                if p.endswith("A_log"):  # zeroing A does not remove a state; B and C do
                    continue
                gone = sorted(full[p][1] - set(idx.tolist()))
                removed[p] = (axis, torch.tensor(gone, dtype=torch.long))
            rows[(g, n)] = removed
    return rows


def _taylor(model, layers, rows, calib, batch=4):
    """``|mean over batches of sum_i w_i dL/dw_i|`` over each state's B/C weights, shape (G, N) per layer."""
    sums = {name: {key: 0.0 for key in rows[name]} for name, _ in layers}
    batches = [calib[i:i + batch] for i in range(0, len(calib), batch)]
    for chunk in batches:
        model.zero_grad(set_to_none=True)
        _loss(model, chunk).backward()
        for name, layer in layers:
            for key, removed in rows[name].items():
                total = 0.0
                for p, (axis, idx) in removed.items():
                    w = layer.get_parameter(p)
                    total += float((w.detach() * w.grad).index_select(axis, idx).sum())
                sums[name][key] += total / len(batches)
    model.zero_grad(set_to_none=True)
    out = {}
    for name, layer in layers:
        G, N = _kind_of(layer).state_shape(layer)
        t = torch.zeros(G, N, dtype=torch.float64)
        for (g, n), v in sums[name].items():
            t[g, n] = abs(v)
        out[name] = t
    return out


@torch.no_grad()
def _without(layer, removed):
    """Zero the B/C weights of one state; returns what to restore."""
    saved = []
    for p, (axis, idx) in removed.items():
        w = layer.get_parameter(p)
        saved.append((w, axis, idx, w.index_select(axis, idx).clone()))
        w.index_fill_(axis, idx, 0.0)
    return saved


@torch.no_grad()
def _restore(saved):
    for w, axis, idx, old in saved:
        w.index_copy_(axis, idx, old)


@torch.no_grad()
def _keep_top(model, layers, rows, scores, rank):
    """Zero every state outside each layer's top ``rank`` by ``scores`` (exactly the cut to those states)."""
    saved = []
    for name, layer in layers:
        s = scores[name]
        for g in range(s.shape[0]):
            for n in torch.argsort(s[g], descending=True)[rank:].tolist():
                saved += _without(layer, rows[name][(g, n)])
    return saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the output directory of 'lti-reduce sweep --task text'")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--val", type=int, default=16, help="validation windows of the reference loss change")
    ap.add_argument("--calib", type=int, default=16, help="calibration windows (training split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    config = TextConfig(**json.loads((out / "text.json").read_text())["config"])
    corpus = load_corpus()
    val = val_windows(corpus, replace(config, n_val=args.val))
    results = {"config": config.to_dict(), "val_windows": args.val, "calib_windows": args.calib, "per_layer": [],
               "top_rank": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        path = out / "runs" / f"full-seed{seed}.pt"
        if not path.is_file():
            print(f"seed {seed}: no checkpoint {path}; skipped", flush=True)
            continue
        t0 = time.perf_counter()
        model = build_text_model(config)
        model.load_state_dict(torch.load(path))
        model.eval()
        gen = torch.Generator().manual_seed(seed + 100)
        starts = torch.randint(0, corpus.train.numel() - config.seq_len - 1, (args.calib,), generator=gen)
        calib = _windows(corpus.train, starts, config.seq_len + 1)
        layers = _selective_layers(model)
        rows = {name: _state_rows(_kind_of(layer), layer) for name, layer in layers}
        captured = _capture_inputs(model, layers, calib[:, :-1])
        scores = {name: {r: selective_state_scores(layer, captured[name], ranking=r) for r in RANKINGS}
                  for name, layer in layers}
        for name, t in _taylor(model, layers, rows, calib).items():
            scores[name]["taylor"] = t
        base = val_bits_per_byte(model, val)
        for name, layer in layers:
            delta = torch.zeros_like(scores[name]["taylor"])
            for (g, n), removed in rows[name].items():
                saved = _without(layer, removed)
                delta[g, n] = val_bits_per_byte(model, val) - base
                _restore(saved)
            row = {"seed": seed, "layer": name, "delta_mean": float(delta.mean()), "delta_max": float(delta.max())}
            for s in SCORES:
                row[s] = float(spearmanr(scores[name][s].flatten().numpy(), delta.flatten().numpy())[0])
            results["per_layer"].append(row)
            print(json.dumps(row), flush=True)
        top = {"seed": seed, "full": base}
        for s in SCORES:
            saved = _keep_top(model, layers, rows, {n: scores[n][s] for n, _ in layers}, config.rank)
            top[s] = val_bits_per_byte(model, val)
            _restore(saved)
        # self-check: zeroing the dropped states' B/C weights is the library's cut to the kept ones
        cut = copy.deepcopy(model)
        compress_selective_(cut, calibration_inputs=calib[:, :-1], rank=config.rank, optimizer=None, min_shrink=0.0)
        top["library_cut_output_energy"] = val_bits_per_byte(cut, val)
        results["top_rank"].append(top)
        print(json.dumps(top), f"({time.perf_counter() - t0:.0f}s)", flush=True)
    full = np.mean([t["full"] for t in results["top_rank"]])
    table = ["score          Spearman vs loss change (mean, min over layers x seeds)   "
             f"val bits/byte keeping top {config.rank} (mean over seeds; full {full:.4f})"]
    for s in SCORES:
        rho = [r[s] for r in results["per_layer"]]
        kept = [t[s] for t in results["top_rank"]]
        table.append(f"{s:<14} {np.mean(rho):>8.3f} {np.min(rho):>8.3f} {'':>44} {np.mean(kept):.4f}")
    print("\n".join(table))
    results["table"] = table
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
