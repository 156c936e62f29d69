"""What a cut reports: :class:`LayerReport` per layer, :class:`CompressionReport` for the call, and its table.

Also what a report says besides its numbers (why a layer was not cut, what a column holds), shared by
:func:`adapters.torch.compress_` and :func:`adapters.torch.compress_selective_`, so both entry points print one
table with the same labels and both say when the ``min_shrink`` gate held a requested cut back.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["CompressionReport", "LayerReport", "gate_lines", "selective_legend", "warn_if_gated"]


@dataclass
class LayerReport:
    """What happened to one layer in one :func:`compress_` call.

    Attributes
    ----------
    name : str
        Qualified module name.
    before, after : int
        ``state_dim`` before and after (equal if the layer was not cut).
    order_before, order_after : int
        Order of the layer's map as an LTI system (``2 * state_dim`` for a real-output
        layer with complex modes) before the cut and of the kept balanced part (per channel
        for a layer of independent channels).
    hsv : numpy.ndarray, shape (order_before,) or (channels, order_before)
        Hankel singular values of the layer's map before the cut, descending (per channel).
    energy_kept : float
        Fraction of the HSV sum carried by the kept states (the worst channel's).
    error_bound : float
        A-priori bound on the H-infinity norm of the change of the layer's map: ``2 * sum(discarded
        HSVs)`` plus the budget of the real-mode fix of a layer that makes real modes trainable
        (:meth:`adapters.torch.LRU.load_system_`); the largest over channels (0 if not cut).
    compressed : bool
        Whether the layer was cut.
    note : str
        Why a layer was not cut (e.g. the ``min_shrink`` gate).
    method : {"balanced_truncation", "state_selection"}
        How the layer was reduced: balanced truncation of its LTI map, or (selective layers such as
        :class:`adapters.torch.SelectiveSSM`) a selection of states by calibrated HSVs.
    gain : float or None
        H-infinity norm of the layer's map before the cut (largest over channels); ``None`` for a
        selective layer, whose map is not LTI.
    error : float or None
        H-infinity norm of the change ``G - G_r`` of the layer's map, computed a posteriori from the
        layer's ``to_system()`` after loading, so every re-parameterization the layer makes while
        loading is inside it (largest over channels; 0 if not cut). It satisfies
        ``hsv_lower - (fix budget) <= error <= error_bound``. For a selective layer, whose map is not
        LTI, it is the measured relative output change ``||y - y_cut|| / ||y||`` on held-out (or
        calibration) data (``detail.error_data`` says which), and ``error_bound`` and ``hsv_lower``
        are NaN: no bound exists.
    hsv_lower : float
        ``sigma_{r+1}`` (largest over channels): no map of the reduced order is closer to the layer's in
        the H-infinity norm (0 if not cut).
    channels : int
        Number of independent channels of the layer's system (1 for an unbatched system).
    detail : object or None
        The :class:`adapters.torch.SelectiveLayerReport` of a selective layer.
    hinf_method : {"search", "level-set"} or None
        How ``gain`` and ``error`` were computed (``compress_``'s ``hinf_method``); ``None`` before
        they are (``certify="output"`` until :meth:`CompressionReport.certify_hinf`, ``certify="lazy"``)
        or when they are not (``certify=False``, a selective layer).
    output_change : float or None
        What the cut did to the layer on real data: ``||y_cut - y||_F / ||y||_F``, the layer's output
        after against before the cut on the inputs it really sees (its last input batch, or what it
        receives from ``calibration_inputs=``; a few sequences of it), measured directly (0 if not cut;
        ``None`` if no input is known or ``certify=False``).
    output_bound : float or None
        The a-priori bound on ``output_change`` on the same inputs: ``error_bound * ||u||_F / ||y||_F``
        (from ``||y_cut - y|| <= ||G - G_r||_inf ||u||`` for a causal map started at rest), so
        ``output_change <= output_bound``; ``None`` where ``output_change`` is.
    output_inputs : str
        Which inputs ``output_change`` was measured on: ``"last batch"``, ``"calibration_inputs"``, or
        ``""`` (not measured).
    """

    name: str
    before: int
    after: int
    order_before: int
    order_after: int
    hsv: np.ndarray = field(repr=False)
    energy_kept: float
    error_bound: float
    compressed: bool
    note: str = ""
    method: str = "balanced_truncation"
    hsv_lower: float = 0.0
    channels: int = 1
    detail: object = field(default=None, repr=False)
    hinf_method: str | None = None
    output_change: float | None = None
    output_bound: float | None = None
    output_inputs: str = ""

    def __post_init__(self):
        self._gain, self._error, self._pending = None, None, None
        self._no_input = False  # cut, but no input was known to measure output_change on (the table names it)

    def _resolve_lazy(self):
        if self._pending is not None and self._pending.auto:
            self._pending.resolve()

    @property
    def gain(self) -> float | None:
        """H-infinity norm of the layer's map before the cut (see the class attributes)."""
        self._resolve_lazy()
        return self._gain

    @gain.setter
    def gain(self, value):
        self._gain = value

    @property
    def error(self) -> float | None:
        """H-infinity norm of the change of the layer's map (see the class attributes)."""
        self._resolve_lazy()
        return self._error

    @error.setter
    def error(self, value):
        self._error = value

    @property
    def relative_error(self) -> float | None:
        """``error / gain`` (``None`` when either is unknown, 0 for a zero map)."""
        if self.error is None or self.gain is None:
            return None
        return self.error / self.gain if self.gain > 0 else 0.0

    @property
    def relative_error_bound(self) -> float | None:
        """``error_bound / gain`` (``None`` when the gain is unknown)."""
        if self.gain is None:
            return None
        return self.error_bound / self.gain if self.gain > 0 else 0.0


@dataclass
class CompressionReport:
    """Per-layer results of a :func:`compress_` call; ``print(report)`` shows a table.

    Parameters
    ----------
    layers : list of LayerReport
        One entry per compressible layer, in the order of ``model.named_modules()`` (selective
        layers last).
    rewarm_steps : int
        Optimizer steps over which the updates of the parameters this call re-based ramp up again
        (``compress_(rewarm_steps=)``); 0 when nothing was cut, no optimizer was given, or the ramp
        was turned off.

    Examples
    --------
    >>> import torch, adapters.torch as at
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(at.LRU(4, 16), at.LRU(4, 16))
    >>> report = at.compress_(model, rank=6, optimizer=None)
    >>> report.state_before, [x.name for x in report]
    (32, ['0', '1'])
    >>> report.state_after == sum(x.after for x in report) <= 12, report["1"].after <= 6
    (True, True)
    """

    layers: list[LayerReport]
    rewarm_steps: int = 0

    def __iter__(self):
        """Iterate over the :class:`LayerReport` entries (``for x in report``)."""
        return iter(self.layers)

    def __len__(self) -> int:
        """Number of layer entries."""
        return len(self.layers)

    def __getitem__(self, name: str) -> LayerReport:
        """The entry of the layer named ``name`` (its name in ``model.named_modules()``).

        Raises
        ------
        KeyError
            No layer of that name; the message lists the names there are.
        """
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in this report; layers: {[x.name for x in self.layers]}")

    @property
    def compressed(self) -> bool:
        """Whether any layer was cut."""
        return any(x.compressed for x in self.layers)

    @property
    def state_before(self) -> int:
        """Total ``state_dim`` over the layers before the call."""
        return sum(x.before for x in self.layers)

    @property
    def state_after(self) -> int:
        """Total ``state_dim`` over the layers after the call."""
        return sum(x.after for x in self.layers)

    def to_dict(self) -> dict:
        """A JSON-serializable summary.

        Returns
        -------
        dict
            ``{"layers": [...], "state_before": int, "state_after": int, "rewarm_steps": int}``; each
            layer entry holds every
            :class:`LayerReport` field (arrays as lists), ``gain`` and ``error`` (lazy certificates are
            computed here), ``relative_error`` and ``relative_error_bound``.
        """
        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, np.generic):
                return v.item()
            if hasattr(v, "__dataclass_fields__"):
                return {k: plain(w) for k, w in v.__dict__.items()}
            return v

        layers = []
        for x in self.layers:
            gain, error = x.gain, x.error  # resolves lazy certificates (and sets hinf_method) first
            d = {f.name: plain(getattr(x, f.name)) for f in fields(x)}
            d["gain"], d["error"] = gain, error
            d["relative_error"], d["relative_error_bound"] = x.relative_error, x.relative_error_bound
            layers.append(d)
        return {"layers": layers, "state_before": self.state_before, "state_after": self.state_after,
                "rewarm_steps": self.rewarm_steps}

    def certify_hinf(self, *, progress: bool = True) -> "CompressionReport":
        """Compute every LTI layer's H-infinity ``gain`` and ``error`` now (the worst case over all inputs).

        The maps before and right after the cut were stored by :func:`compress_` (detached copies), so
        the figures are those of the cut whatever the layers did since. One batched
        :func:`lti_reduce.hinf_norm` call per group of equal-shaped maps, in torch on the layers' device,
        with ``compress_``'s ``hinf_rtol`` and ``hinf_method``. Costs far more than the cut for layers of a
        few hundred modes (``benchmarks/bench_compress.py``); shows progress after 2 s unless
        ``progress=False``.

        Returns
        -------
        CompressionReport
            ``self``, with ``gain``, ``error``, ``relative_error`` and ``relative_error_bound`` set.

        Raises
        ------
        ValueError
            The report was made with ``certify=False``: nothing was stored to certify.
        """
        pending = {id(x._pending): x._pending for x in self.layers if x._pending is not None}
        if not pending and any(x.method == "balanced_truncation" and x._gain is None for x in self.layers):
            raise ValueError("this report was made with compress_(certify=False), which stores nothing to certify; "
                             "call compress_ with certify='output' (the default) to certify on request, or "
                             "certify='hinf' to compute the H-infinity figures during the cut.")
        for p in pending.values():
            p.resolve(progress=progress)
        return self

    def __str__(self) -> str:
        return report_table(self)


def _selective_entry(x) -> LayerReport:
    """A :class:`LayerReport` for a selective layer's :class:`SelectiveLayerReport`."""
    entry = LayerReport(x.name, x.before, x.after, x.before, x.after, np.asarray(x.scores), float(x.energy_kept),
                        math.nan, bool(x.compressed), x.note, method="state_selection", hsv_lower=math.nan, detail=x)
    entry.error = float(x.error)  # measured relative output change (see SelectiveLayerReport); no bound exists
    entry.output_change, entry.output_inputs = float(x.error), str(getattr(x, "error_data", "") or "")
    return entry


# ----------------------------------------------------------------------------- the table


def _ratio(v, width: int, vacuous: bool = False) -> str:
    if v is None:
        return f"{'-':>{width}}"
    if vacuous and v >= 1.0:
        return f"{'vacuous':>{width}}"
    return format(v, f"{width}.3g")


def report_table(report) -> str:
    """The text of ``print(report)`` (:class:`adapters.torch.CompressionReport`).

    Never computes anything expensive: the H-infinity columns appear when those figures exist (or
    ``certify="lazy"`` asked for them to be computed on first read).
    """
    hinf = any(x._gain is not None or (x._pending is not None and x._pending.auto) for x in report.layers)
    head = (f"{'layer':<24} {'method':>6} {'state':>9} {'energy kept':>11} {'out change':>10} "
            f"{'out bound':>10}")
    if hinf:
        head += f" {'gain':>10} {'error':>10} {'err/gain':>9} {'bound/gain':>10}"
    head += "  note"
    rows = [head, "-" * len(head)]
    vacuous = loose = False
    for x in report.layers:
        state = f"{x.before}->{x.after}" if x.compressed else f"{x.before}"
        method = "BT" if x.method == "balanced_truncation" else "select"
        bound = x.output_bound if x.compressed else None
        row = (f"{x.name or '<model>':<24} {method:>6} {state:>9} {x.energy_kept:>11.6f} "
               f"{_ratio(x.output_change, 10)} {_ratio(bound, 10)}")
        loose |= bound is not None and bound > 1.0
        if hinf:
            rel_bound = x.relative_error_bound if x.compressed else None
            vacuous |= rel_bound is not None and rel_bound >= 1.0
            gain = "-" if x.gain is None else format(x.gain, ".4g")
            error = "-" if x.error is None else format(x.error, ".4g")
            row += f" {gain:>10} {error:>10} {_ratio(x.relative_error, 9)} {_ratio(rel_bound, 10, True)}"
        rows.append(f"{row}  {x.note}")
    rows.append(f"{'total':<24} {'':>6} {f'{report.state_before}->{report.state_after}':>9}")
    rows += selective_legend(report.layers) + gate_lines(report.layers)
    sources = sorted({x.output_inputs for x in report.layers if x.output_inputs})
    if sources:
        bt = any(x.method == "balanced_truncation" for x in report.layers)
        rows.append(f"out change: ||y_cut - y|| / ||y|| of each layer's output on its {' / '.join(sources)} "
                    "(measured)" + ("; out bound: the a-priori bound on it, 2 sum(dropped HSVs) ||u|| / ||y||"
                                    if bt else ""))
    if any(x.compressed and getattr(x, "channels", 1) > 1 and x.method == "balanced_truncation" for x in report.layers):
        rows.append("energy kept of a layer of independent channels (S4D): its worst channel's; the layer's order "
                    "keeps 1 - tol of the channels' summed energy, so one channel may keep less")
    unmeasured = [repr(x.name or "<model>") for x in report.layers if x._no_input]
    if unmeasured:
        rows.append(f"out change not measured for {', '.join(unmeasured)}: no input to measure on (a layer keeps its "
                    "last input by calling adapters.torch.layers.remember_input_(self, u) in forward, as LRU, S5 and "
                    "S4D do); pass calibration_inputs= to compress_ to measure it")
    if loose:
        rows.append("out bound > 1: on these inputs the a-priori bound does not exclude a change larger than the "
                    "output itself; out change is what the cut did")
    if vacuous:
        rows.append("vacuous: the a-priori bound is at least the map's gain, so it guarantees nothing")
    if not hinf and any(x._pending is not None for x in report.layers):
        rows.append("H-infinity gain and error of each map: report.certify_hinf()")
    if report.rewarm_steps > 1:
        rows.append(f"optimizer: the cut parameters' state was reset; their updates ramp up over the next "
                    f"{report.rewarm_steps} steps")
    return "\n".join(rows)


# ---------------------------------------------------------------------- notes beside the table


_GATE = "gate:"


def _gated(layers) -> list:
    return [x for x in layers if str(getattr(x, "note", "")).startswith(_GATE)]


def gate_lines(layers, min_shrink=None) -> list[str]:
    """One line naming the layers the ``min_shrink`` gate held back and how to cut them anyway (or none)."""
    gated = _gated(layers)
    if not gated:
        return []
    names = ", ".join(repr(x.name or "<model>") for x in gated[:4]) + (" ..." if len(gated) > 4 else "")
    where = f"min_shrink={min_shrink:g}" if min_shrink is not None else "min_shrink"
    return [f"not cut: {len(gated)} layer(s) ({names}) would shrink by less than {where}; the request left them "
            f"as they were. Pass a larger tol= (or rank=), or min_shrink=0.0 to cut whatever the rule allows."]


def warn_if_gated(layers, min_shrink, stacklevel: int = 3) -> None:
    """A :class:`UserWarning` when the ``min_shrink`` gate held back a cut the rule asked for.

    ``stacklevel`` counts from this function: 3 points at the caller of the entry point that calls it.
    """
    lines = gate_lines(layers, min_shrink)
    if lines:
        warnings.warn(lines[0], UserWarning, stacklevel=stacklevel)


def selective_legend(layers) -> list[str]:
    """What the table's columns hold for state-selection rows (a score share and a measured change)."""
    details = [getattr(x, "detail", None) or x for x in layers if getattr(x, "method", "") == "state_selection"]
    if not details:
        return []
    rankings = sorted({getattr(d, "ranking", "") for d in details} - {""})
    data = sorted({getattr(d, "error_data", "") for d in details} - {""})
    where = "/".join(data) + " inputs" if data else "its inputs (not measured: nothing was cut)"
    return [f"select rows: 'energy kept' is the share of the {'/'.join(rankings) or 'ranking'} score the kept "
            "states carry (a score, not Hankel energy); 'out change' is the measured relative output change "
            f"||y - y_cut|| / ||y|| of the layer on {where} (a measurement; an input-dependent layer has no "
            "gain and no bound)."]
