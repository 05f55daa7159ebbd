"""sparse-eoc: deep networks whose hidden layers are mostly exact zeros, at the Edge of Chaos.

Implements Price, Daultry Ball, Lam, Jones and Tanner, *Deep Neural Network
Initialization with Sparsity Inducing Activations* (ICLR 2024).

The torch-free theory lives in :mod:`sparse_eoc.gp` and :mod:`sparse_eoc.activations`;
networks in :mod:`sparse_eoc.nn`; data in :mod:`sparse_eoc.data`; training and run
directories in :mod:`sparse_eoc.train`. Importing this package does not import torch.
"""

__version__ = "0.1.0"
