"""Teacher labeling on Ray Data: the same label cache, many teacher replicas.

``python -m training label --engine ray`` runs :func:`label_pairs_ray` instead of the local
loop: the pairs still to label become a ``ray.data`` dataset, ``map_batches`` runs them
through a pool of teacher actors (each loads the teacher package once; one GPU each when
the cluster has GPUs) and the driver appends the labels to the same resumable CSV cache as
the local engine, chunk by chunk as they stream back, so a run stopped anywhere resumes
where it stopped, with either engine.

Locally Ray starts a one-machine cluster (``num_cpus`` = this machine's cores); with
``RAY_ADDRESS`` set it joins that cluster instead. Ray lives in the ``ray`` extra: neither
serving nor the local engine import it.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from training.label import LabelWriter, cached_labels, pending, seal

logger = logging.getLogger(__name__)

_COLUMNS = ["query_key", "product_id", "query", "title"]


class TeacherActor:
    """One teacher replica: loads the package once, labels batches of pairs."""

    def __init__(
        self,
        package_dir: str,
        cache_dir: str,
        threads: int,
        batch_size: int,
        device: str,
        precision: str = "fp32",
    ) -> None:
        from relevance_core.teacher import load_teacher

        self.teacher = load_teacher(package_dir, cache_dir, threads, device, precision)
        self.teacher.batch_size = batch_size

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        probabilities = self.teacher.predict_proba(batch["query"].tolist(), batch["title"].tolist())
        return pd.DataFrame(
            {
                "query_key": batch["query_key"].to_numpy(),
                "product_id": batch["product_id"].to_numpy(),
                "p_irrelevant": probabilities[:, 0],
                "p_partial": probabilities[:, 1],
                "p_exact": probabilities[:, 2],
            }
        )


def _connect(num_cpus: int | None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False)


def label_pairs_ray(
    pairs: pd.DataFrame,
    path: Path,
    *,
    package_dir: Path,
    cache_dir: Path,
    limit: int | None = None,
    chunk_size: int = 64,
    max_seconds: float | None = None,
    actors: int = 1,
    threads_per_actor: int = 1,
    batch_size: int = 16,
    gpus_per_actor: float | None = None,
    num_cpus: int | None = None,
    precision: str = "fp32",
) -> pd.DataFrame:
    """Label the first ``limit`` pairs with no cached label on Ray; returns their cached labels.

    ``gpus_per_actor`` None: one GPU per actor when the cluster has GPUs, else none.
    """
    import ray

    wanted, todo = pending(pairs, path, limit)
    if todo.empty:
        return cached_labels(wanted, path)
    _connect(num_cpus)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    device = "cuda" if gpus_per_actor > 0 else "cpu"
    # At least one block per actor, or the pool's other actors get no work.
    blocks = max(actors, min(len(todo) // chunk_size, 64 * actors), 1)
    dataset = ray.data.from_pandas(
        todo.loc[:, _COLUMNS].reset_index(drop=True), override_num_blocks=blocks
    )
    labeled = dataset.map_batches(
        TeacherActor,
        fn_constructor_kwargs={
            "package_dir": str(package_dir),
            "cache_dir": str(cache_dir),
            "threads": threads_per_actor,
            "batch_size": batch_size,
            "device": device,
            "precision": precision,
        },
        batch_size=chunk_size,
        batch_format="pandas",
        concurrency=actors,
        num_cpus=threads_per_actor,
        num_gpus=gpus_per_actor,
    )
    started, written = time.monotonic(), 0
    with LabelWriter(path) as writer:
        for batch in labeled.iter_batches(batch_size=chunk_size, batch_format="pandas"):
            probabilities = batch[["p_irrelevant", "p_partial", "p_exact"]].to_numpy(np.float64)
            writer.write(batch["query_key"], batch["product_id"], probabilities)
            written += len(batch)
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
    logger.info("ray: %d pairs labeled by %d actor(s) -> %s", written, actors, path)
    seal(path)
    return cached_labels(wanted, path)
