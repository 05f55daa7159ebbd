"""docs/theory.md section 9.3 on real modules.

Training the q* network (tau, m ~ sqrt(q*), the EoC init of sparse_eoc.nn) with SGD and momentum
at lr is exactly training the q* = 1 network from the same draws with the readout weights drawn
sqrt(q*) x larger and learning at q* x lr, and the first layer's weights and every hidden bias
learning at lr / q*: the hidden states stay sqrt(q*) x those of the other, with the same zeros.
At q* = 16 the scaling is by powers of 2, so the two agree to the last bit (float64 and float32).
"""

import math

import pytest
import torch

from sparse_eoc.gp import solve_eoc
from sparse_eoc.nn.init import init_eoc_, input_weight_variance
from sparse_eoc.nn.mlp import SparseMLP

N0, WIDTH, DEPTH, CLASSES, BATCH, ETA = 20, 64, 6, 10, 32, 1e-2


def _net(activation, q_star, msi, dtype):
    p = solve_eoc(activation, 0.9, q_star, slope=0.7)
    net = SparseMLP(N0, CLASSES, DEPTH, WIDTH, activation, p.tau, p.m).to(dtype)
    init_eoc_(net, p.sigma_w2, p.sigma_b2, input_sigma_w2=input_weight_variance(q_star, p.sigma_b2, msi),
              generator=torch.Generator().manual_seed(1))
    return net


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ["crelu", "cst"])
def test_training_at_q_star_is_training_at_one_with_three_changes(activation, dtype):
    q_star = 16.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, N0, generator=g, dtype=dtype)  # (N, N0)
    y = torch.randint(0, CLASSES, (256,), generator=g)
    msi = float((x ** 2).mean())
    big, one = _net(activation, q_star, msi, dtype), _net(activation, 1.0, msi, dtype)
    with torch.no_grad():
        one.readout.weight.mul_(math.sqrt(q_star))  # (1) the readout drawn sqrt(q*) x larger
    slow = [one.hidden[0].weight, *(layer.bias for layer in one.hidden)]
    groups = [{"params": slow, "lr": ETA / q_star},  # (3)
              {"params": [layer.weight for layer in one.hidden[1:]] + [one.readout.bias], "lr": ETA},
              {"params": [one.readout.weight], "lr": ETA * q_star}]  # (2)
    opt_big = torch.optim.SGD(big.parameters(), lr=ETA, momentum=0.9)
    opt_one = torch.optim.SGD(groups, lr=ETA, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(50):
        idx = torch.randint(0, 256, (BATCH,), generator=g)
        for net, opt in ((big, opt_big), (one, opt_one)):
            opt.zero_grad()
            loss_fn(net(x[idx]), y[idx]).backward()
            opt.step()
    with torch.no_grad():
        assert torch.equal(big(x), one(x))
        for (h_big, a_big), (h_one, a_one) in zip(big.hidden_states(x), one.hidden_states(x)):
            assert torch.equal(h_big, 4 * h_one) and torch.equal(a_big == 0, a_one == 0)
