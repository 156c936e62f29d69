"""Where the compressed model's edge over scratch comes from on the delay task: cut step and re-warm-up.

Runs the delay sweep's compressed model (S4D, tol 0.3 by default) with variants of the one cut, per seed:
``cut@STEP`` (the cut at another step; step 1 leaves the balanced truncation of the initialization and no
training at full size) and ``norewarm`` (the cut at the sweep's step without the learning-rate re-warm-up).
Records go to ``--out`` (resumable); compare with the sweep's own runs (``docs/figures/delay/delay_sweep.json``:
the fixed cut at step 60, scratch, and the model-timed runs that cut at step 300).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_delay_ablation.py --out DIR --variants cut@1,norewarm
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from adapters.torch.experiment.delay import DelaySweepConfig, _predict, build_regressor, delay_scores, make_delay_data
from adapters.torch.experiment.loop import seed_everything, train_run


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
            cuts = [int(round(0.1 * steps))]
            if variant.startswith("cut@"):
                cuts = [int(variant[4:])]
            elif variant == "norewarm":
                config = replace(config, rewarm_steps=0)
            else:
                raise SystemExit(f"unknown variant {variant!r}; use cut@STEP or norewarm")
            seed_everything(seed)
            model = build_regressor(config, data)
            rec = train_run(model, data, config, steps=steps, cuts=cuts, label=path.stem)
            rec = {"variant": variant, "seed": seed, "tol": args.tol, "cuts": cuts, "state_dims": model.state_dims,
                   **delay_scores(_predict(model, data.x_test), data.y_test, sweep.task.lags)}
            path.write_text(json.dumps(rec))
            print(f"{path.stem}: R^2 {rec['r2']:.4f}, MSE {rec['mse']:.4g}, state {rec['state_dims']}", flush=True)


if __name__ == "__main__":
    main()
