"""The experiments' text tables: one layout for the MNIST-1D sweep (``lti-reduce sweep``) and the delay task.

Every table is a title line, a header with its rule, one row per run kind (method and tolerance), a blank
line, the paired per-seed differences under their heading, a blank line and a note on what the figures mean.
:func:`results_table` lays that out from cells formatted by the caller; :func:`interval_verdict` reads a
paired difference's 95% interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["format_delay_table", "format_sweep_table", "interval_verdict", "results_table"]


def interval_verdict(ci, *, above: str, below: str) -> str:
    """What the 95% interval ``ci = (low, high)`` of a paired difference says.

    ``above`` when the whole interval lies above zero, ``below`` when it lies below, ``"inside the noise"``
    when it contains zero, and ``"one seed: no interval"`` when ``ci`` is ``None``.
    """
    if ci is None:
        return "one seed: no interval"
    if ci[0] > 0:
        return above
    if ci[1] < 0:
        return below
    return "inside the noise"


def results_table(title: str, columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[str]],
                  paired_heading: str, paired: Iterable[str], note: str) -> str:
    """An experiment's table as text.

    Parameters
    ----------
    title : str
        The first line (task, model, steps, seeds).
    columns : sequence of (str, int)
        Each column's header and width: a positive width right-aligns the column, a negative one left-aligns it.
        Columns are separated by one space; a cell wider than its column is kept whole.
    rows : iterable of sequence of str
        One row per run kind, its cells already formatted.
    paired_heading : str
        The line above the paired differences.
    paired : iterable of str
        The lines of the paired differences (already indented).
    note : str
        The last line: what the figures mean.
    """

    def line(cells):
        return " ".join(cell.ljust(-width) if width < 0 else cell.rjust(width)
                        for cell, (_, width) in zip(cells, columns, strict=True))

    head = line([name for name, _ in columns])
    return "\n".join([title, head, "-" * len(head), *map(line, rows), "", paired_heading, *paired, "", note])


def _pts(x) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


def _speedup(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_sweep_table(results: dict) -> str:
    """The sweep as text: the summary table, the paired differences, and what the noise is."""
    ds, cfg = results["dataset"], results["config"]
    acc_full = next((r["acc_mean"] for r in results["summary"] if r["method"] == "full"), 0.97)
    sd = 100 * math.sqrt(acc_full * (1 - acc_full) / ds["n_test"])
    title = (f"sweep: {ds['name']} ({ds['n_train']} train / {ds['n_test']} test examples; binomial sd of one "
             f"accuracy about {sd:.2f} points), {cfg['model'].upper()} {cfg['n_layers']} x {cfg['d_state']} modes, "
             f"d_model {cfg['d_model']}, {results['steps']} steps, cuts at {results['cut_steps']}, seeds "
             f"{', '.join(map(str, results['seeds']))}")
    columns = [("method", -11), ("tol", 5), ("state (mean)", 12), ("test acc (mean +- std)", 23),
               ("wall speed-up", 14), ("step speed-up", 14)]
    rows = []
    for r in results["summary"]:
        std = "" if r["acc_std"] is None else f" +- {100 * r['acc_std']:.2f}"
        rows.append([r["method"], "-" if r["tol"] is None else f"{r['tol']:g}", f"{r['state_mean']:.1f}",
                     f"{100 * r['acc_mean']:>14.2f}%{std:<8}", _speedup(r["wall_speedup_mean"]),
                     _speedup(r["step_speedup_mean"])])
    paired = []
    for p in results["paired"]:
        ci, vs = p["diff_ci95"], p["vs_full_ci95"]
        verdict = interval_verdict(ci, above="compressed better", below="compressed WORSE")
        vs_text = (f"; compressed - full {_pts(p['vs_full_mean'])} [{_pts(vs[0])}, {_pts(vs[1])}]" if vs else "")
        ci_text = f" [{_pts(ci[0])}, {_pts(ci[1])}]" if ci else ""
        paired.append(f"  tol {p['tol']:<5g} compressed - scratch {_pts(p['diff_mean'])}{ci_text} ({verdict}){vs_text}")
    return results_table(title, columns, rows, "paired per-seed differences in points (mean, 95% t-interval over "
                         "seeds):", paired, "speed-ups over the full model: wall clock of whole runs, and step time "
                         "at the final size timed interleaved (valid on a shared machine; the wall clock is not).")


def format_delay_table(results: dict) -> str:
    """The delay sweep as text: summary (mean +- std over seeds), paired differences, what the noise is."""
    cfg, task = results["config"], results["task"]
    title = (f"delay task: length {task['seq_len']}, lags {', '.join(map(str, task['lags']))}, "
             f"{task['n_train']} train / {task['n_test']} test sequences; {cfg['model'].upper()} "
             f"{cfg['n_layers']} x {cfg['d_state']} modes, d_model {cfg['d_model']}, {results['steps']} steps, cuts at "
             f"{results['cut_steps']}, seeds {', '.join(map(str, results['seeds']))}")
    columns = [("method", -16), ("tol", 5), ("state (min-max)", 16), ("test R^2 (mean +- std)", 24),
               ("test MSE (mean +- std)", 24), ("step speed-up", 14)]
    rows = []
    for r in results["summary"]:
        state = f"{r['state_min']}" if r["state_min"] == r["state_max"] else f"{r['state_min']}-{r['state_max']}"
        r2 = f"{r['r2_mean']:.4f}" + ("" if r["r2_std"] is None else f" +- {r['r2_std']:.4f}")
        mse = f"{r['mse_mean']:.4g}" + ("" if r["mse_std"] is None else f" +- {r['mse_std']:.2g}")
        rows.append([r["method"], "-" if r["tol"] is None else f"{r['tol']:g}", state, r2, mse,
                     _speedup(r["step_speedup_mean"])])
    paired = []
    for p in results["paired"]:
        for name, label in (("vs_scratch", "compressed - scratch"), ("vs_full", "compressed - full"),
                            ("timed_vs_fixed", "timed - fixed cut")):
            r2, mse = p.get(f"{name}_r2"), p.get(f"{name}_mse")
            if r2 is None:
                continue
            ci = "" if r2["ci95"] is None else f" [{r2['ci95'][0]:+.4f}, {r2['ci95'][1]:+.4f}]"
            cm = "" if mse["ci95"] is None else f" [{mse['ci95'][0]:+.3g}, {mse['ci95'][1]:+.3g}]"
            verdict = interval_verdict(r2["ci95"], above="first better", below="first WORSE")
            paired.append(f"  tol {p['tol']:<5g} {label:<20} R^2 {r2['mean']:+.4f}{ci} ({verdict}); "
                          f"MSE {mse['mean']:+.3g}{cm}")
    for r in results["summary"]:
        if "cut_steps" in r:
            paired.append(f"  {r['method']} tol {r['tol']:g}: cut at steps {r['cut_steps']} "
                          f"({', '.join(r['cut_reasons'])}); watching took "
                          f"{100 * min(r['watch_share']):.1f}-{100 * max(r['watch_share']):.1f}% of the training time")
    return results_table(title, columns, rows, "paired per-seed differences (mean, 95% t-interval over seeds):",
                         paired, "R^2: mean over lags of 1 - SSE/SST on the defined targets (t >= lag); step "
                         "speed-up: full model's step time over the run's, the seed's models timed interleaved.")
