"""Where the compressed model's edge comes from on the delay task: ablations of the one cut, over seeds.

Runs the delay sweep's models (S4D, tol 0.3 by default) with variants, per seed (records go to ``--out``,
resumable; compare with the sweep's own runs of the same seeds, which these pair with):

* ``cut@STEP``: the compressed model with its cut at another step (step 1: a balanced truncation of the
  initialization, no training at full size);
* ``norewarm``: the cut at the sweep's step without the learning-rate re-warm-up;
* ``rebalance@STEP``: the full model, at STEP replaced by its balanced realization at full order (no state
  removed: the core's balancing, ``reduce`` to the full order, back to modal form, ``load_system_``), the
  layers' optimizer state reset and the re-warm-up started, as a cut does; records the largest relative change
  of any layer parameter (for S4D, which stores only ``A`` and the products ``c b``, a re-parametrization
  without a cut leaves the parameters as they were);
* ``reset@STEP``: the full model with the SSM layers' Adam moments reset and the re-warm-up started at STEP;
* ``ssmlr*K``: the full model with the SSM layers' learning rate (recurrence and read-out) multiplied by K.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_delay_ablation.py --out DIR \
        --variants rebalance@60,reset@60,ssmlr*0.5,ssmlr*2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import lti_reduce as lr
from adapters.torch.cut.compute import _reduce_layer, _working
from adapters.torch.experiment.delay import DelaySweepConfig, _predict, build_regressor, delay_scores, make_delay_data
from adapters.torch.experiment import loop
from adapters.torch.experiment.loop import seed_everything, train_run
from adapters.torch.optim import reset_state_
from adapters.torch.protocol import compressible_layers


class _NoCut:
    """What ``train_run`` reads from a cut's report, for surgery that removes no state."""

    def __init__(self, model):
        self.state_before = self.state_after = sum(layer.state_dim for _, layer in compressible_layers(model))

    def __iter__(self):
        return iter(())


class _SurgeryAt:
    """A schedule for ``train_run`` that does ``surgery(model, optimizer)`` once, after ``at`` steps."""

    def __init__(self, at: int, surgery):
        self.at, self.surgery, self.log = at, surgery, {}

    def should_cut(self, step: int) -> bool:
        return step == self.at

    def step(self, step, model, optimizer):
        self.surgery(model, optimizer, self.log)
        return _NoCut(model)


def _reset(model, optimizer, log) -> None:
    reset_state_(optimizer, [p for _, layer in compressible_layers(model) for p in layer.parameters()])


def _modal_change(old, new) -> float:
    """Largest relative change of a mode's eigenvalue and residue ``c_i b_i``, each new mode matched to the
    nearest old one or its conjugate (a real-output map is the same with ``(conj lam, conj b, conj c)``)."""
    res_old, res_new = (s.C[..., 0, :] * s.B[..., :, 0] for s in (old, new))
    d = (new.lam[..., :, None] - old.lam[..., None, :]).abs()
    dc = (new.lam[..., :, None] - old.lam[..., None, :].conj()).abs()
    conj = dc < d
    j = torch.minimum(d, dc).argmin(-1)
    lam_o = torch.gather(old.lam, -1, j)
    res_o = torch.gather(res_old, -1, j)
    flip = torch.gather(conj, -1, j[..., None]).squeeze(-1)
    lam_o, res_o = torch.where(flip, lam_o.conj(), lam_o), torch.where(flip, res_o.conj(), res_o)
    return max(float(((new.lam - lam_o).abs() / lam_o.abs().clamp(min=1e-30)).max()),
               float(((res_new - res_o).abs() / res_o.abs().max().clamp(min=1e-30)).max()))


@torch.no_grad()
def _rebalance(model, optimizer, log) -> None:
    """Each layer -> its balanced realization at full order, in modal form (no state removed)."""
    change, modal = 0.0, 0.0
    for _, layer in compressible_layers(model):
        before = {k: v.detach().clone() for k, v in layer.named_parameters()}
        old = _working(layer.to_system())
        bal = lr.balance(old)
        _, system = _reduce_layer(bal, int(np.asarray(bal.hsv).shape[-1]), None, "truncate", layer.state_dim)
        if system.n != layer.state_dim:
            raise RuntimeError(f"the full-order balanced realization has {system.n} modes, not {layer.state_dim}")
        layer.load_system_(system)
        for k, v in layer.named_parameters():
            change = max(change, float((v - before[k]).abs().max() / before[k].abs().max().clamp(min=1e-30)))
        modal = max(modal, _modal_change(old, _working(layer.to_system())))
    log["max_relative_parameter_change"] = change  # raw: the modal form may order and conjugate modes differently
    log["max_relative_modal_change"] = modal  # per mode, matched up to order and conjugation: eigenvalue, residue
    _reset(model, optimizer, log)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--tol", type=float, default=0.3)
    p.add_argument("--variants", default="cut@1,norewarm")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    sweep = DelaySweepConfig()
    data = make_delay_data(sweep.task)
    steps = sweep.base.steps
    for variant in args.variants.split(","):
        for seed in map(int, args.seeds.split(",")):
            path = out / f"{variant}-tol{args.tol:g}-seed{seed}.json"
            if path.is_file():
                continue
            config = replace(sweep.base, seed=seed, tol=args.tol, progress=False)
            cuts, schedule, lr_factor = [int(round(0.1 * steps))], None, 1.0
            if variant.startswith("cut@"):
                cuts = [int(variant[4:])]
            elif variant == "norewarm":
                config = replace(config, rewarm_steps=0)
            elif variant.startswith("rebalance@"):
                cuts, schedule = [], _SurgeryAt(int(variant[10:]), _rebalance)
            elif variant.startswith("reset@"):
                cuts, schedule = [], _SurgeryAt(int(variant[6:]), _reset)
            elif variant.startswith("ssmlr*"):
                cuts, lr_factor = [], float(variant[6:])
            else:
                raise SystemExit(f"unknown variant {variant!r}; use cut@STEP, norewarm, rebalance@STEP, reset@STEP "
                                 f"or ssmlr*K")
            seed_everything(seed)
            model = build_regressor(config, data)
            if lr_factor != 1.0:  # train_run builds its AdamW groups with loop.param_groups: scale the SSM ones
                ssm = {id(p) for _, layer in compressible_layers(model) for p in layer.parameters()}
                original = loop.param_groups

                def scaled(m, c):
                    groups = original(m, c)
                    for g in groups:
                        if all(id(p) in ssm for p in g["params"]):
                            g["lr"] = g.get("lr", c.lr) * lr_factor
                    return groups

                loop.param_groups = scaled
                try:
                    rec = train_run(model, data, config, steps=steps, cuts=cuts, label=path.stem)
                finally:
                    loop.param_groups = original
            else:
                rec = train_run(model, data, config, steps=steps, cuts=cuts, label=path.stem, schedule=schedule)
            rec = {"variant": variant, "seed": seed, "tol": args.tol, "cuts": cuts, "state_dims": model.state_dims,
                   **({} if schedule is None else schedule.log),
                   **delay_scores(_predict(model, data.x_test), data.y_test, sweep.task.lags)}
            path.write_text(json.dumps(rec))
            print(f"{path.stem}: R^2 {rec['r2']:.4f}, MSE {rec['mse']:.4g}, state {rec['state_dims']}", flush=True)


if __name__ == "__main__":
    main()
