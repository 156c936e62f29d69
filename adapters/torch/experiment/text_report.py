"""The text task's results: the summary over seeds, the table and the plot of validation loss against time.

Read by :mod:`adapters.torch.experiment.text`, which runs the three runs of every seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .report import plot_axes
from .stats import mean_std, paired_t_interval
from .tables import interval_verdict, results_table

__all__ = ["RUNS", "format_text_table", "save_text_plot", "summarize_text", "time_to_reach"]

#: The three runs of every seed, in the order they run and are reported.
RUNS = ("full", "compressed", "scratch")


def time_to_reach(curve, target: float) -> float | None:
    """Training seconds at the first evaluation with validation loss <= ``target`` (``None``: never)."""
    return next((t for _, t, bpb in curve if bpb <= target), None)



def summarize_text(per_seed: dict) -> dict:
    """Summary rows (mean +- std over seeds) and paired differences from ``{seed: (records, timing)}``.

    Returns
    -------
    dict
        ``summary``: per run ``val_bpb_mean``, ``val_bpb_std``, ``d_state``, ``step_ms_mean``,
        ``step_speedup_mean`` (full's interleaved step time over this run's, per seed, averaged),
        ``time_to_full_s`` (per seed: seconds to reach that seed's full model's final validation loss, ``None``
        where never reached), ``train_time_s_mean``; ``paired``: for (compressed, scratch), (compressed, full),
        (scratch, full) the per-seed differences in bits/byte, their mean and 95% t-interval and the relative
        difference to full in percent.
    """
    seeds = sorted(per_seed)
    summary = []
    for method in RUNS:
        vals = [per_seed[s][0][method]["val_bpb"] for s in seeds]
        mean, std = mean_std(vals)
        speed = [per_seed[s][1]["full"] / per_seed[s][1][method] for s in seeds]
        reach = [time_to_reach(per_seed[s][0][method]["curve"], per_seed[s][0]["full"]["val_bpb"]) for s in seeds]
        summary.append({"method": method, "d_state": per_seed[seeds[0]][0][method]["d_state"], "val_bpb": vals,
                        "val_bpb_mean": mean, "val_bpb_std": std,
                        "step_ms_mean": float(np.mean([per_seed[s][1][method] for s in seeds])),
                        "step_speedup_mean": float(np.mean(speed)), "step_speedups": speed,
                        "time_to_full_s": reach,
                        "train_time_s_mean": float(np.mean([per_seed[s][0][method]["train_time_s"] for s in seeds]))})
    paired = []
    full = np.array([per_seed[s][0]["full"]["val_bpb"] for s in seeds])
    for a, b in (("compressed", "scratch"), ("compressed", "full"), ("scratch", "full")):
        diffs = [per_seed[s][0][a]["val_bpb"] - per_seed[s][0][b]["val_bpb"] for s in seeds]
        mean, ci = paired_t_interval(diffs)
        paired.append({"a": a, "b": b, "diffs": diffs, "mean": mean, "ci95": ci,
                       "relative_to_full_pct": 100.0 * mean / float(full.mean())})
    return {"summary": summary, "paired": paired}


def format_text_table(results: dict) -> str:
    """The text comparison as text: per run, bits/byte mean +- std, speed, time to the full model's loss."""
    cfg, ds = results["config"], results["dataset"]
    seeds = results["seeds"]
    title = (f"text: byte-level causal LM on the standard library's text ({ds['train_bytes']} train / "
             f"{ds['val_bytes']} validation bytes, sha256 {ds['sha256']['train'][:12]} / {ds['sha256']['val'][:12]}), "
             f"{cfg['model']} {cfg['n_layers']} layers x d_model {cfg['d_model']}, d_state {cfg['d_state']} -> "
             f"{cfg['rank']} at step {results['cut_step']}, {cfg['steps']} steps of {cfg['batch_size']} x "
             f"{cfg['seq_len']} bytes, {cfg['n_val']} validation windows, seeds {', '.join(map(str, seeds))}")
    columns = [("run", -11), ("d_state", 7), ("val bits/byte (mean +- std)", 28), ("step speed-up", 13),
               ("reaches full final loss after (s, per seed)", 44)]
    rows = []
    for r in results["summary"]:
        std = "" if r["val_bpb_std"] is None else f" +- {r['val_bpb_std']:.4f}"
        reach = ", ".join("never" if t is None else f"{t:.3g}" for t in r["time_to_full_s"])
        rows.append([r["method"], str(r["d_state"]), f"{r['val_bpb_mean']:>17.4f}{std:<11}",
                     f"{r['step_speedup_mean']:>12.2f}x", reach])
    paired = []
    for p in results["paired"]:
        ci = "" if p["ci95"] is None else f" [{p['ci95'][0]:+.4f}, {p['ci95'][1]:+.4f}]"
        verdict = interval_verdict(p["ci95"], above="first is WORSE (higher loss)", below="first is better (lower loss)")
        paired.append(f"  {p['a']} - {p['b']}: {p['mean']:+.4f}{ci} ({p['relative_to_full_pct']:+.2f}%; {verdict})")
    return results_table(title, columns, rows, "paired per-seed differences in bits/byte (mean, 95% t-interval over "
                         "seeds; % of full's loss):", paired, "step speed-up: the full model's training-step time "
                         "over the run's, the three trained models timed interleaved, one thread. Times to reach the "
                         "full model's final validation loss count the training loop only (evaluations excluded), at "
                         "the evaluation points.")


def save_text_plot(results: dict, path: Path) -> str | None:
    """Validation bits/byte against training wall-clock time, the three runs of every seed."""
    axes = plot_axes()
    if axes is None:
        return None
    fig, ax = axes
    colors = {"full": "0.3", "compressed": "tab:red", "scratch": "tab:green"}
    sizes = {r["method"]: r["d_state"] for r in results["summary"]}
    labels = {"full": f"full (d_state {sizes['full']})",
              "compressed": f"compressed in training ({sizes['full']} -> {sizes['compressed']})",
              "scratch": f"from scratch at {sizes['scratch']}"}
    for i, (seed, runs) in enumerate(sorted(results["runs"].items())):
        for method in RUNS:
            curve = np.array(runs[method]["curve"])
            ax.plot(curve[:, 1], curve[:, 2], color=colors[method], lw=1, alpha=0.8,
                    label=labels[method] if i == 0 else None)
    ax.set_xlabel("training wall-clock time (s; evaluations excluded)")
    ax.set_ylabel("validation loss (bits per byte)")
    ax.set_title(f"{results['config']['model']}: {len(results['seeds'])} seed(s), one line per seed and run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return str(path)
