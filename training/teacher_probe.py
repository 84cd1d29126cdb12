"""How deep must the teacher LLM be? A linear probe of every decoder layer's final token.

Fine-tuning the teacher on a 2-core CPU costs time in proportion to the decoder layers it
runs. Before choosing how many lower layers to keep, this probe runs the full decoder once
over a sample of training and validation pairs, takes the final prompt token's hidden
state after every layer (through the model's final norm, which is what a truncated
decoder's classification head would read), fits a ridge regression to the human grade on
the training sample and reports each layer's pairwise accuracy on the validation sample.
Nothing here touches the test split.

``python -m training.teacher_probe --train-pairs 1500 --val-queries 160 --threads 2``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from relevance_core.teacher import format_prompts, load_base
from training.config import load_config
from training.data import load_labeled, query_subset, split_by_query
from training.evaluation.metrics import pairwise_accuracy

logger = logging.getLogger(__name__)


def final_token_states(model, tokenizer, prompts: list[str], batch_size: int) -> np.ndarray:
    """Array (layers + 1, n, hidden): the normed final-token state after each layer."""
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: np.ndarray | None = None
    norm = model.model.norm
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            encoded = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True)
            hidden = model.model(**encoded, output_hidden_states=True).hidden_states
            last = encoded["attention_mask"].sum(dim=1) - 1
            index = torch.arange(len(rows))
            # hidden[-1] is already normed by the model; the others are residual streams.
            states = [norm(h[index, last]) for h in hidden[:-1]] + [hidden[-1][index, last]]
            stacked = torch.stack(states).float().numpy()
            if out is None:
                out = np.zeros((stacked.shape[0], len(prompts), stacked.shape[2]), np.float32)
            out[:, rows] = stacked
    assert out is not None
    return out


def probe_layers(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_frame
) -> list[dict]:
    """Ridge probe per layer: validation pairwise accuracy of the fitted scores."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = []
    for layer in range(train_x.shape[0]):
        probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(0, 5, 11)))
        probe.fit(train_x[layer], train_y)
        scores = probe.predict(val_x[layer])
        rows.append(
            {
                "layers_kept": layer,
                "val_pairwise_accuracy": float(
                    pairwise_accuracy(val_frame["query_key"], val_frame["grade"], scores)
                ),
                "alpha": float(probe[-1].alpha_),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path)
    parser.add_argument("--train-pairs", type=int, default=1500)
    parser.add_argument("--val-queries", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("runs/teacher-probe"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    splits = split_by_query(load_labeled(config.path("data")), seed=config.split.seed)
    train = splits["train"].sample(n=args.train_pairs, random_state=config.split.seed)
    val = query_subset(splits["validation"], args.val_queries, seed=config.split.seed)
    model, tokenizer = load_base(config.teacher, config.path("teacher_cache_dir"))
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / f"states-{args.train_pairs}-{args.val_queries}.npz"
    started = time.monotonic()
    if cache.is_file():
        saved = np.load(cache)
        train_x, val_x = saved["train"], saved["val"]
    else:
        template = config.teacher.prompt_template
        train_x = final_token_states(
            model,
            tokenizer,
            format_prompts(template, train["query"], train["title"]),
            args.batch_size,
        )
        val_x = final_token_states(
            model, tokenizer, format_prompts(template, val["query"], val["title"]), args.batch_size
        )
        np.savez(cache, train=train_x, val=val_x)
    seconds = time.monotonic() - started
    train_y = (train["grade"].to_numpy() - 1.0) / 2.0
    rows = probe_layers(train_x, train_y, val_x, val)
    report = {
        "train_pairs": len(train),
        "val_pairs": len(val),
        "val_queries": int(val["query_key"].nunique()),
        "threads": args.threads,
        "forward_seconds": seconds,
        "layers": rows,
    }
    (args.out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(f"{row['layers_kept']:>3} {row['val_pairwise_accuracy']:.4f} a={row['alpha']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
