"""compress_ as the docs call it, against one training step: LRU, S5, S4D and Hugging Face Mamba.

For each model the script measures, interleaved over ``--repeats`` rounds (one round: a training step, then
the cut of a fresh copy of the trained model, then the H-infinity certificate of that cut):

* ``step``: one training step (forward + backward + AdamW) at batch 16 x length ``L``;
* ``cut``: ``report = compress_(model, tol=0.05, optimizer=opt)`` with its defaults (the certificate
  measured on each layer's last input batch) followed by ``print(report)``, the way the README and the
  quickstart call it (the copy is made outside the timed region);
* ``hinf``: ``report.certify_hinf()``, the H-infinity gain and error of every cut map on request
  (``--hinf``; they cost far more than the cut on a CPU).

Reported: medians [s] and the ratios ``cut / step`` (target <= 1) and ``hinf / step``.

Models (``--scale 1``, the paper-like sizes; ``--scale 0.5`` halves widths, states and the length):

* LRU: 6 x ``LRU(512, 384)``, length 1024 (the CompreSSM sCIFAR configuration);
* S5: 6 x ``S5(512, 384)``, length 1024;
* S4D: 6 x ``S4D(512, 32)`` (the paper's ``N = 64``: 32 complex modes per channel), length 1024;
* Mamba: ``MambaForCausalLM`` from a ``MambaConfig`` (d_state 128, hidden 64, 4 layers, vocabulary 256,
  no download), length 128 (transformers' pure-torch path materializes a (batch, 2 hidden, length, d_state)
  tensor per layer, so larger sizes exhaust a CPU machine's memory); its mixers are selective, cut by
  state selection on ``calibration_inputs=`` (4 sequences), and their certificate is the measured output
  change.

With ``--blocks`` each LTI layer sits in the residual block the LRU and S4D papers train,
``x + GLU(W gelu(SSM(norm(x))))`` (``adapters.torch.experiment.models.SSMBlock``): the step then includes
the block's linear mixing, as a paper-like model's does, while the cut is the same.

Each model is trained for 2 steps before the first round, so layers have seen a batch.

    python benchmarks/bench_compress.py [--quick] [--scale 0.5] [--models lru s5 s4d mamba] [--hinf] [--blocks]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import time

# numpy's OpenBLAS (used by the core's modal form) reads its thread count at import:
# match it to --threads (default 1) before anything imports numpy.
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
if _threads != "0":
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import torch  # noqa: E402

import adapters.torch as at  # noqa: E402

BATCH = 16
LRU_INIT = {"r_min": 0.5, "r_max": 0.999}  # the LRU rows' eigenvalue ring


def make_model(d_model, d_state, layers):
    """``layers`` x ``LRU(d_model, d_state)`` (the LRU row's model; ``benchmarks/gpu_check.sh`` uses it too)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(*[at.LRU(d_model, d_state, **LRU_INIT) for _ in range(layers)])


def lti_case(kind, scale, layers=6, blocks=False):
    """One LTI row: bare layers, or (``blocks``) each layer inside the library's residual block."""
    d_model = max(8, int(512 * scale))
    length = max(16, int(1024 * scale))
    if kind == "lru":
        d_state, cls, kwargs = max(4, int(384 * scale)), at.LRU, LRU_INIT
    elif kind == "s5":
        d_state, cls, kwargs = max(4, int(384 * scale)), at.S5, {}
    else:
        d_state, cls, kwargs = max(2, int(32 * scale)), at.S4D, {}
    name = f"{layers} x {cls.__name__}({d_model}, {d_state})"
    if blocks:
        from adapters.torch.experiment.models import SSMBlock

        name = f"{layers} x block({cls.__name__}({d_model}, {d_state}))"

        def make():
            return SSMBlock(d_model, d_state, layer_cls=cls, **kwargs)
    else:
        def make():
            return cls(d_model, d_state, **kwargs)

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(*[make() for _ in range(layers)])

    def batch(g):
        return torch.randn(BATCH, length, d_model, generator=g)

    def loss_fn(model, x):
        return model(x).pow(2).mean()

    return name, length, build, batch, loss_fn, {}


def mamba_case(scale):
    import transformers

    hidden, vocab, length = max(32, int(64 * scale)), 256, max(16, int(128 * scale))
    config = transformers.MambaConfig(vocab_size=vocab, hidden_size=hidden, state_size=128, num_hidden_layers=4,
                                      expand=2, conv_kernel=4)

    def build():
        torch.manual_seed(0)
        return transformers.MambaForCausalLM(config)

    def batch(g):
        return torch.randint(0, vocab, (BATCH, length), generator=g)

    def loss_fn(model, ids):
        return model(ids, labels=ids).loss

    calib = torch.randint(0, vocab, (4, length), generator=torch.Generator().manual_seed(99))
    name = f"MambaForCausalLM(hidden {hidden}, 4 layers, d_state 128)"
    return name, length, build, batch, loss_fn, {"calibration_inputs": calib}


def measure(case, repeats, hinf):
    name, length, build, batch, loss_fn, extra = case
    g = torch.Generator().manual_seed(0)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step():
        loss = loss_fn(model, batch(g))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times = {"step": [], "cut": [], "hinf": []}
    report = None
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times["step"].append(time.perf_counter() - t)
        twin = copy.deepcopy(model)
        twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
        twin_opt.load_state_dict(opt.state_dict())
        text = io.StringIO()
        t = time.perf_counter()
        report = at.compress_(twin, tol=0.05, optimizer=twin_opt, **extra)
        with contextlib.redirect_stdout(text):
            print(report)
        times["cut"].append(time.perf_counter() - t)
        if hinf and any(x.method == "balanced_truncation" for x in report):
            t = time.perf_counter()
            report.certify_hinf(progress=False)
            times["hinf"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) if v else None for k, v in times.items()}
    return name, length, med, report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="scale 0.125, one round (a smoke run)")
    ap.add_argument("--scale", type=float, default=1.0, help="widths, states and length times this (default 1: paper)")
    ap.add_argument("--models", nargs="+", default=["lru", "s5", "s4d", "mamba"], choices=["lru", "s5", "s4d", "mamba"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hinf", action="store_true", help="also time report.certify_hinf() (slow on a CPU)")
    ap.add_argument("--blocks", action="store_true",
                    help="LTI layers inside the residual block x + GLU(W gelu(SSM(norm(x)))) (the LRU and S4D papers' "
                         "block; adapters.torch.experiment.models.SSMBlock) instead of bare layers")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every contender (default 1: steady on a shared machine; 0 = torch's default)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    scale, repeats = (0.125, 1) if args.quick else (args.scale, args.repeats)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU, scale {scale:g}, "
          f"{repeats} interleaved rounds, batch {BATCH}, tol 0.05")
    head = (f"{'model':<44} {'L':>5} {'step [s]':>9} {'cut [s]':>8} {'cut/step':>9} {'hinf [s]':>9} "
            f"{'hinf/step':>9} {'state':>12} {'max out change':>15}")
    print(head)
    print("-" * len(head))
    for kind in args.models:
        case = mamba_case(scale) if kind == "mamba" else lti_case(kind, scale, blocks=args.blocks)
        name, length, med, report = measure(case, repeats, args.hinf)
        hinf = med["hinf"]
        hinf_txt = (f"{hinf:>9.3f} {hinf / med['step']:>9.2f}" if hinf is not None else f"{'-':>9} {'-':>9}")
        changes = [x.output_change for x in report if x.output_change is not None]
        change = f"{max(changes):>15.3g}" if changes else f"{'-':>15}"
        print(f"{name:<44} {length:>5} {med['step']:>9.3f} {med['cut']:>8.3f} {med['cut'] / med['step']:>9.2f} "
              f"{hinf_txt} {f'{report.state_before}->{report.state_after}':>12} {change}", flush=True)
    print("cut: compress_(model, tol=0.05, optimizer=opt) with its defaults + print(report); target cut/step <= 1")


if __name__ == "__main__":
    main()
