"""The cross-encoder backend: an ONNX Runtime session over one graph of a model package.

The graph takes a padded (query, text) pair batch and returns one logit per row; the
engine applies the manifest's activation. ``load`` chooses the execution provider.

``provider="cuda"`` asks for the CUDA execution provider and the FP16 graph. When CUDA is
not usable (a CPU-only onnxruntime build, missing CUDA/cuDNN libraries, a failed session)
the scorer falls back to the CPU provider with the INT8 graph (FP32 when INT8 is absent)
and says so in one warning line; it never crashes for want of a GPU.

On CPU the default is the fastest *batch-invariant* graph (``ModelPackage.select_variant``):
the statically quantized INT8 graph when the export measured it batch-invariant, else FP32.
A dynamically quantized INT8 graph is not batch-invariant: ``DynamicQuantizeLinear`` picks
one scale for the whole activation tensor, so a pair's score moves with whatever else (and
however much padding) shares its batch. Such a graph runs only when asked for
(``variant="int8"``) or when it is the only graph on disk, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnxruntime as ort

from service.model_package import ModelPackage
from service.scorers.base import Provider, Variant
from service.scorers.ort_options import session_options

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class OnnxScorer:
    """One ``InferenceSession``; ``run`` is thread-safe and releases the GIL inside ORT."""

    def __init__(
        self,
        session: ort.InferenceSession,
        variant: str,
        output_name: str,
        batch_invariant: bool = True,
    ) -> None:
        self._session: ort.InferenceSession | None = session
        self.variant = variant
        self.batch_invariant = batch_invariant
        self.provider = session.get_providers()[0]
        self._input_names = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        self._output_name = output_name if output_name in outputs else outputs[0]

    @classmethod
    def load(
        cls,
        package: ModelPackage,
        provider: Provider = "cpu",
        variant: Variant = "auto",
        intra_op_threads: int = 0,
        spinning: bool = False,
    ) -> OnnxScorer:
        """Open the package's graph for ``provider``, falling back from CUDA to CPU."""
        if provider == "cuda":
            reason = ""
            if CUDA not in ort.get_available_providers():
                reason = "this onnxruntime build has no CUDAExecutionProvider (onnxruntime-gpu?)"
            else:
                cuda_variant = package.select_variant([CUDA, CPU]) if variant == "auto" else variant
                try:
                    session = _session(
                        package, cuda_variant, [CUDA, CPU], intra_op_threads, spinning
                    )
                except Exception as exc:  # ORT raises plain RuntimeErrors for EP failures
                    reason = f"the CUDA session failed to start ({exc})"
                else:
                    if session.get_providers()[0] == CUDA:
                        return cls._checked(session, package, cuda_variant)
                    reason = "ONNX Runtime could not initialise CUDA (CUDA 13 / cuDNN 9 missing?)"
            cpu_variant = _cpu_variant(package) if variant in ("auto", "fp16") else variant
            log.warning(
                "provider=cuda requested but %s; falling back to CPUExecutionProvider "
                "with the %s graph",
                reason,
                cpu_variant,
            )
            session = _session(package, cpu_variant, [CPU], intra_op_threads, spinning)
            return cls._checked(session, package, cpu_variant)
        cpu_variant = _cpu_variant(package) if variant == "auto" else variant
        session = _session(package, cpu_variant, [CPU], intra_op_threads, spinning)
        return cls._checked(session, package, cpu_variant)

    @classmethod
    def _checked(
        cls, session: ort.InferenceSession, package: ModelPackage, variant: str
    ) -> OnnxScorer:
        invariant = is_batch_invariant(package, variant)
        if not invariant:
            log.warning(
                "the %s graph is not batch-invariant: a pair's score varies slightly with "
                "the rest of its batch; use RELEVANCE_VARIANT=fp32 for batch-invariant scores",
                variant,
            )
        return cls(session, variant, package.manifest.output, invariant)

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (float32, one per row) for a padded batch."""
        if self._session is None:
            raise RuntimeError("the scorer is closed")
        feeds = {name: inputs[name] for name in self._input_names}
        (logits,) = self._session.run([self._output_name], feeds)
        return np.asarray(logits, dtype=np.float32).reshape(len(inputs["input_ids"]), -1)[:, 0]

    def warmup(self, batches: Iterable[dict[str, np.ndarray]]) -> int:
        """Run each batch once so allocations and kernel choices happen before traffic."""
        count = 0
        for batch in batches:
            self.run(batch)
            count += 1
        return count

    def close(self) -> None:
        """Drop the session (ORT frees it with the last reference)."""
        self._session = None


def is_batch_invariant(package: ModelPackage, variant: str) -> bool:
    """False for graphs whose scores depend on the batch (dynamically quantized INT8)."""
    return package.is_batch_invariant(variant)


def _cpu_variant(package: ModelPackage) -> str:
    """Fastest batch-invariant CPU graph on disk; a dynamic INT8 only as the last resort."""
    return package.select_variant([CPU])


def _session(
    package: ModelPackage,
    variant: str,
    providers: list[str],
    intra_op_threads: int,
    spinning: bool,
) -> ort.InferenceSession:
    options = session_options(intra_op_threads, spinning)
    path = package.variant_path(variant)
    log.info("loading %s (%s) on %s", path, variant, providers[0])
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
