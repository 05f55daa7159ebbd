"""How the sparse engine multiplies one layer: the strategies and the cost model that picks one.

Every layer computes y = a W^T + b for a batch of inputs a, shape (B, N_in), whose rows
are mostly exact zeros (the previous layer's sparse activations). The weights are stored
as W^T, shape (N_in, N_out), row-major, so the weights that meet input unit j are the
contiguous row W^T[j]. Write nnz for the number of nonzero entries of a (over the whole
batch) and U for the *union*: the input units nonzero for at least one example.

Strategies (all exact; they differ only in the order of float32 additions):

- ``dense``  -- y = a W^T with BLAS: every weight, no skipping (B N_in N_out multiply-adds).
- ``gather`` -- per example, the rows of W^T of its own nonzero inputs:
  y[b] = sum_{j: a[b, j] != 0} a[b, j] W^T[j]; nnz N_out multiply-adds. Best for batch 1 and
  small batches; a row needed by several examples is read once per example.
- ``union``  -- the union's rows W^T[U] gathered into a dense block, then one BLAS product
  a[:, U] W^T[U]; B |U| N_out multiply-adds. Best when the examples share their nonzeros.
- ``csr``    -- the sparse-dense product CSR(a) W^T, blocked for cache reuse across the batch:
  output columns in tiles, input rows in blocks; each example adds only the rows it needs,
  while a block's rows stay in cache for the other examples; nnz N_out multiply-adds and each
  union row read from memory once. Best for larger batches.
- ``block``  -- the examples in groups of eight, each group against the rows of its own union,
  register-blocked (numba: :mod:`sparse_eoc.kernels.block`): every weight of those rows is
  read once for the group and multiplied into all its examples' sums, zeros included; at most
  lanes(B) |U| N_out multiply-adds (:func:`block_lanes`: a last group of 3 runs as 4), at the
  rate of the vector unit rather than the rate weights come from cache. Best for small batches
  whose examples share most of their rows.

``auto`` picks per layer and per call, from the measured nnz, |U| and the unions of the
``block`` groups, the strategy with the lowest predicted time under :class:`CostModel`; at
batch 1 it is always ``gather``, and up to :data:`SMALL_BATCH` examples ``dense`` where it is
cheaper than ``gather``, else the cheaper of ``gather`` (``csr`` for a layer larger than the
last-level cache) and ``block`` (see :func:`choose_strategy`).

The activation after each layer is coded as one of ``ACT_ONE_SIDED`` (relu_tau, crelu: the
threshold folded into the bias, then min(max(v, 0), m)), ``ACT_TWO_SIDED`` (st_tau, cst:
sign(v) min(max(|v| - tau, 0), m)) or ``ACT_IDENTITY`` (the readout); :func:`layer_activations`
gives each layer's code and parameters.

NumPy only: no torch, no numba. The numba kernels (:mod:`sparse_eoc.infer.kernels`) compile
:func:`choose_strategy` and its cost function from this module as they are (one copy of the
choice for both backends), and use the ``ACT_*`` codes defined here.
"""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, fields

import numpy as np

from sparse_eoc.activations import get_activation

__all__ = ["STRATEGIES", "STRATEGY_CHOICES", "SMALL_BATCH", "AUTO", "DENSE", "GATHER", "UNION", "CSR", "BLOCK",
           "BLOCK_GROUP", "BLOCK_MARGIN", "BLOCK_MIN_COLUMNS", "CostModel", "block_lanes",
           "choose_strategy", "strategy_code", "ACT_ONE_SIDED", "ACT_TWO_SIDED", "ACT_IDENTITY",
           "layer_activations", "flop_reduction"]

#: The strategy names, indexed by their integer code.
STRATEGIES = ("dense", "gather", "union", "csr", "block")
DENSE, GATHER, UNION, CSR, BLOCK = range(len(STRATEGIES))
#: Examples per group of the ``block`` strategy (:data:`sparse_eoc.kernels.block.GROUP`).
BLOCK_GROUP = 8
#: The narrowest layer (N_out) that ``auto`` gives ``block``: one 16-float vector per example.
BLOCK_MIN_COLUMNS = 16
#: Above SMALL_BATCH, ``auto`` gives ``block`` only where its predicted time is below this fraction
#: of the best other strategy's: ``block_mac`` was calibrated on small batches, and at width 1024
#: x 8, batch 64 (predicted 5 % apart from ``csr``) layers flipping between the two measured up to
#: 1.4x slower than either alone (a ``csr`` layer after a ``block`` one lists its input again).
BLOCK_MARGIN = 0.8
AUTO = -1
#: The largest batch that :func:`choose_strategy` gives ``gather``, ``block`` or ``dense`` only (``csr``
#: for a layer larger than ``CostModel.llc_bytes``), and that the numba engine splits, given more threads,
#: whatever its work (a larger batch is split once it has ``PARALLEL_MIN_MACS`` of work, see
#: ``sparse_eoc.infer.engine``) into parts of consecutive examples, each the fused kernel
#: (:func:`sparse_eoc.infer.kernels.forward_fused`) on its own thread: per-example gathers
#: measured faster than the blocked ``csr`` and ``union`` kernels at batches 4, 8 and 16 (widths
#: 300 x 100 and 1024 x 8, s = 0.85: 8-25 %, against the per-layer kernels of the time), slower at
#: 64 (width 300: ``union`` 6.6 ms against 8.6).
SMALL_BATCH = 16
#: What a ``strategy=`` argument accepts.
STRATEGY_CHOICES = ("auto", *STRATEGIES)
#: Activation kinds of the engine (module docstring): one-sided with the threshold folded
#: into the bias, two-sided, none (the readout).
ACT_ONE_SIDED, ACT_TWO_SIDED, ACT_IDENTITY = 0, 1, 2


def strategy_code(name: str) -> int:
    """The integer code of a strategy name (``auto`` -> -1).

    Raises:
        ValueError: for a name not in :data:`STRATEGY_CHOICES` (the message lists them).
    """
    if name == "auto":
        return AUTO
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGY_CHOICES)}, got strategy={name!r}")
    return STRATEGIES.index(name)


@dataclass(frozen=True)
class CostModel:
    """Predicted time of each strategy, as a sum of per-element costs (nanoseconds).

    The defaults are rough figures for one AVX2 core with ~10 GB/s of memory bandwidth;
    only their ratios matter. Per layer, with w = N_out::

        dense  = blas_mac B N_in w + mem N_in w
        gather = gather_mac nnz w + mem |U| w + reread (nnz - |U|) w
        union  = (copy + mem + blas_mac B) |U| w
        csr    = csr_mac nnz w + mem |U| w
        block  = block_mac lanes(B) / G R w + mem |U| w + reread' (R - |U|) w

    where ``reread = cached`` when the layer's W^T fits in ``cache_bytes`` (a row read
    again for another example is still in cache) and ``mem`` otherwise; for a small batch
    (at most :data:`SMALL_BATCH` examples) always ``cached``: its examples read their rows one
    after another, so a shared row was read moments before (for a large layer it comes from L3
    rather than L2, still not from memory). For ``block``, G = ceil(B / 8) groups, R the sum of
    the groups' unions (each group reads its own) and ``reread'`` = ``cached`` when W^T fits in
    ``llc_bytes``, else ``mem``.

    Attributes:
        mem: reading one float32 weight from main memory, > 0.
        cached: reading it again from cache, > 0.
        blas_mac: one multiply-add inside a BLAS matrix product, > 0.
        gather_mac: one multiply-add of the per-example row gather, > 0.
        csr_mac: one multiply-add of the blocked sparse-dense kernel, > 0.
        copy: copying one weight into the union's dense block, > 0.
        cache_bytes: cache that holds a re-read row (per-core L2), > 0.
        llc_bytes: the last-level cache, > 0: a small batch's layer whose W^T is larger runs
            ``csr`` rather than ``gather`` (its row blocks keep a shared row in cache while the
            examples take turns; each example's own gather re-reads it from memory: width 4096
            x 8 at batch 8, 14.1 ms against 16.8; at width 1024, W^T 4 MiB, the two are even).
        block_mac: one multiply-add of the register-blocked ``block`` kernel, zeros included, > 0.
            Calibrated at s = 0.85, one thread, interleaved with ONNX Runtime: ``block`` ran
            faster than gathers at batches 4-16 at widths 300, 1024 and 4096 (4096 x 8 at batch
            8: 10.0-10.7 ms against 16.0-16.4, and 13.6-13.9 for csr) and than ``union``/``csr``
            at width 300 and batch 64 (4.1-4.4 ms against 5.3-6.6); its line against a small
            batch's gather falls where the nonzeros fill about 30 % of the group's 8 |U| slots.
    """

    mem: float = 0.4
    cached: float = 0.05
    blas_mac: float = 0.025
    gather_mac: float = 0.04
    csr_mac: float = 0.05
    copy: float = 0.5
    cache_bytes: float = float(1 << 20)
    llc_bytes: float = float(1 << 24)
    block_mac: float = 0.02

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{f.name} must be a finite number > 0, got {f.name}={value!r}")

    def as_array(self) -> np.ndarray:
        """The constants as float64 (9,), in field order (what :func:`choose_strategy` takes)."""
        return np.array(astuple(self), dtype=np.float64)


def flop_reduction(dense_macs: int, macs: int) -> float:
    """Dense multiply-adds / multiply-adds done: >= 1 when zeros are skipped, inf when none were done."""
    return dense_macs / macs if macs else math.inf


def layer_activations(activation: str, tau: float, m: float,
                      n_layers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The activation after each of ``n_layers`` layers (hidden layers, then the readout), as the kernels take it.

    A one-sided phi (``relu_tau``, ``crelu``) has its threshold folded into the preceding
    bias, as :class:`~sparse_eoc.nn.SparseMLP` does (its activation's ``bias_shift``):
    phi(h) = min(max(h - tau, 0), m), so the layer adds b - tau and applies min(max(v, 0), m).
    A two-sided phi (``st_tau``, ``cst``) cannot fold (bias shift 0): the layer applies
    sign(v) min(max(|v| - tau, 0), m). Paper Section 2 defines the activations.

    Args:
        activation: a registry name.  tau: the threshold, >= 0.  m: the clip, > 0 (inf: unclipped).
        n_layers: L + 1 >= 2 (L hidden layers and the readout).

    Returns:
        ``(kinds, taus, ms, bias_shift)``: kinds int64 (n_layers,) of ``ACT_*`` codes; taus and
        ms float32 (n_layers,), the tau and m each kernel applies (the readout: ``ACT_IDENTITY``,
        0 and inf); bias_shift, the float to subtract from every hidden layer's bias.

    Raises:
        ValueError: an unknown activation (the message lists the valid ones).
    """
    two_sided = get_activation(activation).two_sided
    kind, kernel_tau, bias_shift = (ACT_TWO_SIDED, tau, 0.0) if two_sided else (ACT_ONE_SIDED, 0.0, tau)
    hidden = n_layers - 1
    kinds = np.array([kind] * hidden + [ACT_IDENTITY], dtype=np.int64)
    taus = np.array([kernel_tau] * hidden + [0.0], dtype=np.float32)
    ms = np.array([m] * hidden + [math.inf], dtype=np.float32)
    return kinds, taus, ms, bias_shift


def block_lanes(batch):
    """The lanes (example slots) the ``block`` kernel runs for a batch of B >= 1 examples: groups
    of BLOCK_GROUP, the last one rounded up to 1, 2, 4 or 8 (the group sizes it has kernels for,
    ``sparse_eoc.kernels.block.group_lanes``). Works on ints and floats."""
    full = batch // BLOCK_GROUP
    rest = batch - full * BLOCK_GROUP
    if rest > 4:
        rest = BLOCK_GROUP
    elif rest > 2:
        rest = 4
    return full * BLOCK_GROUP + rest


def _cost(code, batch, n_in, n_out, nnz, n_union, c, rereads_cached=False, group_rows=0.0):
    """Predicted time of strategy ``code`` (floats in, float out; the numba kernels compile it as it is).

    ``rereads_cached``: a gather's re-read rows cost ``cached`` whatever the layer's size (a small batch).
    ``group_rows``: for BLOCK, the sum over its groups of each group's union, R (<= 0: the upper
    bound ceil(B / 8) |U|).
    """
    mem, cached, blas, gather, csr, copy, cache_bytes = c[0], c[1], c[2], c[3], c[4], c[5], c[6]
    if code == DENSE:
        return (blas * batch + mem) * n_in * n_out
    if code == GATHER:
        reread = cached if rereads_cached or 4.0 * n_in * n_out <= cache_bytes else mem
        return (gather * nnz + mem * n_union + reread * (nnz - n_union)) * n_out
    if code == UNION:
        return (copy + mem + blas * batch) * n_union * n_out
    if code == BLOCK:
        # Each group reads its own union's rows: once from memory, again from the last-level
        # cache for later groups where W^T fits there; lanes(B) / groups slots per row.
        groups = (batch + BLOCK_GROUP - 1) // BLOCK_GROUP
        rows = group_rows if group_rows > 0 else groups * n_union
        reread = cached if 4.0 * n_in * n_out <= c[7] else mem
        return (c[8] * block_lanes(batch) / groups * rows + mem * n_union + reread * (rows - n_union)) * n_out
    return (csr * nnz + mem * n_union) * n_out


def choose_strategy(batch, n_in, n_out, nnz, n_union, costs, group_rows=0):
    """The code of the cheapest strategy for one layer under the cost model.

    Args:
        batch: examples B >= 1.  n_in, n_out: the layer's N_in and N_out.
        nnz: nonzero inputs over the batch, 0..B N_in.
        n_union: input units nonzero for at least one example, 0..N_in.
        costs: :meth:`CostModel.as_array`, float64 (9,).
        group_rows: the sum of the unions of the batch's groups of :data:`BLOCK_GROUP` consecutive
            examples (what ``block`` reads), |U| .. ceil(B / 8) |U|; 0 (default): not measured,
            the upper bound ceil(B / 8) |U| is used.

    Returns:
        One of DENSE, GATHER, UNION, CSR, BLOCK; ties go to the earlier of gather, block, csr,
        union, dense (the numba kernels compile this function, so both backends choose alike).
        Batch 1 is always GATHER: with no batch to share rows across, every layer is a gather
        (for a fully dense input that is the dense product as row updates). Up to
        :data:`SMALL_BATCH` examples: DENSE where it is cheaper than GATHER (re-read rows charged
        as cached, see :class:`CostModel`), else the cheaper of GATHER (CSR for a layer whose W^T
        exceeds ``llc_bytes``) and BLOCK. Per-example gathers measured faster than ``union``
        there, and than ``csr`` wherever the weights stay in cache. Larger batches: the cheapest
        of GATHER, CSR, UNION and DENSE, or BLOCK where it is predicted below
        :data:`BLOCK_MARGIN` times that. BLOCK needs N_out >= :data:`BLOCK_MIN_COLUMNS`.
    """
    if batch == 1:
        return GATHER
    b, i, o, z, u, r = float(batch), float(n_in), float(n_out), float(nnz), float(n_union), float(group_rows)
    can_block = n_out >= BLOCK_MIN_COLUMNS
    if batch <= SMALL_BATCH:
        # The examples of a small batch read their rows one after another: a row another
        # example shares was read moments before and comes from cache.
        fits = 4.0 * i * o <= costs[7]  # W^T within the last-level cache
        gather_cost = _cost(GATHER, b, i, o, z, u, costs, True)
        if _cost(DENSE, b, i, o, z, u, costs) < gather_cost:
            return DENSE
        if not can_block:
            return GATHER if fits else CSR
        block_cost = _cost(BLOCK, b, i, o, z, u, costs, False, r)
        if fits:  # ties to gather, the earlier
            return BLOCK if block_cost < gather_cost else GATHER
        return BLOCK if block_cost <= _cost(CSR, b, i, o, z, u, costs) else CSR
    best = GATHER
    best_cost = _cost(GATHER, b, i, o, z, u, costs)
    for code in (CSR, UNION, DENSE):
        cost = _cost(code, b, i, o, z, u, costs)
        if cost < best_cost:
            best, best_cost = code, cost
    if can_block and _cost(BLOCK, b, i, o, z, u, costs, False, r) < BLOCK_MARGIN * best_cost:
        return BLOCK
    return best
