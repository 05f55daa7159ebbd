"""CNN multiply-add counting: the closed-form tap counts equal a brute-force im2col count."""

import pytest
import torch
import torch.nn.functional as F

from sparse_eoc.gp import solve_eoc
from sparse_eoc.infer import cnn_flop_report
from sparse_eoc.nn import SparseCNN, SparseMLP, init_eoc_


def brute_force_macs(conv: torch.nn.Conv2d, a: torch.Tensor) -> int:
    """C_out x the nonzero entries of the im2col matrix (padding entries are not inputs)."""
    k = conv.kernel_size[0]
    if conv.padding_mode == "circular":
        cols = F.unfold(F.pad(a, (k // 2,) * 4, mode="circular"), k)  # (B, C_in k k, H W)
    else:
        cols = F.unfold(a, k, padding=k // 2)  # (B, C_in k k, H W), zeros where padded
    return conv.out_channels * int((cols != 0).sum())


@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_counts_equal_brute_force(padding_mode, kernel_size):
    p = solve_eoc("crelu", 0.8, slope=0.7)
    model = SparseCNN(2, 10, 3, 6, "crelu", p.tau, p.m, kernel_size=kernel_size, padding_mode=padding_mode)
    init_eoc_(model, p.sigma_w2, p.sigma_b2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(3, 2, 7, 9, generator=torch.Generator().manual_seed(1))
    x[x < 0] = 0.0  # some exact zeros in the images too
    report = cnn_flop_report(model, x)
    with torch.no_grad():
        states = model.hidden_states(x)
    inputs = [x] + [phi for _, phi in states[:-1]]
    for conv, a, done, dense, s in zip(model.hidden, inputs, report.macs, report.dense_macs, report.input_sparsity):
        assert done == brute_force_macs(conv, a)
        assert dense == 3 * 7 * 9 * 6 * a.shape[1] * kernel_size**2
        assert s == pytest.approx(float((a == 0).float().mean()))
    pooled = states[-1][1].mean(dim=(2, 3))
    assert report.macs[-1] == int((pooled != 0).sum()) * 10
    assert report.flop_reduction == pytest.approx(sum(report.dense_macs) / sum(report.macs))
    assert report.flop_reduction > 1.5  # hidden inputs ~80 % zeros, half the image pixels zero
    assert len(report.to_dict()["layer_flop_reduction"]) == 4


def test_bad_arguments():
    model = SparseCNN(1, 10, 2, 4, "crelu", 0.5, 2.0)
    with pytest.raises(ValueError, match="SparseCNN"):
        cnn_flop_report(SparseMLP(4, 2, 1, 3, "crelu", 0.5, 2.0), torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        cnn_flop_report(model, torch.zeros(2, 28, 28))
