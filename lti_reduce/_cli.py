"""The ``lti-reduce`` command: a thin shell over the library.

``lti-reduce reduce FILE (--rank R | --tol T | --max-error E) [--time discrete|continuous]
[--dt DT [--discretize bilinear|zoh]] [--method truncate|spa] [--out OUT.npz] [--plot PNG]``
    Reads a state-space model ``(A, B, C[, D][, dt])`` from ``.npz`` or MATLAB ``.mat``, optionally
    discretizes it (:func:`lti_reduce.discretize`) or takes it in continuous time, reduces it with
    :func:`lti_reduce.balanced_truncation`, prints the Hankel singular values and the error
    bound, and writes the reduced model. Needs only numpy and scipy (matplotlib for
    ``--plot``).

Other subcommands come from installed packages through the ``lti_reduce.commands``
entry-point group: each entry point names a function ``register(subparsers)`` that adds its
parser (with ``set_defaults(func=...)``; the function returns the exit status and raises
:class:`UserError` for a mistake the user can fix). The PyTorch adapter registers ``train``
and ``sweep`` (:mod:`adapters.torch.experiment.cli`). An entry point is imported only when its
command runs, so ``reduce`` never imports torch; this module never imports the adapter.

Errors a user can fix print one line ``lti-reduce: error: ...`` (what went wrong and what
to do) on stderr and exit with status 1 (2 for a malformed command line); anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import LTIInputError

__all__ = ["COMMAND_GROUP", "UserError", "main"]

PROG = "lti-reduce"

#: The entry-point group other packages register subcommands in.
COMMAND_GROUP = "lti_reduce.commands"

# Subcommands the project's own PyTorch adapter provides, for a clear message when it is not installed,
# with the one-line help ``lti-reduce --help`` shows without importing them (and torch).
_ADAPTER_COMMANDS = ("train", "sweep")
_ADAPTER_HELP = {
    "train": "the main job: train an SSM on MNIST-1D full size, compressed in training, and small from scratch",
    "sweep": "the comparison of 'train' over tolerances and seeds, with uncertainties (resumable)",
}


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit status 1."""


class _UsageError(Exception):
    """A malformed command line; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one ``--help`` away)."""

    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------------- parser
def build_parser(commands: dict | None = None, stubs: dict | None = None) -> argparse.ArgumentParser:
    """The parser: ``reduce``, then ``commands`` (name -> ``register(subparsers)``), then one-line ``stubs``."""
    parser = _Parser(prog=PROG, description="Balanced truncation of LTI systems (discrete or continuous time: "
                     "'reduce --time continuous'), and in-training compression of state-space models.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    names = ["reduce", *(commands or {}), *(stubs or {})]
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(names) + "}", parser_class=_Parser)

    red = sub.add_parser("reduce", help="reduce a state-space model read from .npz or .mat",
                         description="Balanced truncation of a model (A, B, C, D) read from a .npz file or a MATLAB "
                         ".mat file: discrete time by default (or the file's dt/Ts); --time continuous reduces a "
                         "continuous-time model as such, --dt discretizes it first.")
    red.add_argument("file", metavar="FILE", help=".npz with arrays A, B, C (and optional D), or .mat with the same "
                     "variables (sparse matrices are converted to dense)")
    size = red.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=int, metavar="R", help="reduced order")
    size.add_argument("--tol", type=_open_unit_float, metavar="T",
                      help="fraction of the Hankel-singular-value sum that may be discarded, in (0, 1)")
    size.add_argument("--max-error", type=_positive_float, metavar="E", dest="max_error",
                      help="the smallest order whose a-priori error bound 2*sum(sigma_i, i > r) is at most E "
                           "(MATLAB's MaxError; order 0, the static gain D, allowed)")
    red.add_argument("--time", choices=("discrete", "continuous"), default=None,
                     help="the model's time base (default: discrete, or the file's dt/Ts when it has one: 0 means "
                          "continuous); continuous models are reduced in continuous time")
    red.add_argument("--dt", type=_positive_float, metavar="DT",
                     help="the model is continuous-time: discretize it with step DT first (instead of --time "
                          "continuous)")
    red.add_argument("--discretize", choices=("bilinear", "zoh"), default="bilinear",
                     help="discretization for --dt (default: bilinear, which keeps the HSVs and the H-inf norm)")
    red.add_argument("--method", choices=("truncate", "spa"), default="truncate",
                     help="balanced truncation or singular perturbation approximation (default: truncate)")
    red.add_argument("--out", metavar="OUT.npz", help="where to write the reduced model "
                     "(default: FILE's name with _r<R>.npz, in the current directory)")
    red.add_argument("--plot", metavar="PNG", help="save a figure of the HSVs and the error bound for every order")
    red.add_argument("--unstable", choices=("error", "split"), default="error",
                     help="a model with unstable poles: refuse it (error, default) or keep its unstable part "
                          "exactly and reduce the stable part (split; --rank counts the whole order)")
    red.set_defaults(func=_cmd_reduce)

    for name, register in (commands or {}).items():
        register(sub)
    for name, entry in (stubs or {}).items():
        text = _ADAPTER_HELP.get(name) if entry.value.startswith("adapters.torch.") else None
        sub.add_parser(name, help=text or f"a command of {entry.value.split(':')[0]} (see '{PROG} {name} --help')",
                       add_help=False)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _open_unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1 (e.g. 0.05), got {text!r}")
    return value


# --------------------------------------------------------------------------------------------------- reduce
def _load_system(path: Path) -> dict:
    """``{"A": ..., "B": ..., "C": ..., "D": ... or None}`` as dense float/complex arrays."""
    import numpy as np

    if not path.exists():
        raise UserError(f"'{path}' does not exist; check the path.")
    if not path.is_file():
        raise UserError(f"'{path}' is not a file; give a .npz or .mat file.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                raw = {k: f[k] for k in f.files}
        except Exception as exc:  # zipfile, pickle and format errors all mean "not a readable .npz"
            raise UserError(f"cannot read '{path}' as a .npz archive ({_short(exc)}); write it with "
                            "numpy.savez(path, A=A, B=B, C=C, D=D).") from None
    elif suffix == ".mat":
        import scipy.io

        try:
            raw = scipy.io.loadmat(path)
        except NotImplementedError:
            raise UserError(f"'{path}' is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in MATLAB "
                            "with save(file, 'A', 'B', 'C', 'D', '-v7').") from None
        except Exception as exc:
            raise UserError(f"cannot read '{path}' as a MATLAB .mat file ({_short(exc)}); save it with MATLAB's "
                            "save(file, 'A', 'B', 'C', 'D') or scipy.io.savemat.") from None
    else:
        raise UserError(f"'{path}' has an unknown extension '{path.suffix}'; give a .npz (A, B, C[, D]) or a MATLAB "
                        ".mat file.")
    found = sorted(k for k in raw if not k.startswith("__"))
    system = {"dt": None}
    for key in ("dt", "Ts"):
        if key in raw:
            value = np.asarray(raw[key])
            if value.size != 1 or not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all() \
                    or float(value.real.ravel()[0]) < 0:
                raise UserError(f"'{path}' holds {key} = {value!r}, which is not a sampling time; store a single "
                                "number >= 0 (0 for a continuous-time model) or leave it out.")
            system["dt"] = float(value.real.ravel()[0])
            break
    for name in ("A", "B", "C", "D"):
        value = raw.get(name, raw.get(name.lower()))
        if value is None:
            if name == "D":
                system["D"] = None
                continue
            raise UserError(f"'{path}' has no matrix {name} (found: {', '.join(found) or 'nothing'}); it needs A, B, C "
                            "and optionally D.")
        if hasattr(value, "toarray"):  # scipy.sparse (MATLAB sparse matrices)
            value = value.toarray()
        value = np.asarray(value)
        if value.dtype == object or not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise UserError(f"matrix {name} in '{path}' is not numeric (dtype {value.dtype}); store plain arrays.")
        if name == "D" and value.size == 0:
            system["D"] = None
            continue
        if value.ndim == 1:
            value = value[:, None] if name == "B" else value[None, :] if name == "C" else value
        if value.ndim != 2:
            raise UserError(f"matrix {name} in '{path}' must be 2-D, got shape {value.shape}.")
        system[name] = value.astype(np.complex128 if np.iscomplexobj(value) else np.float64)
    D = system["D"]
    p, m = system["C"].shape[0], system["B"].shape[1]
    if D is not None and D.size == 1 and D.shape != (p, m) and float(np.abs(D).max()) == 0.0:
        system["D"] = None  # MATLAB's "D = 0" for a MIMO model
    return system


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _format_values(values, per_line: int = 6) -> list[str]:
    lines = []
    for i in range(0, len(values), per_line):
        chunk = values[i:i + per_line]
        lines.append(f"  {i + 1:>4}: " + "  ".join(f"{v:.6e}" for v in chunk))
    return lines


def _cmd_reduce(args) -> int:
    import numpy as np

    import lti_reduce as lr

    path = Path(args.file)
    if args.out:  # checked before any work
        _check_parent(Path(args.out), "--out")
    if args.plot:
        _check_parent(Path(args.plot), "--plot")
        _matplotlib_figure()  # checked before any work, so a missing matplotlib does not leave half the output
    system = _load_system(path)
    A, B, C, D = system["A"], system["B"], system["C"], system["D"]
    n, m, p = A.shape[-1], B.shape[-1], C.shape[0]
    if n == 0:
        raise UserError(f"'{path}' holds a model with no states (A is 0 x 0): there is nothing to reduce; check that "
                        "the file holds the model you meant.")
    file_dt = system["dt"]
    time = args.time or ("continuous" if file_dt == 0.0 else "discrete")
    if args.dt is not None and args.time == "discrete":
        raise UserError("--dt DT discretizes a continuous-time model, but --time discrete says the model is already "
                        "discrete; drop one of them.")
    if args.dt is not None and file_dt:
        raise UserError(f"'{path}' is a discrete-time model (dt = {file_dt:g} in the file); --dt discretizes "
                        "continuous-time models only, so drop --dt.")
    if args.time == "continuous" and file_dt:
        raise UserError(f"'{path}' is a discrete-time model (dt = {file_dt:g} in the file), but --time continuous "
                        "was given; drop --time or fix the file.")
    out_dt = file_dt
    if args.dt is not None:
        A, B, C, D = lr.discretize(A, B, C, D, dt=args.dt, method=args.discretize)
        time_base = f"discretized from continuous time ({args.discretize}, dt={args.dt:g})"
        time, out_dt = "discrete", args.dt
    elif time == "continuous":
        time_base = "continuous time" + (" (dt = 0 in the file)" if file_dt == 0.0 else " (--time continuous)")
        out_dt = 0.0
    elif file_dt:
        time_base = f"discrete time, dt = {file_dt:g} (from the file)"
    else:
        time_base = "read as discrete time (give --time continuous or --dt DT for a continuous-time model)"
    if args.rank is not None and args.rank > n:
        raise UserError(f"--rank {args.rank} exceeds the model's order n = {n}; give --rank between 1 and {n}.")
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", lr.OrderCappedWarning)
            result = lr.balanced_truncation(A, B, C, D, rank=args.rank, tol=args.tol, max_error=args.max_error,
                                            method=args.method, unstable=args.unstable,
                                            time=None if time == "discrete" else time)
    except lr.UnstableSystemError as exc:
        from .validate import CONTINUOUS_FIX, SPLIT_FIX

        text = str(exc).replace(SPLIT_FIX, "give --unstable split").replace(
            CONTINUOUS_FIX, "give --time continuous (or --dt DT to discretize it)")
        hint = ("" if args.dt is not None or time == "continuous" or "--time continuous" in text
                else " If this is a continuous-time model, give --time continuous (or --dt DT to discretize it).")
        raise UserError(f"{text}{hint}") from None
    for w in caught:
        if issubclass(w.category, lr.OrderCappedWarning):
            print(f"note: --rank {args.rank} is above the model's numerical order; reduced to {result.rank} "
                  "(the remaining states are uncontrollable or unobservable to working precision)")
    hsv = np.asarray(result.hsv, dtype=float)
    r = result.rank
    bound = float(result.error_bound)
    bounds = np.asarray(result.error_bounds(), dtype=float)

    print(f"model: {path.name}, n = {n} states, {m} input(s), {p} output(s); {time_base}")
    print(f"Hankel singular values ({len(hsv)}, descending):")
    for line in _format_values(hsv):
        print(line)
    lower = hsv[r] if r < len(hsv) else 0.0
    if args.rank is not None:
        how = f"rank {args.rank}"
    elif args.tol is not None:
        how = f"tol {args.tol:g} (keep {1 - args.tol:.4g} of the HSV sum)"
    else:
        how = f"max error {args.max_error:g}: the smallest order with bound <= {args.max_error:g}"
    print(f"reduced order r = {r} of {n} ({how}, method {args.method})")
    print(f"error bound: {lower:.6e} = sigma_(r+1) <= ||G - G_r||_inf <= 2 * sum(sigma_i, i > r) = {bound:.6e}")
    unstable = int(np.sum(np.isinf(hsv)))
    if unstable:
        print(f"{unstable} unstable state(s) (HSV inf) kept exactly; the bound is that of the stable part")
    finite = hsv[np.isfinite(hsv)]
    if finite.size and finite[0] > 0:
        part = "the stable part's" if unstable else "the"
        print(f"bound relative to {part} Hankel norm sigma_1: {bound / finite[0]:.3e}")

    out = Path(args.out) if args.out else Path.cwd() / f"{path.stem}_r{r}.npz"
    if out.suffix.lower() != ".npz":
        out = out.with_name(out.name + ".npz")
    arrays = {"A": np.asarray(result.A), "B": np.asarray(result.B), "C": np.asarray(result.C),
              "D": np.asarray(result.D), "hsv": hsv, "error_bound": np.asarray(bound), "rank": np.asarray(r),
              "method": np.asarray(args.method), "time": np.asarray(time)}
    if out_dt is not None:
        arrays["dt"] = np.asarray(out_dt)
    if args.dt is not None:
        arrays["discretization"] = np.asarray(args.discretize)
    try:
        np.savez(out, **arrays)
    except OSError as exc:
        raise UserError(f"cannot write '{out}' ({exc.strerror or exc}); choose another --out.") from None
    dt_text = "" if out_dt is None else f", dt = {out_dt:g}"
    print(f"wrote the reduced model (A, B, C, D, hsv, error_bound; time = {time}{dt_text}) to {out}")

    if args.plot:
        _plot_reduce(Path(args.plot), hsv, bounds, r, path.name)
        print(f"wrote {args.plot}")
    return 0


def _check_parent(path: Path, option: str) -> None:
    """Refuse a path whose directory does not exist (no directories are created on the user's behalf)."""
    if not path.parent.is_dir():
        raise UserError(f"the directory of {option} '{path}' does not exist ('{path.parent}'); create it first or "
                        f"choose another {option}.")


def _matplotlib_figure():
    """``(Figure, FigureCanvasAgg)`` from matplotlib, or a UserError saying how to get it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib (or drop --plot).") from None
    return Figure, FigureCanvasAgg


def _plot_reduce(path: Path, hsv, bounds, r: int, title: str) -> None:
    import numpy as np

    Figure, FigureCanvasAgg = _matplotlib_figure()
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax_h, ax_b = fig.subplots(1, 2)
    floor = max(float(hsv[0]) * 1e-17, np.finfo(float).tiny) if len(hsv) else 1e-300
    ax_h.semilogy(np.arange(1, len(hsv) + 1), np.maximum(hsv, floor), ".-", ms=3)
    ax_h.axvline(r + 0.5, color="tab:red", ls="--", lw=1, label=f"r = {r}")
    ax_h.set_xlabel("index i")
    ax_h.set_ylabel(r"Hankel singular value $\sigma_i$")
    ax_h.set_title(f"{title}: Hankel singular values")
    ax_h.legend()
    orders = np.arange(len(bounds))
    upper = np.maximum(bounds, floor)
    lower = np.maximum(np.append(hsv, 0.0), floor)
    ax_b.semilogy(orders, upper, label=r"upper bound $2\sum_{i>r}\sigma_i$")
    ax_b.semilogy(orders, lower, label=r"lower bound $\sigma_{r+1}$")
    ax_b.axvline(r, color="tab:red", ls="--", lw=1)
    ax_b.set_xlabel("reduced order r")
    ax_b.set_ylabel(r"$\|G - G_r\|_\infty$")
    ax_b.set_title("error bounds for every order")
    ax_b.legend(fontsize=8)
    try:
        fig.savefig(path, dpi=110)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot write the plot '{path}' ({_short(exc)}); give a writable .png path.") from None


# --------------------------------------------------------------------------------------------------- commands
def _entry_points() -> dict:
    """The installed ``lti_reduce.commands`` entry points by name (none is imported here)."""
    from importlib.metadata import entry_points

    try:
        found = entry_points(group=COMMAND_GROUP)
    except Exception:  # broken metadata of some other package must not break `reduce`
        return {}
    return {ep.name: ep for ep in found if ep.name != "reduce"}


def _load_command(name: str, entry) -> object:
    try:
        return entry.load()
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        hint = (" pip install 'lti-reduce[torch]' (or pip install torch)." if "torch" in str(missing) else
                f" reinstall the package that provides it ({entry.value.split(':')[0]}).")
        raise UserError(f"the {name} command cannot be loaded ({_short(exc)});{hint}") from None


def _first_command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


# --------------------------------------------------------------------------------------------------- main
def main(argv=None, *, commands: dict | None = None) -> int:
    """Entry point of the ``lti-reduce`` console script; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default ``sys.argv[1:]``).
    commands : dict, optional
        Extra subcommands, name -> ``register(subparsers)``, besides those of the
        ``lti_reduce.commands`` entry points (a package's own ``main`` passes its commands here).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        commands = dict(commands or {})
        found = {k: v for k, v in _entry_points().items() if k not in commands}
        wanted = _first_command(argv)
        if wanted in found:
            commands[wanted] = _load_command(wanted, found.pop(wanted))
        elif wanted in _ADAPTER_COMMANDS and wanted not in commands:
            raise UserError(f"the {wanted} command comes with the PyTorch adapter, which is not registered in this "
                            "installation: run pip install -e '.[torch]' in the project's checkout (it registers the "
                            f"{COMMAND_GROUP} entry points), or python -m adapters.torch.experiment {wanted} ...")
        parser = build_parser(commands, found)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return args.func(args)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except LTIInputError as exc:  # the library's input errors already say what to fix
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
