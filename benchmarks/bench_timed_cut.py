"""A cut timed by the model's HSVs (HSVTimedSchedule) against the fixed cut at 10% of the steps, on MNIST-1D.

For each seed: the LRU classifier of ``lti-reduce sweep`` (smaller state, see ``CONFIG``) compressed once at
10% of the steps, and the same model (same initialization and batches) cut when
:class:`adapters.torch.monitor.HSVTimedSchedule` decides (looks at multiples of ``--every`` steps
within ``--budget`` of the training time; ``--rule`` either, certified or observed; at the latest at half the
steps). Writes one JSON record per run into ``--out`` (resumable)
and prints the test accuracy, the cut step and the monitor's share of the training time.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_timed_cut.py --out DIR --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from adapters.torch.experiment import ExperimentConfig
from adapters.torch.experiment.comparison import prepare_data
from adapters.torch.experiment.config import cut_steps, total_steps
from adapters.torch.experiment.loop import evaluate, seed_everything, train_run
from adapters.torch.experiment.models import build_model
from adapters.torch.experiment.stats import mean_std, paired_t_interval
from adapters.torch.monitor import HSVTimedSchedule, save_hsv_trajectory_plot

CONFIG = ExperimentConfig(d_model=32, d_state=64, n_layers=2, epochs=20, threads=1, progress=False, tol=0.1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--budget", type=float, default=0.02)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--rule", default="either", choices=("either", "certified", "observed"))
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    data = prepare_data(CONFIG, None, torch.device("cpu"))
    steps = total_steps(CONFIG, len(data.y_train))
    fixed = cut_steps(CONFIG, steps)
    records = {}
    for seed in map(int, args.seeds.split(",")):
        config = replace(CONFIG, seed=seed)
        for method in ("fixed", f"timed-{args.rule}"):
            path = out / f"{method}-seed{seed}.json"
            if path.is_file():
                records[(method, seed)] = json.loads(path.read_text())
                continue
            seed_everything(seed)
            model = build_model(config, data)
            schedule = None
            if method != "fixed":
                schedule = HSVTimedSchedule(model, steps, tol=config.tol, every=args.every, budget=args.budget,
                                            patience=args.patience,
                                            min_step=max(1, round(config.warmup_frac * steps)), deadline=0.5,
                                            rule=args.rule, min_shrink=config.min_shrink, rewarm_steps=0)
            rec = train_run(model, data, config, steps=steps, cuts=fixed if schedule is None else [],
                            schedule=schedule, label=f"{method}-seed{seed}")
            acc, _ = evaluate(model, data.x_test, data.y_test)
            rec = {"method": method, "seed": seed, "test_accuracy": acc, "state_dims": model.state_dims,
                   "train_time_s": rec["train_time_s"], "cut_step": fixed[0] if schedule is None else schedule.cut_step,
                   "reason": "fixed" if schedule is None else schedule.reason,
                   "watch_time_s": 0.0 if schedule is None else schedule.watch_time_s,
                   "watch": [] if schedule is None else [{"step": t["step"], "kept": t["kept"],
                                                          "certified": t["certified"], "observed": t["observed"],
                                                          "cost_s": t["cost_s"]} for t in schedule.trace]}
            if schedule is not None:
                save_hsv_trajectory_plot(schedule.trace, out / f"hsv_trajectories-{method}-seed{seed}.png",
                                         cut_step=schedule.cut_step, fixed_step=fixed[0],
                                         title=f"MNIST-1D {method} seed {seed}: cut ({schedule.reason}) at "
                                         f"{schedule.cut_step}")
            path.write_text(json.dumps(rec))
            records[(method, seed)] = rec
            print(f"{method}-seed{seed}: acc {100 * acc:.2f}%, state {rec['state_dims']}, cut at {rec['cut_step']} "
                  f"({rec['reason']}), watch {rec['watch_time_s']:.1f}s of {rec['train_time_s']:.1f}s", flush=True)
    seeds = sorted({s for _, s in records})
    timed = f"timed-{args.rule}"
    for method in ("fixed", timed):
        acc = [records[(method, s)]["test_accuracy"] for s in seeds]
        m, sd = mean_std(acc)
        print(f"{method}: accuracy {100 * m:.2f} +- {100 * (sd or 0):.2f} over seeds {seeds}; cut steps "
              f"{[records[(method, s)]['cut_step'] for s in seeds]}; watch share "
              f"{[round(100 * records[(method, s)]['watch_time_s'] / records[(method, s)]['train_time_s'], 1) for s in seeds]}%")
    diffs = [records[(timed, s)]["test_accuracy"] - records[("fixed", s)]["test_accuracy"] for s in seeds]
    mean, ci = paired_t_interval(diffs)
    print(f"timed - fixed: {100 * mean:+.2f} points, 95% t-interval "
          f"{'-' if ci is None else f'[{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}]'}; per seed "
          f"{[round(100 * d, 2) for d in diffs]}; steps {steps}, fixed cut {fixed}")
    np.save(out / "done.npy", np.array(1))


if __name__ == "__main__":
    main()
