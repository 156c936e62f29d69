"""The state selection: cutting the shared state size ``d_state`` of selective (Mamba-style) layers.

Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv 2312.00752).

:func:`compress_selective_` cuts the state size of every selective layer of a model: our block
(:class:`~adapters.torch.SelectiveSSM`, :mod:`adapters.torch.layers.selective`), and Hugging Face transformers'
``MambaMixer``, ``FalconMambaMixer`` and ``Mamba2Mixer`` (:mod:`adapters.torch.integrations.hf.mamba`).

*Why a state selection and not balanced truncation.* ``Delta``, ``B`` and ``C`` depend on the input, so the
block is not an LTI system, and balanced truncation would mix states: a reduced state would be a combination
``W^T h`` of all states, different in every channel. The block cannot represent that: ``B_t`` and ``C_t`` come
from projections shared by all channels and ``Delta_t`` multiplies ``A`` elementwise, so a mixed basis would
have to be re-mixed at every step with an input-dependent matrix. What it *can* represent is keeping a subset
of its states, the same subset in every channel: drop rows of ``W_B`` and ``W_C`` and columns of ``A_log``.
This is exact surgery (``A`` is diagonal, so the kept states compute exactly what they computed before); the
only approximation is which states to drop.

*Ranking* (:func:`selective_state_scores`). Over calibration inputs the exact selective scan is run and each
state's own term in the output, ``c_{t,d,n} = C_{t,n} h_{t,d,n}``, is pushed through the layer's output map
``J`` (here ``y -> out_proj(y * silu(z))``, linear; for Mamba2 the gated RMS norm, linearized at the full
output). The score of state ``n`` is the energy ``sum_{b,t} ||J c_n||^2`` it puts into the layer's output
(``"output_energy"``, the default). For a linear output map this is exactly the squared output change of
removing that state alone on the calibration data, so it ranks states by the quantity a cut changes.
Alternatives, kept for comparison: ``"gramian"``, ``sqrt(P_nn Q_nn)`` with the empirical Gramian
diagonals of the time-varying system (state second moment ``P_nn = E sum_d h^2`` and output sensitivity
``Q_nn = E C_n^2 ||J_d||^2``; Lall, Marsden & Glavaski 2002), and ``"averaged_hsv"``, the per-state Hankel
singular values ``|B_avg C_avg| / (1 - lam^2)`` of the time-averaged LTI system (:meth:`SelectiveSSM.to_system`),
summed over channels. ``benchmarks/bench_selective_ranking.py`` measures each against the leave-one-state-out
output change on held-out data (:func:`leave_one_state_out`).

*How many states* (``tol``). Each layer keeps the fewest top-ranked states whose removal changes its state
path's output on the calibration inputs by at most ``tol``: ``||out - out_cut|| / ||out - out_0|| <= tol``,
with ``out_0`` the output without any state (the skip ``D x`` only). Layers sharing a Hugging Face
configuration keep one common size (:func:`compress_selective_`).

*What the report's error is.* A measurement, not a bound: ``error = ||out - out_cut||_F / ||out||_F`` of each
layer's output, computed exactly on held-out inputs when they are given (else on the calibration inputs).
No bound on the selective block is claimed: its ``Delta``, ``B``, ``C`` vary in time and are correlated.

The modules
-----------
* ``kinds``: the kinds of selective layer (:class:`~adapters.torch.SelectiveSSM`; an integration registers
  its own, as :mod:`adapters.torch.integrations.hf.mamba` does for the Hugging Face mixers) and finding them;
* ``analysis``: each layer's recorded inputs, the state scores (:func:`selective_state_scores`) and the
  change of the ``tol`` rule;
* ``measure``: the measured change of a cut (:func:`measure_selective_cut`, :func:`leave_one_state_out`);
* ``apply``: the swap, parameters and optimizer state cut to the kept states, undone on any failure;
* ``report``: :class:`SelectiveLayerReport`, :class:`SelectiveCompressionReport`;
* ``selection``: :func:`compress_selective_`, its steps called in order.
"""

from .analysis import RANKINGS, selective_state_scores
from .measure import CutMeasurement, leave_one_state_out, measure_selective_cut
from .report import SelectiveCompressionReport, SelectiveLayerReport
from .selection import compress_selective_

__all__ = [
    "RANKINGS",
    "CutMeasurement",
    "SelectiveCompressionReport",
    "SelectiveLayerReport",
    "compress_selective_",
    "leave_one_state_out",
    "measure_selective_cut",
    "selective_state_scores",
]
