"""Tests for sparse_eoc/runs/network.py: the network description and its JSON form."""

import math

import pytest

from sparse_eoc.runs.network import NetworkSpec


def mlp(**changes):
    base = dict(kind="mlp", image_shape=(1, 28, 28), num_classes=10, depth=3, activation="crelu", tau=1.0,
                m=0.8, width=300)
    return NetworkSpec(**{**base, **changes})


def test_round_trip_and_the_inf_null_convention():
    for spec in (mlp(), mlp(m=math.inf, activation="relu_tau"),
                 NetworkSpec(kind="cnn", image_shape=(3, 32, 32), num_classes=10, depth=2, activation="cst",
                             tau=1.5, m=math.inf, channels=8, kernel_size=3, padding_mode="zeros")):
        d = spec.to_dict()
        assert (d["m"] is None) == math.isinf(spec.m)
        assert NetworkSpec.from_dict(d) == spec


def test_reads_the_network_section_written_at_6b2918f():
    # config.json["network"] of an MLP run written by sparse-eoc at 6b2918f
    old = {"kind": "mlp", "image_shape": [1, 28, 28], "num_classes": 10, "depth": 3, "activation": "crelu",
           "tau": 0.524, "m": None, "in_features": 784, "width": 32}
    spec = NetworkSpec.from_dict(old)
    assert spec.in_features == 784 and math.isinf(spec.m)
    assert NetworkSpec.from_dict({k: v for k, v in old.items() if k != "kind"}) == spec  # no kind: an MLP


@pytest.mark.parametrize("change, message", [
    ({"width": None}, r"width must be an integer"),
    ({"in_features": 100}, r"in_features=100 does not match"),
    ({"tau": "x"}, r"tau must be a finite number"),
])
def test_bad_sections_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        NetworkSpec.from_dict({**mlp().to_dict(), **change})
    with pytest.raises(ValueError, match=r"lacks the field 'depth'"):
        NetworkSpec.from_dict({k: v for k, v in mlp().to_dict().items() if k != "depth"})


def test_parameter_count_matches_the_built_model():
    import torch  # noqa: F401  (the builder needs torch; the spec does not)

    from sparse_eoc.nn.build import build_model

    cnn = NetworkSpec(kind="cnn", image_shape=(1, 12, 12), num_classes=7, depth=3, activation="crelu", tau=1.0,
                      m=1.0, channels=5, kernel_size=3, padding_mode="circular")
    for spec in (mlp(), cnn):
        assert spec.n_parameters() == sum(p.numel() for p in build_model(spec).parameters())
