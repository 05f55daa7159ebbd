"""Torch layer: activations by registry name, the MLP, the CNN, residual networks, EoC initialisers,
sparsity metering."""

from sparse_eoc.nn.activations import (
    CST,
    CReLU,
    ReLUTau,
    SparseActivation,
    STTau,
    crelu,
    cst,
    make_activation,
    relu_tau,
    st_tau,
)
from sparse_eoc.nn.cnn import SparseCNN
from sparse_eoc.nn.init import WEIGHT_INITS, delta_orthogonal_, eoc_normal_, init_eoc_, input_weight_variance
from sparse_eoc.nn.mlp import SparseMLP
from sparse_eoc.nn.resnet import ResCNN, ResMLP, init_residual_
from sparse_eoc.nn.sparsify import SiteReport, SiteSplit, SparseSite, SparsifyReport, SparsifyWarning
from sparse_eoc.nn.sparsity import SparsityMeter, measure_sparsity

__all__ = [
    "CST",
    "CReLU",
    "ReLUTau",
    "ResCNN",
    "ResMLP",
    "STTau",
    "SiteReport",
    "SiteSplit",
    "SparseActivation",
    "SparseCNN",
    "SparseMLP",
    "SparseSite",
    "SparsifyReport",
    "SparsifyWarning",
    "WEIGHT_INITS",
    "delta_orthogonal_",
    "SparsityMeter",
    "crelu",
    "cst",
    "eoc_normal_",
    "init_eoc_",
    "init_residual_",
    "input_weight_variance",
    "make_activation",
    "measure_sparsity",
    "relu_tau",
    "st_tau",
]
