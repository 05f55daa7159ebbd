"""Tests for sparse_eoc/nn/sparse_linear.py: the sparse training kernels give dense autograd's gradients.

Checked in float64 to 1e-10 for every activation, with pre-activations placed exactly on the
kinks h = tau and h = tau + m (and their negatives for the two-sided ones), where the torch
modules' derivative is 0.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sparse_eoc.nn import SparseMLP
from sparse_eoc.nn.sparse_linear import SparseActivationLinearFunction, SparseLinearFunction, set_kernels_, sparse_pays

pytest.importorskip("numba")

# tau and m are binary fractions, so tau + m - tau == m exactly and the kinks are hit exactly.
CASES = {"relu": (0.0, math.inf), "relu_tau": (0.5, math.inf), "st_tau": (0.5, math.inf),
         "crelu": (0.5, 0.25), "cst": (0.5, 0.25)}


def model_with_kinks(activation: str, *, seed: int = 0) -> SparseMLP:
    """A depth-4 float64 MLP whose second layer puts units exactly on every kink for every input."""
    tau, m = CASES[activation]
    gen = torch.Generator().manual_seed(seed)
    model = SparseMLP(12, 5, depth=4, width=16, activation=activation, tau=tau, m=m).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.8 + 0.1)
        layer = model.hidden[1]
        kinks = [tau, -tau] + ([tau + m, -(tau + m)] if math.isfinite(m) else [])
        for unit, h in enumerate(kinks):  # h^2_unit = 0 . x + h exactly
            layer.weight[unit].zero_()
            layer.bias[unit] = h
    return model


def grads(model, x, y):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}, x.grad


@pytest.mark.parametrize("activation", list(CASES))
def test_sparse_kernels_give_dense_autograds_gradients(activation):
    dense = model_with_kinks(activation)
    sparse = set_kernels_(copy.deepcopy(dense), "sparse")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (9,), generator=gen)
    (g_dense, x_dense), (g_sparse, x_sparse) = grads(dense, x, y), grads(sparse, x, y)
    assert g_dense.keys() == g_sparse.keys()
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(x_sparse, x_dense, rtol=0, atol=1e-10)
    hidden = [h for h, _ in dense.hidden_states(x)]
    tau, m = CASES[activation]
    on_kink = (hidden[1] - tau).abs().eq(0) | (hidden[1] + tau).abs().eq(0)
    assert on_kink.any()  # the kinks were hit
    # the sparse layers ran: their weights are stored transposed and got transposed gradients
    assert sparse.hidden[1].weight.t().is_contiguous() and g_sparse["hidden.1.weight"].shape == (16, 16)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_function_alone_against_dense_products(dtype):
    gen = torch.Generator().manual_seed(0)
    m = 0.75
    a = torch.relu(torch.randn(33, 70, generator=gen, dtype=dtype) - 1.0).clamp(max=m)  # (B, N_in)
    a[0, :6] = m  # clipped: derivative 0
    w = torch.randn(50, 70, generator=gen, dtype=dtype)
    b = torch.randn(50, generator=gen, dtype=dtype)
    g = torch.randn(33, 50, generator=gen, dtype=dtype)
    a1, w1, b1 = a.clone().requires_grad_(True), w.t().contiguous().t().requires_grad_(True), b.clone().requires_grad_(True)
    y1 = SparseLinearFunction.apply(a1, w1, b1, m)
    y1.backward(g)
    a2, w2, b2 = a.clone().requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    F.linear(a2, w2, b2).backward(g)
    tol = dict(rtol=0, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y1, F.linear(a, w, b), **tol)
    torch.testing.assert_close(w1.grad, w2.grad, **tol)
    torch.testing.assert_close(b1.grad, b2.grad, **tol)
    active = (a != 0) & (a.abs() < m)
    torch.testing.assert_close(a1.grad, a2.grad * active, **tol)
    assert (a1.grad[~active] == 0).all()


@pytest.mark.parametrize("pool", ["python", "numba"])
def test_two_threads_give_the_same_bits(monkeypatch, pool):
    import sparse_eoc.nn.sparse_linear as sparse_linear

    if pool == "python":
        monkeypatch.setattr(sparse_linear, "PARALLEL_MIN_MACS", 1)  # split even these tiny products
    else:  # too small for Python threads, but on numba's
        monkeypatch.setattr(sparse_linear, "NUMBA_PARALLEL_MIN_MACS", 1)
    model = model_with_kinks("crelu")
    x = torch.randn(40, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.zeros(40, dtype=torch.long)
    out = {}
    for threads in (1, 2):
        monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
        out[threads] = grads(set_kernels_(copy.deepcopy(model), "sparse"), x, y)[0]
    assert all(torch.equal(out[1][k], out[2][k]) for k in out[1])
    g_dense = grads(model, x, y)[0]
    for name in g_dense:
        torch.testing.assert_close(out[2][name], g_dense[name], rtol=0, atol=1e-10, msg=name)


def test_eval_and_no_grad_run_plain_torch_ops(monkeypatch):
    model = set_kernels_(model_with_kinks("crelu"), "sparse")

    def refuse(*args):
        raise AssertionError("sparse kernels outside training")

    monkeypatch.setattr(SparseLinearFunction, "apply", refuse)
    monkeypatch.setattr(SparseActivationLinearFunction, "apply", refuse)
    x = torch.randn(4, 12, dtype=torch.float64)
    with torch.no_grad():
        model(x)
    model.eval()
    model(x)


def test_weights_keep_their_keys_shapes_and_values():
    model = model_with_kinks("cst")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_kernels_(model, "sparse")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) and before[k].shape == after[k].shape for k in before)


def test_auto_picks_sparse_only_where_it_pays():
    assert sparse_pays(128, 300, 300, 0.15) and sparse_pays(128, 4096, 4096, 0.15)
    assert not sparse_pays(128, 4096, 4096, 0.9)
    assert not sparse_pays(1, 8, 8, 0.15)  # tiny layers: the fixed costs win


def test_bad_choices_name_the_option():
    with pytest.raises(ValueError, match="--kernels must be one of dense, sparse, auto"):
        set_kernels_(model_with_kinks("crelu"), "fast")
    from sparse_eoc.nn import SparseCNN

    with pytest.raises(ValueError, match="--kernels sparse applies to the MLP only"):
        set_kernels_(SparseCNN(1, 10, 2, 4, "crelu", 0.5, 0.25), "sparse")


def test_auto_weighs_products_too_small_to_split_against_a_multithreaded_dense_one():
    # width 300: 15 % density pays on one thread and against a 2-thread dense product; 30 % pays on
    # one thread only (measured 0.86 and 1.31 of the dense step)
    assert sparse_pays(128, 300, 300, 0.15, threads=1) and sparse_pays(128, 300, 300, 0.15, threads=2)
    assert sparse_pays(128, 300, 300, 0.30, threads=1) and not sparse_pays(128, 300, 300, 0.30, threads=2)
    assert not sparse_pays(128, 300, 300, 0.15, threads=4)  # the dense product gains more from 4 threads
    assert sparse_pays(128, 4096, 4096, 0.15, threads=2)


def test_a_weight_without_the_transposed_layout_still_gives_the_right_gradients():
    gen = torch.Generator().manual_seed(3)
    a = torch.relu(torch.randn(8, 20, generator=gen, dtype=torch.float64) - 0.5)
    w = torch.randn(6, 20, generator=gen, dtype=torch.float64, requires_grad=True)  # contiguous (out, in)
    b = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    SparseLinearFunction.apply(a, w, b, math.inf).sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(8, 6, dtype=torch.float64).t() @ a, rtol=0, atol=1e-12)


def test_a_sparsified_mlp_trains_with_each_sites_own_clip():
    """After sparse_eoc.sparsify splits the activation into one site per layer (each its own tau
    and m), the sparse kernels use each site's clip: gradients equal dense autograd's."""
    import warnings

    from sparse_eoc.nn.sparsify import sparsify

    gen = torch.Generator().manual_seed(2)
    dense = SparseMLP(12, 5, depth=4, width=32, activation="crelu", tau=0.5, m=0.25).double()
    calibration = torch.randn(64, 12, generator=gen, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sparsify(dense, 0.8, calibration=calibration)
    clips = {float(site.m) for site in dense.act}
    assert len(clips) > 1  # per-site clips, so using one for all would be caught
    sparse = set_kernels_(copy.deepcopy(dense), "sparse")
    x = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (9,), generator=gen)
    (g_dense, x_dense), (g_sparse, x_sparse) = grads(dense, x, y), grads(sparse, x, y)
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(x_sparse, x_dense, rtol=0, atol=1e-10)


def test_the_weight_gradient_buffer_is_reused_only_once_nothing_holds_it():
    """The dW^T buffer of a weight is reused by the next backward when the previous gradient was
    dropped (zero_grad(set_to_none=True)), never while a tensor still wraps it: gradients kept for
    accumulation, or a reference the user holds, keep their values."""
    from sparse_eoc.nn.sparse_linear import _GRAD_BUFFERS

    dense = model_with_kinks("crelu")
    sparse = set_kernels_(copy.deepcopy(dense), "sparse")
    gen = torch.Generator().manual_seed(5)
    batches = [(torch.randn(9, 12, generator=gen, dtype=torch.float64), torch.randint(0, 5, (9,), generator=gen))
               for _ in range(3)]
    weight = sparse.hidden[2].weight
    for model in (dense, sparse):  # three backward passes accumulated: each reads the gradient so far
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            F.cross_entropy(model(x), y).backward()
    for (name, p), q in zip(sparse.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12, msg=name)
    held = weight.grad  # the user keeps the last gradient; the next step must not write into it
    kept = held.clone()
    sparse.zero_grad(set_to_none=True)
    F.cross_entropy(sparse(batches[0][0]), batches[0][1]).backward()
    assert torch.equal(held, kept) and held.data_ptr() != weight.grad.data_ptr()
    del held
    first = weight.grad.data_ptr()
    sparse.zero_grad(set_to_none=True)  # nothing holds the buffer now: the next backward reuses it
    F.cross_entropy(sparse(batches[1][0]), batches[1][1]).backward()
    assert weight.grad.data_ptr() == first and _GRAD_BUFFERS[weight][0].ctypes.data == first
    grads_dense, _ = grads(dense, *batches[1])
    torch.testing.assert_close(weight.grad, grads_dense["hidden.2.weight"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", list(CASES))
@pytest.mark.parametrize("kernels", ["sparse", "auto"])
def test_the_fused_activation_meters_and_computes_what_the_layer_by_layer_path_does(activation, kernels):
    """In training the sparse path reads each activation off the previous pre-activation
    (fused_forward_hidden): the meter's per-layer counts equal the dense path's exactly, the
    logits agree to float32 rounding, and under ``auto`` the layers it keeps dense run too."""
    from sparse_eoc.nn.sparsity import SparsityMeter

    for dtype in (torch.float64, torch.float32):
        dense = model_with_kinks(activation).to(dtype)
        sparse = set_kernels_(copy.deepcopy(dense), kernels)
        x = torch.randn(64, 12, generator=torch.Generator().manual_seed(4), dtype=dtype)
        out = {}
        for name, model in (("dense", dense), ("sparse", sparse)):
            with SparsityMeter().attach(model) as meter:
                out[name] = model(x)
            out[name + " counts"] = meter.zeros_per_layer()
        assert out["sparse counts"] == out["dense counts"], dtype
        if dtype == torch.float64:  # float32 sums in another order differ by their rounding
            torch.testing.assert_close(out["sparse"], out["dense"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_activation_patterns_hold_the_torch_activations_nonzeros_bit_for_bit(activation, dtype):
    from sparse_eoc.kernels import train as kernels
    from sparse_eoc.nn.activations import make_activation

    tau, m = CASES[activation]
    act = make_activation(activation, tau, m)
    h = torch.randn(16, 40, generator=torch.Generator().manual_seed(6), dtype=dtype) * 2
    kinks = [tau, -tau] + ([tau + m, -(tau + m)] if math.isfinite(m) else [])
    specials = [0.0, -0.0, *kinks, float("nan")]
    h[0, :len(specials)] = torch.tensor(specials, dtype=dtype)
    a = act(h)  # the module's own forward
    x = h - act.bias_shift  # what forward_shifted_ takes
    kind = kernels.TWO_SIDED if activation in ("st_tau", "cst") else kernels.ONE_SIDED
    scalar = x.numpy().dtype.type
    indptr, idx, vals, colptr, rows, tvals, act_ptr, act_idx = kernels.activation_patterns(
        x.numpy(), kind, scalar(tau), scalar(m))
    nonzero = a != 0  # NaN too
    assert indptr[-1] == int(nonzero.sum())
    b, j = nonzero.nonzero(as_tuple=True)
    assert (idx == j.numpy()).all() and (indptr[1:] - indptr[:-1] == nonzero.sum(1).numpy()).all()
    torch.testing.assert_close(torch.from_numpy(vals), a[b, j], rtol=0, atol=0, equal_nan=True)
    order = torch.argsort(j * 16 + b)  # the CSC holds the same values, column by column
    torch.testing.assert_close(torch.from_numpy(tvals), a[b, j][order], rtol=0, atol=0, equal_nan=True)
    active = nonzero & (a.abs() < m)  # where the torch module's derivative is nonzero
    hd = h.clone().requires_grad_(True)
    act(hd).sum().backward()
    assert torch.equal(active[~a.isnan()], (hd.grad != 0)[~a.isnan()])
    assert act_ptr[-1] == int(active.sum()) and (act_idx == active.nonzero(as_tuple=True)[1].numpy()).all()
    assert kernels.activation_nonzeros(x.numpy(), kind, scalar(tau), scalar(m)) == int(nonzero.sum())


def test_auto_mixes_sparse_and_dense_layers_with_dense_autograds_gradients(monkeypatch):
    """Under ``auto`` the fused path counts first and builds the nonzero lists only for the layers
    it runs sparse: with every other decision forced sparse, gradients and counts stay exact."""
    import sparse_eoc.nn.sparse_linear as sparse_linear
    from sparse_eoc.nn.sparsity import SparsityMeter

    calls = []

    def alternate(*args):
        calls.append(args)
        return len(calls) % 2 == 1

    monkeypatch.setattr(sparse_linear, "sparse_pays", alternate)
    dense = model_with_kinks("cst")
    sparse = set_kernels_(copy.deepcopy(dense), "auto")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(9, 12, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (9,), generator=gen)
    (g_dense, x_dense), (g_sparse, x_sparse) = grads(dense, x, y), grads(sparse, x, y)
    assert len(calls) == 3  # one decision per layer after the first
    for name in g_dense:
        torch.testing.assert_close(g_sparse[name], g_dense[name], rtol=0, atol=1e-10, msg=name)
    torch.testing.assert_close(x_sparse, x_dense, rtol=0, atol=1e-10)
    counts = []
    for model in (dense, sparse):
        with SparsityMeter().attach(model) as meter:
            model(x)
        counts.append(meter.zeros_per_layer())
    assert counts[0] == counts[1]
