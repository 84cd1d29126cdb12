"""Side-by-side CPU benchmark of the student: PyTorch vs ONNX FP32 vs ONNX INT8.

    python -m training.bench_backends --model-dir STUDENT_DIR [--package-dir models/NAME]

Measures, in one process and one run, size on disk and throughput (pairs/s) at several
batch sizes on real Home Depot (query, title) pairs, each batch padded to its longest
pair (as the service pads). Tokenization happens before the clock starts: it is the same
for every backend. Threads are pinned (2 by default) so that rows compare. Without
``--package-dir`` the student is exported to a temporary package first. ONNX FP16 gets a
row only when this onnxruntime build has the CUDA execution provider.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from service.features import load_tokenizer
from service.model_package import load_package
from training.scoring import encoded_batches

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 8, 32, 64)


@dataclass
class BackendResult:
    backend: str
    size_mb: float
    pairs_per_s: dict[int, float] = field(default_factory=dict)

    @property
    def best(self) -> tuple[int, float]:
        bs = max(self.pairs_per_s, key=lambda b: self.pairs_per_s[b])
        return bs, self.pairs_per_s[bs]


@dataclass(frozen=True)
class Backend:
    name: str
    size_bytes: int
    run: Callable[[dict[str, np.ndarray]], None]


def sample_pairs(n: int, seed: int, data_path: Path | None = None) -> list[tuple[str, str]]:
    """``n`` (query, title) pairs drawn at random from the labeled Home Depot data."""
    from training.data import DEFAULT_DATA_PATH, load_labeled

    frame = load_labeled(data_path or DEFAULT_DATA_PATH)
    rows = frame.sample(n=min(n, len(frame)), random_state=seed)
    return list(zip(rows["query"], rows["title"], strict=True))


def _pytorch_backend(model_dir: Path, threads: int) -> Backend:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    weights = list(model_dir.glob("*.safetensors")) or list(model_dir.glob("*.bin"))

    def run(batch: dict[str, np.ndarray]) -> None:
        with torch.inference_mode():
            model(**{k: torch.from_numpy(v) for k, v in batch.items()})

    return Backend("PyTorch FP32", sum(p.stat().st_size for p in weights), run)


def _onnx_backend(label: str, graph: Path, threads: int, providers: Sequence[str]) -> Backend:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(graph), options, providers=list(providers))
    names = {i.name for i in session.get_inputs()}

    def run(batch: dict[str, np.ndarray]) -> None:
        session.run(["logits"], {k: v for k, v in batch.items() if k in names})

    return Backend(label, graph.stat().st_size, run)


def measure(
    backend: Backend, batches: list[dict[str, np.ndarray]], n_pairs: int, repeats: int
) -> float:
    """Median pairs/s over ``repeats`` passes through all batches, after a few warm-up batches."""
    # PyTorch's first calls at a new shape are slow; a handful of batches settles it.
    for batch in batches[:5]:
        backend.run(batch)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            backend.run(batch)
        rates.append(n_pairs / (time.perf_counter() - start))
    return statistics.median(rates)


def run_benchmark(
    model_dir: Path,
    package_dir: Path,
    pairs: Sequence[tuple[str, str]],
    *,
    threads: int = 2,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 3,
) -> tuple[list[BackendResult], dict[str, Any]]:
    """Throughput table rows plus the conditions they were measured under."""
    import onnxruntime as ort

    package = load_package(package_dir)
    manifest = package.manifest
    tokenizer = load_tokenizer(package.tokenizer_path, manifest.max_length)
    queries, texts = [p[0] for p in pairs], [p[1] for p in pairs]
    by_size = {
        bs: [batch for _, batch in encoded_batches(tokenizer, queries, texts, bs)]
        for bs in batch_sizes
    }
    factories: list[Callable[[], Backend]] = [lambda: _pytorch_backend(model_dir, threads)]
    cpu = ["CPUExecutionProvider"]
    for variant, label in (("fp32", "ONNX FP32"), ("int8", "ONNX INT8")):
        if variant in package.available_variants():
            graph = package.variant_path(variant)
            factories.append(lambda g=graph, lb=label: _onnx_backend(lb, g, threads, cpu))
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if has_cuda and "fp16" in package.available_variants():
        graph = package.variant_path("fp16")
        factories.append(
            lambda g=graph: _onnx_backend("ONNX FP16 (CUDA)", g, threads, ["CUDAExecutionProvider"])
        )

    results = []
    for factory in factories:
        backend = factory()
        result = BackendResult(backend.name, backend.size_bytes / 1e6)
        for bs in batch_sizes:
            result.pairs_per_s[bs] = measure(backend, by_size[bs], len(pairs), repeats)
            logger.info("%s bs=%d: %.1f pairs/s", backend.name, bs, result.pairs_per_s[bs])
        results.append(result)
        del backend

    lengths = [b["attention_mask"].sum(axis=1) for b in by_size[batch_sizes[0]]]
    conditions = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "threads": threads,
        "pairs": len(pairs),
        "mean_tokens_per_pair": float(np.mean(np.concatenate(lengths))),
        "padded_tokens_per_pair": {
            bs: float(np.mean([b["input_ids"].shape[1] for b in by_size[bs]])) for bs in batch_sizes
        },
        "repeats": repeats,
        "model": manifest.name,
        "version": manifest.version,
        "max_length": manifest.max_length,
        "tools": {
            d: metadata.version(d) for d in ("torch", "onnxruntime", "transformers", "optimum")
        },
        "platform": platform.platform(),
    }
    return results, conditions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(results: Sequence[BackendResult], conditions: dict[str, Any]) -> str:
    """A markdown table: one row per backend, pairs/s per batch size, best, size."""
    sizes = list(results[0].pairs_per_s)
    head = ["backend", "size on disk (MB)", *(f"bs={b}" for b in sizes), "best (bs)"]
    lines = [
        f"{conditions['model']} {conditions['version']}, {conditions['date']}, "
        f"{conditions['cpu']}, {conditions['threads']} threads, {conditions['pairs']} Home Depot "
        f"pairs padded to the longest in each batch "
        f"(mean {conditions['mean_tokens_per_pair']:.1f} tokens/pair), pairs/s, "
        f"median of {conditions['repeats']}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in results:
        bs, rate = r.best
        cells = [r.backend, f"{r.size_mb:.1f}", *(f"{r.pairs_per_s[b]:.0f}" for b in sizes)]
        lines.append("| " + " | ".join([*cells, f"{rate:.0f} ({bs})"]) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="saved PyTorch student")
    parser.add_argument(
        "--package-dir", type=Path, help="model package (default: export one to a temp dir)"
    )
    parser.add_argument("--max-length", type=int, default=128, help="only when exporting here")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=DEFAULT_BATCH_SIZES
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, help="labeled CSV (default: shared Home Depot data)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    pairs = sample_pairs(args.pairs, args.seed, args.data)
    with tempfile.TemporaryDirectory(prefix="bench-package-") as tmp:
        package_dir = args.package_dir
        if package_dir is None:
            from training.onnx_export.build import export_package

            package_dir = export_package(
                args.model_dir,
                Path(tmp) / "package",
                name=args.model_dir.name,
                version="bench",
                max_length=args.max_length,
                variants=("fp32", "int8"),
            )
        results, conditions = run_benchmark(
            args.model_dir,
            package_dir,
            pairs,
            threads=args.threads,
            batch_sizes=args.batch_sizes,
            repeats=args.repeats,
        )
    print(format_table(results, conditions))
    if args.json:
        payload = {"conditions": conditions, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
