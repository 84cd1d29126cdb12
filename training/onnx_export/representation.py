"""Export a representation student as a model package of two ONNX graphs (query, item).

What the package holds (``models/<name>/``):

- ``query.<variant>.onnx`` and ``item.<variant>.onnx`` for each variant written (fp32,
  fp16, int8): optimum's ``feature-extraction`` export of the shared BERT encoder,
  inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, ``(batch,
  sequence)``), output ``last_hidden_state`` (float32, ``(batch, sequence, hidden)``, for
  every variant). The two sides are the same encoder; each has its own graph so that
  each is quantized on its own texts (static INT8 calibrates on queries or on items) and
  a server can load only the side it runs (the item side may run offline only).
- ``representation_head.json`` (and ``projection.npy`` when there is a projection): the
  head, applied in numpy after the graph (:func:`training.representation.model.pool`):
  masked mean pooling (bi-encoder) or none (late interaction), ``h @ W`` with ``W``
  ``(hidden, dim)`` float32, L2 normalisation, padded tokens zeroed. The head stays out
  of the graph: the graph is then exactly what optimum exports and what the
  cross-encoder's FP16/INT8 recipes (SmoothQuant, static QDQ) were built and measured
  for, and the stored vectors' dtype is a storage choice made after normalisation,
  not a graph property. It is a few lines of numpy (and one 384 x 128 matrix).
- tokenizer files (``tokenizer.json`` without truncation: each side cuts to its own
  ``max_length``), ``config.json``, ``manifest.json``.

Score of a (query, item) pair from stored vectors: ``logit = scale * similarity + bias``,
``score = sigmoid(logit)``; similarity is the dot product of the two normalised vectors
(bi-encoder) or the mean over the query's tokens of the max dot product with any of the
item's tokens (late interaction). The manifest says it all (``head``, ``item_vectors``).

Gates (the cross-encoder's, :mod:`training.onnx_export.parity`), on scores computed
through both graphs of a variant and the head: FP32 within 1e-4 of the PyTorch student;
FP16 / INT8 against this package's own FP32 scores on the validation queries (pairwise
accuracy drop <= 0.005, mean per-query Kendall tau >= 0.9); batch invariance of both
sides (texts encoded alone vs inside a padded batch with longer texts). The stored
item dtype (``item_vectors.dtype``, float16) is gated the same way against float32
vectors of the FP32 graphs (``item_vectors.parity``).

Why one module of ~550 lines: build, gate and write of a variant share the parity data
and the sessions of both sides; the manifest lives in
:mod:`training.onnx_export.representation_manifest`. Split further, one variant's build
would be read across three files.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.model_package import VARIANT_NAMES
from training.artifacts import TOKENIZER_FILES
from training.onnx_export import ExportError, quiet
from training.onnx_export.build import SMOKE_PAIRS, VARIANT_PROVIDERS, _replace_dir
from training.onnx_export.calibration import CALIBRATION_FILE, MAX_CALIBRATION_PAIRS, spread
from training.onnx_export.parity import (
    MAX_BATCH_INVARIANCE_DIFF,
    ParityResult,
    ValidationPair,
    check_fp32_parity,
    check_ranking_parity,
    invariance_pairs,
)
from training.onnx_export.recipes import RECIPES, Recipe
from training.onnx_export.representation_manifest import (
    CATALOGUE_ITEMS,
    DEFAULT_STORAGE,
    MANIFEST_NAME,
    SIDES,
    STORAGE_DTYPES,
    RepresentationVariant,
    SideGraph,
    _manifest,
    graph_file,
    read_representation_manifest,
    verify_representation_package,
)
from training.onnx_export.scoring import fp16_providers
from training.representation import ARCHITECTURES, BI_ENCODER, HEAD_FILE
from training.representation.model import (
    INPUT_NAMES,
    PROJECTION_FILE,
    HeadSpec,
    encode_texts,
    read_head,
    text_tokenizer,
)
from training.representation.scoring import (
    ITEM,
    QUERY,
    PairScorer,
    session_encoder,
    torch_encoder,
)

logger = logging.getLogger(__name__)

SCORE_BATCH_SIZE = 32

# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class _ParityData:
    spec: HeadSpec
    projection: np.ndarray | None
    tokenizer_path: Path
    text_pairs: list[tuple[str, str]]
    query_ids: list[Hashable]
    grades: list[float]
    ranking_checked: bool
    torch_scores: np.ndarray
    probes: dict[str, list[str]]
    company: dict[str, list[str]]

    def scorer(self, encode: Any, storage: str | None = None) -> PairScorer:
        return PairScorer(
            self.spec,
            encode,
            text_tokenizer(self.tokenizer_path, self.spec.query_max_length),
            text_tokenizer(self.tokenizer_path, self.spec.item_max_length),
            SCORE_BATCH_SIZE,
            storage=storage,
        )

    def score(self, encode: Any, storage: str | None = None) -> np.ndarray:
        queries, items = [p[0] for p in self.text_pairs], [p[1] for p in self.text_pairs]
        return self.scorer(encode, storage).score(queries, items)


def torch_reference_scores(
    model_dir: Path, pairs: Sequence[tuple[str, str]], spec: HeadSpec, tokenizer: Path
) -> np.ndarray:
    """Scores of the saved PyTorch student (its own torch head): the FP32 gate's reference."""
    from training.representation.model import load_representation

    model, query_tok, item_tok = load_representation(model_dir)
    scorer = PairScorer(spec, torch_encoder(model), query_tok, item_tok, SCORE_BATCH_SIZE)
    return scorer.score([p[0] for p in pairs], [p[1] for p in pairs])


def side_batch_invariance(
    encode: Any, tokenizers: Mapping[str, Any], probes: Mapping[str, list[str]], company: Mapping
) -> float:
    """Max |vector alone - vector inside a padded batch with longer texts|, both sides.

    Each probe text is encoded as a batch of one (no padding), then in the middle of the
    side's company texts, padded to the longest; late-interaction rows are compared on
    the probe's own tokens.
    """
    worst = 0.0
    for side in SIDES:
        tokenizer, others = tokenizers[side], list(company[side])
        half = len(others) // 2
        for text in probes[side]:
            alone = encode(side, encode_texts(tokenizer, [text]))[0]
            batch = encode_texts(tokenizer, [*others[:half], text, *others[half:]])
            mixed = encode(side, batch)[half][: len(alone)]
            worst = max(worst, float(np.max(np.abs(alone - mixed))))
    return worst


def _invariance_texts(
    text_pairs: Sequence[tuple[str, str]],
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    probes, company = invariance_pairs(text_pairs)
    return (
        {QUERY: [p[0] for p in probes], ITEM: [p[1] for p in probes]},
        {QUERY: [" ".join([c[0]] * 4) for c in company], ITEM: [c[1] for c in company]},
    )


# --------------------------------------------------------------------------- export


def _main_export(model_dir: Path, export_dir: Path) -> None:
    from optimum.exporters.onnx import main_export

    with quiet(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*results are registered as constants.*")
        main_export(
            str(model_dir),
            export_dir,
            task="feature-extraction",
            library_name="transformers",
            device="cpu",
            do_validation=False,
            local_files_only=True,
        )


def write_text_calibration(
    export_dir: Path, tokenizer_path: Path, max_length: int, texts: Sequence[str]
) -> int:
    """``calibration.npz`` (the format :func:`~training.onnx_export.calibration.read_calibration`
    reads) from single texts, each encoded alone, unpadded."""
    if not texts:
        raise ExportError("static INT8 calibration needs at least one text")
    tokenizer = text_tokenizer(tokenizer_path, max_length)
    rows = [encode_texts(tokenizer, [t]) for t in texts]
    arrays = {name: np.concatenate([r[name][0] for r in rows]) for name in INPUT_NAMES}
    lengths = np.array([r["input_ids"].shape[1] for r in rows], dtype=np.int64)
    np.savez(export_dir / CALIBRATION_FILE, lengths=lengths, **arrays)
    return len(rows)


@dataclass
class _Outcome:
    graphs: dict[str, Path] | None = None
    spec: RepresentationVariant | None = None
    scores: np.ndarray | None = None
    attempts: list[dict[str, Any]] | None = None


def _sessions(graphs: Mapping[str, Path], providers: Sequence[str]) -> dict[str, Any]:
    import onnxruntime as ort

    return {
        side: ort.InferenceSession(str(path), providers=list(providers))
        for side, path in graphs.items()
    }


def _build_variant(
    variant: str,
    recipes: Sequence[Recipe],
    side_dirs: Mapping[str, Path],
    work: Path,
    data: _ParityData,
    reference: np.ndarray | None,
) -> _Outcome:
    """The first recipe whose two graphs pass the gates (batch-invariant ones first)."""
    attempts: list[dict[str, Any]] = []
    fallback: tuple[Recipe, dict[str, Path], np.ndarray, dict[str, Any]] | None = None
    providers = fp16_providers() if variant == "fp16" else ["CPUExecutionProvider"]
    tokenizers = {
        QUERY: text_tokenizer(data.tokenizer_path, data.spec.query_max_length),
        ITEM: text_tokenizer(data.tokenizer_path, data.spec.item_max_length),
    }
    for i, recipe in enumerate(recipes):
        if fallback is not None and not recipe.batch_invariant:
            break
        try:
            graphs = {
                side: recipe.make(side_dirs[side], work / f"{variant}-{i}-{side}") for side in SIDES
            }
        except Exception as exc:  # one recipe failing must not stop the others
            logger.warning("%s recipe %s failed to build: %s", variant, recipe.label, exc)
            attempts.append({"recipe": recipe.label, "error": f"build: {exc}"})
            continue
        try:
            sessions = _sessions(graphs, providers)
            encode = session_encoder(sessions, data.spec, data.projection)
            scores = data.score(encode)
            invariance = side_batch_invariance(encode, tokenizers, data.probes, data.company)
        except Exception as exc:
            logger.warning("%s recipe %s failed to run: %s", variant, recipe.label, exc)
            attempts.append({"recipe": recipe.label, "error": f"run: {exc}"})
            continue
        if reference is None:
            result = check_fp32_parity(data.torch_scores, scores)
        elif data.ranking_checked:
            result = check_ranking_parity(data.query_ids, data.grades, reference, scores)
        else:
            result = ParityResult(True, {"status": "skipped", "reason": "no validation pairs"})
        provider = sessions[QUERY].get_providers()[0]
        parity = {
            **result.numbers,
            "provider": provider,
            "batch_invariance_max_abs_diff": invariance,
            "batch_invariance_measure": "max |vector alone - vector in a padded batch|",
            "threshold_batch_invariance": MAX_BATCH_INVARIANCE_DIFF,
        }
        if variant == "fp16" and provider != "CUDAExecutionProvider":
            parity["note"] = "no CUDA EP on the export machine: FP16 parity ran on the CPU EP"
        if not result.passed:
            logger.warning("%s recipe %s failed parity: %s", variant, recipe.label, result.reason)
            attempts.append({"recipe": recipe.label, "reason": result.reason, **parity})
            continue
        if invariance <= MAX_BATCH_INVARIANCE_DIFF:
            logger.info("%s variant from %s: %s", variant, recipe.label, parity)
            return _written(variant, recipe, graphs, scores, parity, True, attempts)
        attempts.append({"recipe": recipe.label, **parity, "reason": "not batch-invariant"})
        fallback = fallback or (recipe, graphs, scores, parity)
    if fallback is not None:
        recipe, graphs, scores, parity = fallback
        others = [a for a in attempts if a["recipe"] != recipe.label]
        return _written(variant, recipe, graphs, scores, parity, False, others)
    logger.error("%s variant not written, every recipe failed: %s", variant, attempts)
    return _Outcome(attempts=attempts)


def _written(
    variant: str,
    recipe: Recipe,
    graphs: dict[str, Path],
    scores: np.ndarray,
    parity: dict[str, Any],
    invariant: bool,
    rejected: list[dict[str, Any]],
) -> _Outcome:
    build = {**recipe.build, "recipe": recipe.label}
    if build.get("mode") == "static":
        build["calibration"] = "each side on its own texts (queries / item titles)"
    if rejected:
        build["rejected_recipes"] = rejected
    spec = RepresentationVariant(
        precision=variant,  # type: ignore[arg-type]
        query=SideGraph(file=graph_file(QUERY, variant)),
        item=SideGraph(file=graph_file(ITEM, variant)),
        providers=VARIANT_PROVIDERS[variant],
        batch_invariant=invariant,
        parity=parity,
        build=build,
    )
    return _Outcome(graphs=graphs, spec=spec, scores=scores, attempts=rejected)


def item_vector_stats(
    spec: HeadSpec, tokenizer_path: Path, catalogue_texts: Sequence[str], dtype: str
) -> dict[str, Any]:
    """Bytes per stored item and for a :data:`CATALOGUE_ITEMS` catalogue (token counts of
    ``catalogue_texts`` when each token is a vector)."""
    bytes_per_vector = spec.dim * np.dtype(dtype).itemsize
    if spec.architecture == BI_ENCODER or not catalogue_texts:
        counts = np.ones(1)
    else:
        tokenizer = text_tokenizer(tokenizer_path, spec.item_max_length)
        counts = np.array([len(e.ids) for e in tokenizer.encode_batch(list(catalogue_texts))])
    per_item = float(counts.mean()) * bytes_per_vector
    return {
        "dim": spec.dim,
        "dtype": dtype,
        "per_item": "one vector" if spec.architecture == BI_ENCODER else "one vector per token",
        "bytes_per_vector": int(bytes_per_vector),
        "mean_vectors_per_item": round(float(counts.mean()), 2),
        "max_vectors_per_item": int(counts.max()),
        "bytes_per_item": round(per_item, 1),
        "catalogue_items": CATALOGUE_ITEMS,
        "catalogue_bytes": round(per_item * CATALOGUE_ITEMS),
        "catalogue_source": (
            "one vector per item"
            if spec.architecture == BI_ENCODER
            else f"mean token count (with [CLS]/[SEP], cut to {spec.item_max_length}) of "
            f"{len(catalogue_texts)} catalogue titles"
        ),
    }


def export_representation_package(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    backbone: str,
    variants: Sequence[str] = VARIANT_NAMES,
    validation_pairs: Sequence[ValidationPair] | None = None,
    calibration_texts: Mapping[str, Sequence[str]] | None = None,
    catalogue_texts: Sequence[str] = (),
    storage: str = DEFAULT_STORAGE,
    extra_manifest: Mapping[str, Any] | None = None,
    recipes: Mapping[str, Sequence[Recipe]] = RECIPES,
) -> Path:
    """Export a saved representation run (see :mod:`training.representation`) to a package.

    ``validation_pairs`` are ``(query_id, query, item, grade)`` (without them the FP32
    gate runs on built-in pairs and the FP16/INT8 ranking gates are skipped);
    ``calibration_texts`` ``{"query": [...], "item": [...]}`` set the static INT8 ranges of
    each side (default: the validation texts); ``catalogue_texts`` give the token counts
    behind the stated catalogue memory. ``extra_manifest`` sets ``evaluation`` and
    ``provenance``. Returns ``out_dir``, replaced as a whole.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    unknown = set(variants) - set(VARIANT_NAMES)
    if unknown or not variants:
        raise ExportError(f"variants must be a non-empty subset of {VARIANT_NAMES}, got {variants}")
    if storage not in STORAGE_DTYPES:
        raise ExportError(f"storage must be one of {STORAGE_DTYPES}, got {storage!r}")
    spec, projection = read_head(model_dir)
    if spec.architecture not in ARCHITECTURES:
        raise ExportError(f"{model_dir}: unknown architecture {spec.architecture!r}")
    tokenizer_path = model_dir / "tokenizer.json"
    pairs = list(validation_pairs) if validation_pairs else list(SMOKE_PAIRS)
    text_pairs = [(p[1], p[2]) for p in pairs]
    probes, company = _invariance_texts(text_pairs)
    data = _ParityData(
        spec=spec,
        projection=projection,
        tokenizer_path=tokenizer_path,
        text_pairs=text_pairs,
        query_ids=[p[0] for p in pairs],
        grades=[float(p[3]) for p in pairs],
        ranking_checked=bool(validation_pairs),
        torch_scores=torch_reference_scores(model_dir, text_pairs, spec, tokenizer_path),
        probes=probes,
        company=company,
    )
    calibration = {
        side: spread(
            list(dict.fromkeys((calibration_texts or {}).get(side) or [p[k] for p in text_pairs])),
            MAX_CALIBRATION_PAIRS,
        )
        for k, side in enumerate(SIDES)
    }

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}-export-", dir=out_dir.parent) as tmp:
        work = Path(tmp)
        export_dir = work / "export"
        _main_export(model_dir, export_dir)
        side_dirs = {}
        for side in SIDES:
            side_dirs[side] = work / f"export-{side}"
            shutil.copytree(export_dir, side_dirs[side])
            if "int8" in variants:
                max_length = spec.query_max_length if side == QUERY else spec.item_max_length
                write_text_calibration(
                    side_dirs[side], tokenizer_path, max_length, calibration[side]
                )

        fp32 = _build_variant("fp32", recipes["fp32"], side_dirs, work, data, reference=None)
        if fp32.spec is None or fp32.graphs is None:
            raise ExportError(f"no FP32 graph pair passed parity: {fp32.attempts}")
        outcomes = {"fp32": fp32}
        for variant in ("fp16", "int8"):
            if variant in variants:
                outcomes[variant] = _build_variant(
                    variant, recipes[variant], side_dirs, work, data, reference=fp32.scores
                )
        written = {v: o for v, o in outcomes.items() if o.spec is not None and v in variants}
        rejected = {v: o.attempts for v, o in outcomes.items() if o.spec is None}
        if not written:
            raise ExportError(f"no requested variant passed parity: {rejected}")

        # The stored dtype of item vectors, gated like a variant against float32 vectors.
        sessions = _sessions(fp32.graphs, ["CPUExecutionProvider"])
        stored = data.score(session_encoder(sessions, spec, projection), storage=storage)
        storage_parity = (
            check_ranking_parity(data.query_ids, data.grades, fp32.scores, stored)
            if data.ranking_checked
            else ParityResult(True, {"status": "skipped", "reason": "no validation pairs"})
        )
        if not storage_parity.passed:
            raise ExportError(f"item vectors stored as {storage} fail parity: {storage_parity}")
        vectors = item_vector_stats(spec, tokenizer_path, catalogue_texts, storage)
        vectors["parity"] = {
            **storage_parity.numbers,
            "stored": storage,
            "reference": "float32 vectors of the fp32 graphs",
        }

        package = work / "package"
        package.mkdir()
        for file_name in (*TOKENIZER_FILES, "config.json", HEAD_FILE, PROJECTION_FILE):
            if (model_dir / file_name).is_file():
                shutil.copy2(model_dir / file_name, package / file_name)
        for variant, outcome in written.items():
            for side in SIDES:
                shutil.copy2(outcome.graphs[side], package / graph_file(side, variant))  # type: ignore[index]
        manifest = _manifest(
            package,
            spec=spec,
            name=name,
            version=version,
            backbone=backbone,
            variants={v: o.spec for v, o in written.items()},  # type: ignore[misc]
            rejected=rejected,
            vectors=vectors,
            extra=dict(extra_manifest or {}),
        )
        (package / MANIFEST_NAME).write_text(
            json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
        )
        _replace_dir(package, out_dir, work / "previous")
    return out_dir


def package_scorer(
    package_dir: str | Path,
    variant: str = "fp32",
    threads: int = 1,
    storage: str | None = "manifest",
    batch_size: int = SCORE_BATCH_SIZE,
) -> PairScorer:
    """A :class:`PairScorer` over a package's two graphs of ``variant``, as a server runs it.

    ``storage="manifest"`` casts item vectors to the manifest's stored dtype; the
    manifest's calibration, if any, maps the scores as the service does.
    """
    import onnxruntime as ort

    package_dir = Path(package_dir)
    manifest = verify_representation_package(package_dir)
    spec, projection = read_head(package_dir)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    chosen = manifest.variants[variant]
    sessions = {
        side: ort.InferenceSession(
            str(package_dir / getattr(chosen, side).file),
            options,
            providers=["CPUExecutionProvider"],
        )
        for side in SIDES
    }
    tokenizer = package_dir / manifest.tokenizer
    return PairScorer(
        spec,
        session_encoder(sessions, spec, projection),
        text_tokenizer(tokenizer, manifest.query.max_length),
        text_tokenizer(tokenizer, manifest.item.max_length),
        batch_size,
        storage=manifest.item_vectors.dtype if storage == "manifest" else storage,
        calibration=manifest.calibration,
    )


def summarize(package_dir: str | Path) -> str:
    """A few lines on a representation package: variants, sizes, parity, stored vectors."""
    package_dir = Path(package_dir)
    manifest = read_representation_manifest(package_dir)
    vectors = manifest.item_vectors
    lines = [
        f"{manifest.name} {manifest.version} ({manifest.architecture}; item vectors "
        f"{vectors.dim} x {vectors.dtype}, {vectors.per_item}, {vectors.bytes_per_item:.0f} B "
        f"per item, {vectors.catalogue_bytes / 1e6:.1f} MB for {vectors.catalogue_items:,} items)"
    ]
    for variant, spec in manifest.variants.items():
        size_mb = sum((package_dir / getattr(spec, s).file).stat().st_size for s in SIDES) / 1e6
        parity = spec.parity
        if "max_abs_score_diff" in parity:
            detail = f"max|diff| vs torch {parity['max_abs_score_diff']:.2e}"
        elif "mean_kendall_tau_vs_fp32" in parity:
            detail = (
                f"pair-acc {parity['pairwise_accuracy']:.4f} (fp32 "
                f"{parity['pairwise_accuracy_fp32']:.4f}), "
                f"tau vs fp32 {parity['mean_kendall_tau_vs_fp32']:.4f}"
            )
        else:
            detail = f"parity {parity.get('status', 'n/a')}"
        verdict = "batch-invariant" if spec.batch_invariant else "NOT batch-invariant"
        detail += f", {verdict} ({parity.get('batch_invariance_max_abs_diff', 0.0):.1e})"
        lines.append(
            f"  {variant}: query+item {size_mb:.1f} MB, {spec.build.get('recipe')}, {detail}, "
            f"checked on {parity.get('provider')}"
        )
    for variant, attempts in manifest.provenance.get("export", {}).get("rejected", {}).items():
        reasons = "; ".join(f"{a['recipe']}: {a.get('reason') or a.get('error')}" for a in attempts)
        lines.append(f"  {variant}: NOT WRITTEN ({reasons})")
    if manifest.calibration is not None:
        fit = manifest.calibration.fit
        lines.append(
            f"  calibration: sigmoid({manifest.calibration.scale:.3f} * logit "
            f"{manifest.calibration.bias:+.3f}); validation random negatives irrelevant "
            f"{fit.get('validation_negatives_irrelevant_before', 0):.1%} -> "
            f"{fit.get('validation_negatives_irrelevant_after', 0):.1%}"
        )
    return "\n".join(lines)
