"""Compiled row kernels on W^T (numba; no torch), shared by the inference engine (``sparse_eoc.infer``)
and sparse training (``sparse_eoc.nn.sparse_linear``). Importing this package imports nothing;
its modules need numba (``pip install 'sparse-eoc[fast]'``)."""
