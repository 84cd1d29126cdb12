"""Export a trained student to a self-describing ONNX model package.

Modules: ``parity`` (gates, batch invariance), ``scoring`` (PyTorch and ONNX reference
scores), ``calibration`` (static INT8 pairs), ``smoothquant`` (graph surgery), ``quantize``
(INT8 makers, node selectors), ``recipes`` (candidates per variant), ``build``
(orchestration), ``manifest`` (checksums, provenance, summary), ``stage`` (``python -m
training export``).

Steps (all through optimum, never a hand-written ``torch.onnx.export``):

1. ``optimum.exporters.onnx.main_export`` writes an FP32 graph with dynamic
   ``batch_size`` and ``sequence_length`` axes.
2. Each variant is built from a list of candidate recipes, best first, and the first
   one that passes its parity gate is written:

   - ``fp32``: ORTOptimizer O2 (CPU fusions), then O1, then the plain export.
     Gate: max |score_onnx - score_torch| <= 1e-4.
   - ``fp16`` (for the CUDA EP): ORTOptimizer O2 with ``optimize_for_gpu`` and
     ``fp16`` (which uses onnxruntime.transformers' ``convert_float_to_float16`` with
     ``keep_io_types=True``, so inputs stay int64 and logits stay float32), then the
     onnxruntime.transformers conversion of the plain export. onnxconverter-common's
     ``keep_io_types`` is avoided: its graph failed to load (a Cast type error) with
     the pinned onnxruntime.
   - ``int8`` (for the CPU EP): first *static* (calibrated) QDQ quantization, whose
     activation scales are constants, so that a pair's score does not depend on the
     rest of its batch: weight MatMuls and the embedding Gathers, then that with the
     feed-forward input projections in FP32, then only the attention projections. The
     FP32 graph is first smoothed (SmoothQuant: per-channel activation outliers moved
     into the weights); calibration runs through optimum's ``ORTQuantizer.fit``
     (MinMax) on ``calibration_pairs``. Only when every static recipe fails parity come the
     *dynamic* per-channel recipes (``DynamicQuantizeLinear`` picks one scale per
     activation tensor per batch, so scores move with the batch): all quantizable
     operators, weight MatMuls and Gathers, that with the last layer in FP32, the
     attention projections only.

   Gate for fp16/int8 (against the chosen FP32 graph, on the validation queries):
   pairwise accuracy drops by at most 0.005 and the mean per-query Kendall tau is at
   least 0.9.
3. Every candidate is also checked for batch invariance: a few short pairs scored one at
   a time against the same pairs inside one padded batch with longer pairs. The max
   score difference is ``parity.batch_invariance_max_abs_diff``; over 1e-5 the variant
   is ``batch_invariant: false``. A recipe that passes parity but is not batch-invariant
   is kept only if no later recipe expected to be batch-invariant passes.
4. Tokenizer files are copied, ``manifest.json`` is written with a SHA-256 of every file,
   and the package replaces ``out_dir`` in one rename.

A variant whose candidates all fail parity is not written; the reasons are logged and
kept in ``manifest.provenance["export"]["rejected"]``. FP32 failing is fatal because it is
the reference for the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ExportError(RuntimeError):
    """The export cannot produce a usable package."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """optimum and transformers log at INFO/WARNING for routine steps; keep the export readable."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
