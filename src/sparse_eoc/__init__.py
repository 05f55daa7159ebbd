"""sparse-eoc: deep networks whose hidden layers are mostly exact zeros, at the Edge of Chaos.

Implements Price, Daultry Ball, Lam, Jones and Tanner, *Deep Neural Network
Initialization with Sparsity Inducing Activations* (ICLR 2024).

The torch-free theory lives in :mod:`sparse_eoc.gp` and :mod:`sparse_eoc.activations`;
networks in :mod:`sparse_eoc.nn`; data in :mod:`sparse_eoc.data`; training and run
directories in :mod:`sparse_eoc.train`. Importing this package does not import torch.

``sparse_eoc.sparsify`` (:func:`sparse_eoc.nn.sparsify.sparsify`: swap any model's activations
for calibrated sparse ones) is imported, with torch, on first use.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy ``sparse_eoc.sparsify``: torch is imported only when it is first used (PEP 562)."""
    if name == "sparsify":
        from sparse_eoc.nn.sparsify import sparsify

        return sparsify
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
