"""ONNX Runtime as a baseline: a torch network exported to ONNX and run by an ORT CPU session.

The inference benchmarks compare the sparse engines with the best dense CPU runtimes at
hand: PyTorch itself, and ONNX Runtime, which fuses and pre-packs the same graph
(``ORT_ENABLE_ALL``: e.g. Gemm + Clip, pre-packed GEMM weights). :class:`OrtModel` exports
any torch module that ``torch.onnx.export`` takes (a :class:`~sparse_eoc.nn.SparseMLP` or
:class:`~sparse_eoc.nn.SparseCNN` with any registered activation: its ops become Gemm/Conv,
Clip, Relu, Shrink, Pad) with a dynamic batch axis, and runs it on NumPy batches.

Needs the ``bench`` extra, ``pip install 'sparse-eoc[bench]'`` (onnxruntime, onnx, and
onnxscript for torch's default exporter); :func:`ort_unavailable_reason` says what is
missing. Neither torch nor onnxruntime is imported with this module.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from sparse_eoc.checks import check_int

__all__ = ["EXPORTERS", "INSTALL_HINT", "OrtModel", "ort_unavailable_reason", "ort_version"]

#: What :class:`OrtModel`'s ``exporter`` accepts: ``auto`` (``dynamo`` when onnxscript
#: imports and this torch has it, else ``torchscript``), ``dynamo`` (``torch.onnx.export(...,
#: dynamo=True)``, torch's default since 2.9) or ``torchscript`` (the older tracing exporter).
EXPORTERS = ("auto", "dynamo", "torchscript")
INSTALL_HINT = "pip install 'sparse-eoc[bench]'"


def ort_unavailable_reason() -> str | None:
    """None when onnxruntime and onnx import; else one line saying which does not and how to install it."""
    for name in ("onnxruntime", "onnx"):
        try:
            __import__(name)
        except (ImportError, OSError) as err:  # OSError: a shared library that fails to load
            return f"the ONNX Runtime baseline needs {name}, which cannot be imported ({err}); {INSTALL_HINT}"
    return None


def ort_version() -> str:
    """The installed ONNX Runtime's version, e.g. ``"1.32.0"``.

    Raises:
        ImportError: if onnxruntime cannot be imported (:func:`ort_unavailable_reason` says why).
    """
    import onnxruntime

    return onnxruntime.__version__


def _dynamo_available() -> bool:
    import torch

    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:  # torch < 2.5
        return False
    try:
        import onnxscript  # noqa: F401  (what the dynamo exporter writes ONNX with)
    except ImportError:
        return False
    return True


def _export(model, example, exporter: str, path: Path) -> None:
    """Write ``model`` as ONNX to ``path``: input ``x`` and output ``logits``, batch axis 0 dynamic."""
    import torch

    # A batch of 2 for the trace: torch.export specialises a dimension of size 1 to a constant.
    x = example[:1].expand(2, *example.shape[1:]).contiguous()  # (2, *)
    names = {"input_names": ["x"], "output_names": ["logits"]}
    onnx_logger = logging.getLogger("torch.onnx")  # its notes (e.g. "torchvision is not installed")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # the torchscript exporter is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            if exporter == "dynamo":
                program = torch.onnx.export(model, (x,), dynamo=True, verbose=False, **names,
                                            dynamic_shapes=({0: torch.export.Dim("batch")},))
                program.save(str(path))
            else:
                kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
                torch.onnx.export(model, (x,), str(path), **names, **kwargs,
                                  dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    except Exception as err:
        raise RuntimeError(f"torch.onnx.export ({exporter} exporter) failed for {type(model).__name__}: "
                           f"{type(err).__name__}: {err}") from err
    finally:
        onnx_logger.setLevel(level)


class OrtModel:
    """A torch network exported to ONNX, run by an ONNX Runtime CPU session.

    The session: ``CPUExecutionProvider``, ``intra_op_num_threads = threads``,
    ``inter_op_num_threads = 1`` (sequential execution), ``ORT_ENABLE_ALL`` graph
    optimisations. With ``threads > 1`` its idle threads spin-wait between calls as by
    default (``session.intra_op.allow_spinning``), as a user would run it and as torch's
    and numba's OpenMP threads do too: turned off, ORT took 1.5-1.8x its time at batch 1
    (depth-100, width-300 MLP, 2 threads, 2-core CPU). They spin about 40 ms after a call:
    the benchmarks wait that out before the next method's turn
    (:func:`sparse_eoc.infer.bench.settle`).

    Args:
        model: a torch ``nn.Module`` in eval mode, on the CPU (e.g. a ``SparseMLP`` or
            ``SparseCNN``); read, not changed.
        example: an input batch, a CPU float32 tensor (B, *) with B >= 1 (e.g. (B, 784)
            or (B, C, H, W)): fixes the per-example shape (*); the batch size stays free.
        threads: ORT's intra-op threads, >= 1.
        exporter: ``auto``, ``dynamo`` or ``torchscript`` (:data:`EXPORTERS`).

    Attributes:
        threads, exporter (the one used: ``dynamo`` or ``torchscript``),
        example_shape: the per-example input shape (*).

    Raises:
        ImportError: onnxruntime or onnx missing (the message says to ``pip install
            'sparse-eoc[bench]'``), or ``exporter="dynamo"`` without onnxscript.
        ValueError: ``model`` in training mode, ``example`` not a CPU float32 tensor with
            B >= 1, ``threads < 1``, or an unknown ``exporter``.
        RuntimeError: if ``torch.onnx.export`` fails (the message names the exporter).
    """

    def __init__(self, model, example, threads: int = 1, *, exporter: str = "auto") -> None:
        import torch

        reason = ort_unavailable_reason()
        if reason is not None:
            raise ImportError(reason)
        import onnxruntime as ort

        self.threads = check_int("threads", threads)
        if exporter not in EXPORTERS:
            raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got exporter={exporter!r}")
        if model.training:
            raise ValueError(f"model must be in eval mode (model.eval()), got a {type(model).__name__} in training "
                             "mode")
        if (not isinstance(example, torch.Tensor) or example.dtype != torch.float32 or example.device.type != "cpu"
                or example.dim() < 2 or example.shape[0] < 1):
            described = (f"{example.dtype} {tuple(example.shape)} on {example.device}"
                         if isinstance(example, torch.Tensor) else type(example).__name__)
            raise ValueError(f"example must be a CPU float32 tensor (B, *) with B >= 1, got {described}")
        if exporter == "auto":
            exporter = "dynamo" if _dynamo_available() else "torchscript"
        elif exporter == "dynamo" and not _dynamo_available():
            raise ImportError(f"exporter='dynamo' needs torch >= 2.5 and onnxscript; {INSTALL_HINT}")
        self.exporter = exporter
        self.example_shape = tuple(example.shape[1:])

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            _export(model, example, exporter, path)
            # The session reads the file (and any external weights) now; the directory goes after.
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name

    def __call__(self, x: Any) -> np.ndarray:
        """Logits of a batch.

        Args:
            x: inputs (B, *) with (*) = ``example_shape`` and B >= 1, a NumPy array
                (converted to contiguous float32 if it is not).

        Returns:
            Logits (B, num_classes), float32 NumPy.

        Raises:
            ValueError: if ``x`` does not have that shape.
        """
        arr = np.ascontiguousarray(x, dtype=np.float32)
        if arr.ndim < 1 or arr.shape[1:] != self.example_shape or arr.shape[0] < 1:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.example_shape))}) with B >= 1, "
                             f"got {arr.shape}")
        return self._session.run([self._output], {self._input: arr})[0]

    def __repr__(self) -> str:
        return (f"OrtModel(example_shape={self.example_shape}, threads={self.threads}, "
                f"exporter={self.exporter!r})")
