"""How well each state score of a selective SSM predicts the measured effect of removing that state.

For three layer kinds, small models are trained, then for every selective layer:

* the scores of :func:`adapters.torch.mamba.selective_state_scores` are computed on calibration data
  (training sequences): ``averaged_hsv`` (the time-averaged LTI system's per-state HSVs, the earlier rule),
  ``gramian`` (``sqrt(P_nn Q_nn)``, empirical Gramian diagonals of the time-varying scan) and
  ``output_energy`` (the energy each state's own term puts into the layer's output);
* the reference is :func:`adapters.torch.mamba.leave_one_state_out` on held-out data (test sequences):
  the exact relative change of the layer's output when that state alone is removed;
* reported: the Spearman rank correlation of each score with the reference, mean +- standard deviation and
  minimum over seeds x layers;
* for the MNIST-1D model also the test accuracy after a ``tol=0.05`` cut, and after a cut to the same sizes
  that keeps the states the ``averaged_hsv`` score prefers.

Models: ``SelectiveSSM`` (2 blocks, d_model 32, d_state 16) classifying MNIST-1D (batch 32) (``mnist1d``'s
``make_dataset(get_dataset_args())``); transformers' ``MambaForCausalLM`` and ``Mamba2ForCausalLM``
(hidden 32, state 16, 2 layers; Mamba2 with 2 groups) trained as language models on a copy task (a random
prefix repeated; batch 8, length 32). Calibration and held-out sets: 64 sequences each. Pure-torch paths, CPU.

Usage: ``python benchmarks/bench_selective_ranking.py [--quick] [--seeds 3] [--steps 150] [--threads 1]``
(about 10 minutes on one loaded CPU core).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import nn

from adapters.torch.cut.selective.analysis import _as_items, _score_pass
from adapters.torch.cut.selective.kinds import _kind_of, _selective_layers
from adapters.torch.mamba import RANKINGS, SelectiveSSM, compress_selective_, leave_one_state_out


class Classifier(nn.Module):
    def __init__(self, d_model=32, d_state=16, layers=2, classes=10):
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.blocks = nn.ModuleList(SelectiveSSM(d_model, d_state) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(layers))
        self.head = nn.Linear(d_model, classes)

    def forward(self, x):
        h = self.encoder(x)
        for block, norm in zip(self.blocks, self.norms):
            h = h + block(norm(h))
        return self.head(h.mean(1))


def mnist1d_tensors():
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    f = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)[..., None]
    return f(data["x"]), torch.as_tensor(data["y"]), f(data["x_test"]), torch.as_tensor(data["y_test"])


def copy_tokens(batch, length, vocab, generator):
    prefix = torch.randint(1, vocab, (batch, length // 2), generator=generator)
    return torch.cat([prefix, prefix], dim=1)[:, :length]


def layer_inputs(model, inputs):
    layers = _selective_layers(model)
    captured = {name: [] for name, _ in layers}
    handles = [m.register_forward_pre_hook(lambda mod, a, k, name=name: captured[name].append(a[0] if a else
                                                                                            k["hidden_states"]),
                                           with_kwargs=True) for name, m in layers]
    with torch.no_grad():
        model(inputs)
    for h in handles:
        h.remove()
    return [(name, m, captured[name][0]) for name, m in layers]


def train_selective_ssm(seed, steps, data):
    x, y, xt, _ = data[:4]
    torch.manual_seed(seed)
    model = Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (32,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, x[:64], xt[:64]


def train_hf(kind, seed, steps):
    import transformers

    vocab = 16
    common = {"vocab_size": vocab, "hidden_size": 32, "state_size": 16, "num_hidden_layers": 2, "conv_kernel": 4}
    torch.manual_seed(seed)
    if kind == "MambaMixer":
        model = transformers.MambaForCausalLM(transformers.MambaConfig(**common, expand=2, time_step_rank=4))
    else:
        model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**common, expand=2, num_heads=8, head_dim=8,
                                                                         n_groups=2, chunk_size=16))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = copy_tokens(8, 32, vocab, g)
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    calib = copy_tokens(64, 32, vocab, torch.Generator().manual_seed(10_000 + seed))
    held = copy_tokens(64, 32, vocab, torch.Generator().manual_seed(20_000 + seed))
    return model, calib, held


def spearman_rows(model, calib, held):
    rows = []
    for (name, layer, u_cal), (_, _, u_held) in zip(layer_inputs(model, calib), layer_inputs(model, held)):
        reference = leave_one_state_out(layer, u_held).flatten().numpy()
        row = {"layer": name}
        scores = _score_pass(_kind_of(layer), layer, _as_items(u_cal))  # all rankings in one pass
        for ranking in RANKINGS:
            row[ranking] = float(spearmanr(scores[ranking].flatten().numpy(), reference).statistic)
        rows.append(row)
    return rows


@torch.no_grad()
def accuracy(model, x, y):
    return float((model(x).argmax(-1) == y).float().mean())


def cut_accuracy(model, calib, data):
    """Test accuracy of the MNIST-1D model uncut, cut with tol=0.05 (output_energy), and cut to the same sizes
    keeping the states the averaged_hsv score prefers."""
    _, _, xt, yt = data
    new = copy.deepcopy(model)
    report = compress_selective_(new, calibration_inputs=calib, tol=0.05, optimizer=None)
    old = copy.deepcopy(model)
    for (name, layer, u), x in zip(layer_inputs(old, calib), report):
        if x.compressed:
            compress_selective_(layer, calibration_inputs=u, rank=x.after, ranking="averaged_hsv", min_shrink=0.0,
                                optimizer=None)
    return {"sizes": [x.after for x in report], "full": accuracy(model, xt, yt), "output_energy": accuracy(new, xt, yt),
            "averaged_hsv": accuracy(old, xt, yt)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, 20 steps (a smoke run)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds, steps = (1, 20) if args.quick else (args.seeds, args.steps)
    data = mnist1d_tensors()
    results, cuts = {}, []
    start = time.perf_counter()
    for kind in ("SelectiveSSM", "MambaMixer", "Mamba2Mixer"):
        rows = []
        for seed in range(seeds):
            model, calib, held = (train_selective_ssm(seed, steps, data) if kind == "SelectiveSSM"
                                  else train_hf(kind, seed, steps))
            rows += [{"seed": seed, **r} for r in spearman_rows(model, calib, held)]
            if kind == "SelectiveSSM":
                cuts.append(cut_accuracy(model, calib, data))
        results[kind] = rows
    print(f"Spearman rank correlation of each score (calibration data) with the measured leave-one-state-out "
          f"output change (held-out data); {seeds} seed(s) x 2 layers, {steps} training steps, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"{'layer kind':<14}" + "".join(f"{r:>26}" for r in RANKINGS))
    for kind, rows in results.items():
        cells = []
        for ranking in RANKINGS:
            v = np.array([r[ranking] for r in rows])
            cells.append(f"{v.mean():.3f} +- {v.std():.3f} (min {v.min():.2f})")
        print(f"{kind:<14}" + "".join(f"{c:>26}" for c in cells))
    print("\nSelectiveSSM on MNIST-1D, test accuracy (1000 sequences): uncut, cut with tol=0.05 (output_energy "
          "ranking), and cut to the same sizes keeping the states averaged_hsv prefers")
    for seed, c in enumerate(cuts):
        print(f"seed {seed}: sizes 16->{c['sizes']}  uncut {c['full']:.3f}  output_energy {c['output_energy']:.3f}  "
              f"averaged_hsv {c['averaged_hsv']:.3f}")
    print(json.dumps({"spearman": results, "cuts": cuts}))


if __name__ == "__main__":
    main()
