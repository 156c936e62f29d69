"""What ``lti-reduce train`` prints and draws: the comparison table and its PNG plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .config import RUN_TITLES

__all__ = ["format_table", "save_plots"]


def _sizes(dims: list[int]) -> str:
    return ",".join(map(str, dims)) if len(set(dims)) > 1 else f"{dims[0]} x{len(dims)}"


def _verdict(c: dict) -> str:
    lo, hi = 100 * c["diff_ci95"][0], 100 * c["diff_ci95"][1]
    inside = "outside the noise" if c["significant"] else "inside the noise"
    return (f"{100 * c['diff']:+.2f} points, 95% CI [{lo:+.2f}, {hi:+.2f}], McNemar p = {c['p_value']:.3g} "
            f"({c['only_a']} vs {c['only_b']} discordant examples): {inside}")


def format_table(results: dict) -> str:
    """The comparison as a text table (what ``lti-reduce train`` prints)."""
    runs, speedup = results["runs"], results.get("speedup", {})
    ds = results["dataset"]
    head = (f"{'run':<32} {'test acc':>8} {'95% CI':>15}  {'state per layer':<16} {'total':>6} {'train time':>11} "
            f"{'speedup':>8}")
    lines = [f"test set: {ds['name']}, {ds['n_test']} examples (train on {ds['n_train']})", head, "-" * len(head)]
    for name, r in runs.items():
        s = f"{speedup[name]:.2f}x" if name in speedup else "-"
        ci = r.get("test_ci95")
        ci_text = f"[{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else "-"
        lines.append(f"{RUN_TITLES[name]:<32} {100 * r['test_accuracy']:>7.2f}% {ci_text:>15}  "
                     f"{_sizes(r['state_dims']):<16} {r['total_state']:>6} {r['train_time_s']:>10.1f}s {s:>8}")
    if "compressed" in runs:
        r = runs["compressed"]
        lines.append("")
        lines.append(f"phases of (2) ({results['steps']} steps, cuts at steps {results['cut_steps']}):")
        for p in r["phases"]:
            lines.append(f"  steps {p['start_step']:>6}-{p['end_step']:<6} state {_sizes(p['state_dims']):<20} "
                         f"{p['time_s']:>8.1f}s")
        lines.append(f"  compress_ calls: {len(r['cuts'])}, {r['compress_time_s']:.2f}s in total (included above)")
    if results.get("comparisons"):
        lines.append("")
        lines.append("differences on the same test examples (McNemar's exact test; inside the noise: p >= 0.05):")
        names = {"baseline": "(1)", "compressed": "(2)", "scratch": "(3)"}
        for key, c in results["comparisons"].items():
            a, b = key.split("-")
            lines.append(f"  {names[a]} - {names[b]}: {_verdict(c)}")
    if results.get("step_time_interleaved_ms"):
        ms, ratio = results["step_time_interleaved_ms"], results["step_speedup_interleaved"]
        lines.append("")
        lines.append("step time at the final size, the runs' models timed in turn (the only speed figure that is "
                     "valid on a shared machine):")
        lines.append("  " + ", ".join(f"{RUN_TITLES[name].split(' ')[0]} {ms[name]:.1f} ms ({ratio[name]:.2f}x)"
                                      for name in ms))
    if results.get("targets"):
        lines.append("")
        t = results["targets"]
        lines.append("targets:")

        def verdict(x, why):
            if not x.get("decided", True):
                return f"not decided ({why})"
            return "holds" if x["met"] else "does not hold"

        if "compressed_within_1pt_of_baseline" in t:
            x = t["compressed_within_1pt_of_baseline"]
            lines.append(f"  (2) within 1 point of (1): {verdict(x, 'the interval contains 1 point')}; (2) - (1) = "
                         f"{-x['gap_points']:+.2f} points")
        if "compressed_beats_scratch" in t:
            x = t["compressed_beats_scratch"]
            lines.append(f"  (2) better than (3): {verdict(x, 'the difference is inside the noise')}; (2) - (3) = "
                         f"{x['gain_points']:+.2f} points")
        if "compressed_2x_faster_than_baseline" in t:
            x = t["compressed_2x_faster_than_baseline"]
            if x.get("estimate") == "interleaved step times":
                lines.append(f"  (2) at least 2x faster than (1): {verdict(x, '')}; {x['speedup']:.2f}x, estimated from "
                             "the interleaved step times (steps before the last cut at full size, cuts included; "
                             f"the runs' wall clocks, {x['wall_clock_speedup']:.2f}x, are not valid on a shared machine)")
            else:
                lines.append(f"  (2) at least 2x faster than (1): {verdict(x, 'no interleaved step times')}; "
                             f"wall clock {x['speedup']:.2f}x")
    lines.append("")
    lines.append("one seed is one sample: `lti-reduce sweep` repeats this over seeds and tolerances.")
    return "\n".join(lines)


def plot_axes(figsize=(6.4, 4.2)):
    """``(figure, axes)`` of one panel on matplotlib's Agg canvas (no display, no global backend), or
    ``None`` when matplotlib is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


_COLORS = {"baseline": "tab:blue", "compressed": "tab:red", "scratch": "tab:green"}


def save_plots(results: dict, out: Path) -> dict:
    """Write ``hsv_spectra.png``, ``state_size.png`` and ``accuracy_vs_state.png``; return their paths.

    Uses matplotlib's object-oriented API with the Agg canvas (no display, no global
    backend change). Returns ``{}`` if matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        return {}
    out = Path(out)
    files = {}

    def save(fig, name):
        FigureCanvasAgg(fig)
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        files[name.removesuffix(".png")] = str(out / name)

    cuts = results["runs"].get("compressed", {}).get("cuts", [])
    if cuts:
        save(_hsv_spectra_figure(cuts, results["config"]["tol"]), "hsv_spectra.png")
    save(_state_size_figure(results), "state_size.png")
    save(_accuracy_vs_state_figure(results), "accuracy_vs_state.png")
    return files


def _hsv_spectra_figure(cuts: list, tol: float):
    """One panel per layer: its normalized HSVs at each cut, the kept order dashed."""
    from matplotlib.figure import Figure

    n_layers = len(cuts[0]["layers"])
    cols = min(n_layers, 4)
    rows = math.ceil(n_layers / cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    cmap = __import__("matplotlib").colormaps["viridis"]
    for li in range(n_layers):
        ax = axes[li]
        for ci, cut in enumerate(cuts):
            layer = cut["layers"][li]
            h = np.asarray(layer["hsv"])
            h = h / h[0] if len(h) and h[0] > 0 else h
            color = cmap(ci / max(1, len(cuts) - 1))
            ax.semilogy(np.arange(1, len(h) + 1), np.maximum(h, 1e-16), color=color,
                        label=f"step {cut['step']}: {layer['before']}->{layer['after']}")
            if layer["compressed"]:
                ax.axvline(2 * layer["after"], color=color, lw=0.8, ls="--")
        ax.set_title(cuts[0]["layers"][li]["name"], fontsize=9)
        ax.set_xlabel("balanced state (real order)")
        ax.set_ylabel("HSV / max HSV")
        ax.legend(fontsize=7, loc="upper right")
    for ax in axes[n_layers:]:
        ax.set_visible(False)
    fig.suptitle(f"Hankel singular values at each cut (tol={tol:g}; dashed: kept order)")
    return fig


def _wall_clock(r: dict, n: int) -> np.ndarray:
    """Wall-clock time at each of the ``n`` steps of run ``r``: each phase's time spread evenly over its steps."""
    t = np.zeros(n)
    for p in r["phases"]:
        a, b = p["start_step"], p["end_step"]
        if b > a:
            offset = t[a - 1] if a > 0 else 0.0
            t[a:b] = offset + p["time_s"] * (np.arange(1, b - a + 1) / (b - a))
    return t


def _state_size_figure(results: dict):
    """Total state size against the training step, and the training loss against wall-clock time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax_state, ax_loss = fig.subplots(1, 2)
    for name, r in results["runs"].items():
        history = r["state_history"] + [[r["steps"], r["state_dims"]]]
        steps_ = [h[0] for h in history]
        totals = [sum(h[1]) for h in history]
        ax_state.step(steps_, totals, where="post", color=_COLORS[name], label=RUN_TITLES[name])
        loss = np.asarray(r["loss"])
        k = max(1, len(loss) // 100)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        t = _wall_clock(r, len(loss))
        ax_loss.plot(t[k - 1:], smooth, color=_COLORS[name], label=RUN_TITLES[name])
    for c in results.get("cut_steps", []):
        ax_state.axvline(c, color="0.8", lw=0.8, zorder=0)
    ax_state.set_yscale("log")
    ax_state.set_xlabel("training step")
    ax_state.set_ylabel("total state size (complex modes)")
    ax_state.set_title("state size over training")
    ax_state.legend(fontsize=8)
    ax_loss.set_xlabel("wall-clock training time (s)")
    ax_loss.set_ylabel("training loss (moving average)")
    ax_loss.set_title("loss against time")
    ax_loss.legend(fontsize=8)
    return fig


def _accuracy_vs_state_figure(results: dict):
    """Each run's test accuracy against its total state size."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for name, r in results["runs"].items():
        ax.scatter([r["total_state"]], [100 * r["test_accuracy"]], color=_COLORS[name], s=60, label=RUN_TITLES[name],
                   marker="o" if name != "scratch" else "s", zorder=3)
        ax.annotate(f"{100 * r['test_accuracy']:.1f}%, {r['train_time_s']:.0f}s", (r["total_state"],
                    100 * r["test_accuracy"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("total state size (complex modes, all layers)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results['dataset']['name']}: accuracy vs state size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
