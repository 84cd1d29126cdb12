"""Fine-tuning the LLM teacher as a soft-target relevance classifier, resumable across sessions.

The model, prompt and scoring live in :mod:`relevance_core.teacher` (the shadow endpoint
loads the same code). Here: soft targets over the graded classes (a mean human grade of
2.33 is the distribution (0, 0.67, 0.33)), LoRA on the top kept layers (peft: the lower
layers get no trainable parameter, so autograd never back-propagates through them),
length-bucketed batches, and checkpoints at least every ``checkpoint_minutes`` that hold
everything a resumed run needs to continue exactly as an uninterrupted one would:
adapter, optimizer, the RNG state and the step.

On a GPU the same command trains all layers of a larger LLM
(``--set teacher.keep_layers=0 --set teacher.lora_layers=0 --set teacher.base=DIR``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from relevance_core.hashing import sha256_file
from relevance_core.teacher import (
    CLASS_GAINS,
    NUM_CLASSES,
    QWEN_BASE,
    QWEN_GGUF_SHA256,
    TEACHER_MANIFEST,
    TeacherConfig,
    format_prompts,
    load_base,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "optimizer.pt",
    "rng.pt",
    "state.json",
)


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


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft class targets (equals KL up to the targets' entropy)."""
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def add_lora(model, config: TeacherConfig):
    """LoRA on the top ``lora_layers`` kept layers; the head is trained in full."""
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


def bucketed_batches(
    lengths: Sequence[int], batch_size: int, window: int, seed: int, epochs: float = 1.0
) -> list[np.ndarray]:
    """Batches of similar length in a random order, deterministic for a seed.

    Each epoch shuffles the pairs, cuts the order into windows of ``window`` batches,
    sorts each window by length and cuts it into batches; the batches are then shuffled.
    A fractional last epoch keeps its first batches.
    """
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths)
    n = len(lengths)
    batches: list[np.ndarray] = []
    for _ in range(math.ceil(epochs)):
        order = rng.permutation(n)
        epoch: list[np.ndarray] = []
        span = batch_size * max(1, window)
        for start in range(0, n, span):
            part = order[start : start + span]
            part = part[np.argsort(lengths[part], kind="stable")]
            epoch.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
        batches.extend(epoch[i] for i in rng.permutation(len(epoch)))
    wanted = math.ceil(epochs * math.ceil(n / batch_size))
    return batches[:wanted]


def with_random_negatives(
    queries: Sequence[str], titles: Sequence[str], grades: Sequence[float], rate: float, seed: int
) -> tuple[list[str], list[str], np.ndarray]:
    """The pairs plus ``rate`` random negatives per distinct query, graded 1 (irrelevant).

    A negative pairs a query with the title of an item judged for another query: among
    tens of thousands of products an unrelated one is all but always irrelevant.
    """
    queries, titles = list(queries), list(titles)
    grades = np.asarray(grades, dtype=np.float64)
    distinct = sorted({q.lower() for q in queries})
    count = round(rate * len(distinct))
    if count <= 0 or len(distinct) < 2:  # one query: no other query's item to borrow
        return queries, titles, grades
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(distinct), size=count, replace=count > len(distinct))
    extra_queries, extra_titles = [], []
    for q in (distinct[i] for i in chosen):
        while True:  # resample the rare draw of one of the query's own items
            j = int(rng.integers(len(titles)))
            if queries[j].lower() != q:
                break
        extra_queries.append(q)
        extra_titles.append(titles[j])
    return (
        queries + extra_queries,
        titles + extra_titles,
        np.concatenate([grades, np.ones(count)]),
    )


def prompt_lengths(tokenizer, prompts: Sequence[str]) -> np.ndarray:
    """Token count of each prompt."""
    return np.asarray([len(ids) for ids in tokenizer(list(prompts))["input_ids"]])


def _lr_scale(step: int, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 0 at ``total``."""
    return min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * step / total))


class _StopRequest:
    """SIGTERM/SIGINT while training: finish the step, checkpoint, return."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread no handler can be set: stop by time only.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        logger.info("signal %d: stopping after this step with a checkpoint", signum)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_teacher(
    queries: Sequence[str],
    titles: Sequence[str],
    grades: Sequence[float],
    config: TeacherConfig,
    work_dir: Path,
    cache_dir: Path,
    max_seconds: float | None = None,
    max_steps: int | None = None,
) -> Path:
    """Fine-tune the teacher with checkpoints in ``work_dir/checkpoint``; resumes from the last one.

    Stops early (resumably, with a checkpoint) after ``max_seconds``, after ``max_steps``
    steps of this call, or on SIGTERM. Returns the checkpoint directory; its ``state.json``
    says how far training got.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    torch.set_num_threads(config.threads)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = work_dir / "checkpoint"
    model, tokenizer = load_base(config, cache_dir)
    device = next(model.parameters()).device
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
    queries, titles, grades = with_random_negatives(
        queries, titles, grades, config.random_negatives, config.seed
    )
    prompts_all = format_prompts(config.prompt_template, queries, titles)
    lengths = prompt_lengths(tokenizer, prompts_all)
    if config.max_length is not None:
        lengths = np.minimum(lengths, config.max_length)
    batches = bucketed_batches(
        lengths, config.batch_size, config.bucket_window, config.seed, config.epochs
    )
    total_steps = len(batches)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step, losses, trained_seconds = 0, [], 0.0
    state_file = checkpoint / "state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        set_peft_model_state_dict(model, load_file(checkpoint / "adapter_model.safetensors"))
        optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
        _restore_rng(torch.load(checkpoint / "rng.pt", weights_only=True))
        step, losses = state["step"], state["losses"]
        trained_seconds = state.get("trained_seconds", 0.0)
        logger.info("resuming teacher training at step %d/%d", step, total_steps)
    targets_all = soft_targets(np.asarray(grades))
    model.train()
    started = last_save = time.monotonic()
    steps_this_call = 0
    from tqdm import tqdm

    progress = tqdm(total=total_steps, initial=step, desc="teacher fine-tuning", unit="batch")

    def save() -> None:
        elapsed = trained_seconds + time.monotonic() - started
        _save_checkpoint(model, optimizer, checkpoint, step, total_steps, losses, config, elapsed)

    with _StopRequest() as stop:
        while step < total_steps:
            scale = _lr_scale(step, config.warmup_steps, total_steps)
            for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base_lr * scale
            index = batches[step]
            encoded = tokenizer(
                [prompts_all[i] for i in index],
                return_tensors="pt",
                padding=True,
                truncation=config.max_length is not None,
                max_length=config.max_length,
            ).to(device)
            logits = model(**encoded).logits.float()
            loss = soft_target_loss(logits, torch.from_numpy(targets_all[index]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora_params + head_params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            steps_this_call += 1
            progress.update(1)
            progress.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            now = time.monotonic()
            stopping = (
                stop.requested
                or (max_seconds is not None and now - started > max_seconds)
                or (max_steps is not None and steps_this_call >= max_steps)
            )
            due = now - last_save > 60 * config.checkpoint_minutes
            if due or stopping or step == total_steps:
                save()
                last_save = time.monotonic()
            if stopping:
                break
    progress.close()
    return checkpoint


def _rng_state() -> dict[str, object]:
    """Every RNG dropout draws from: the CPU's, and each GPU's when there are GPUs."""
    state: dict[str, object] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints written before GPU support
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    model, optimizer, checkpoint: Path, step, total_steps, losses, config, trained_seconds
) -> None:
    """Write the checkpoint beside the old one, then swap: a kill never leaves half of one."""
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    # peft records the base's local path; name the base instead (no machine paths in git).
    adapter_config = json.loads((tmp / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = config.base
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    (tmp / "README.md").unlink(missing_ok=True)  # peft's model card: local paths, no content
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(
        json.dumps(
            {
                "step": step,
                "total_steps": total_steps,
                "trained_seconds": trained_seconds,
                "losses": losses,
                "config": asdict(config),
            }
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
    logger.info("teacher checkpoint at step %d/%d", step, total_steps)


def write_teacher_package(
    checkpoint: Path, package_dir: Path, config: TeacherConfig, extra: dict
) -> Path:
    """Copy the adapter into a checksummed teacher package (the few MB that get committed)."""
    state = json.loads((checkpoint / "state.json").read_text())
    package_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (package_dir / name).write_bytes((checkpoint / name).read_bytes())
        files[name] = sha256_file(package_dir / name)
    manifest = {
        "format_version": 1,
        "kind": "teacher",
        "name": package_dir.name,
        "base": config.base,
        "base_sha256": QWEN_GGUF_SHA256 if config.base == QWEN_BASE else None,
        "classes": {"1": "irrelevant", "2": "partial", "3": "exact"},
        "class_gains": list(CLASS_GAINS),
        "score": "expected gain in [0, 1]: 0.5 * p(partial) + p(exact)",
        "prompt_template": config.prompt_template,
        "max_length": config.max_length,
        "config": asdict(config),
        "training": {
            "steps": state["step"],
            "total_steps": state["total_steps"],
            "trained_seconds": state.get("trained_seconds"),
            "final_loss": float(np.mean(state["losses"][-50:])),
        },
        "files": files,
        **extra,
    }
    (package_dir / TEACHER_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return package_dir
