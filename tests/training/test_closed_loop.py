"""The closed loop on tiny models, on one running service: serve with mirroring -> traffic
-> ingest -> distill -> export -> gate -> canary -> hot swap to the new version.

The current package is a random tiny student; the shadow's teacher is a fake one that
scores lexical overlap (deterministic, and learnable by a tiny student), reporting the
identity of the configured teacher package so that its pairs are the ones distill uses.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from test_mirror_ingest import fake_teacher_package, mirror_config

from service.app import create_app
from service.model_package import load_package
from service.settings import Settings
from training.__main__ import main
from training.artifacts import PipelineError, load_dataset, read_run, students_dir
from training.gate import gate_verdict
from training.mirror_ingest import read_mirror
from training.onnx_export.stage import stage_export
from training.promote import promote
from training.stages import stage_distill, stage_ingest_mirror

_WORD = re.compile(r"[a-z]+")


class OverlapTeacher:
    """Share of query words in the text, plus a bonus for the query's head noun (its last
    word): 1.0 / 0.6 / 0.4 / 0 on the tiny data's four grades."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = name.rsplit("-", 1)[-1]

    def score(self, queries: list[str], texts: list[str]) -> np.ndarray:
        out = []
        for query, text in zip(queries, texts, strict=True):
            words, have = _WORD.findall(query.lower()), set(_WORD.findall(text.lower()))
            overlap = sum(w in have for w in words) / len(words)
            out.append(0.8 * overlap + 0.2 * (words[-1] in have))
        return np.asarray(out)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        assert await app.state.models.wait_ready(60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def traffic(dataset) -> list[dict[str, Any]]:
    """One request per query: its four judged items and five new ones of graded overlap."""
    labeled = dataset.labeled
    chrome = labeled[labeled["title"].str.endswith("in Chrome")].reset_index(drop=True)
    requests = []
    for index, (key, group) in enumerate(labeled.groupby("query_key", sort=True)):
        query = group["query"].iloc[0]
        first, last = query.split()[0].title(), query.split()[-1].title()
        new = [
            f"{query.title()} Replacement Part",
            f"Premium {last} Set",
            f"{first} Accessory Box",
            *chrome["title"].iloc[[(index + 11) % len(chrome), (index + 17) % len(chrome)]],
        ]
        items = [
            {"id": pid, "text": t}
            for pid, t in zip(group["product_id"], group["title"], strict=True)
        ]
        items += [{"id": f"new-{index}-{n}", "text": t} for n, t in enumerate(new)]
        requests.append({"query": query, "items": items, "key": key})
    return requests


@pytest.mark.slow
def test_closed_loop_on_tiny_models(
    tmp_path: Path, tiny_dataset: Path, tiny_student_dir: Path, fp32_package: Path
) -> None:
    config = mirror_config(
        tmp_path,
        tiny_dataset,
        mirror={"holdout": 0.34},
        student={
            "backbone": str(tiny_student_dir),
            "batch_size": 8,
            "items_per_query": 4,
            "epochs": 8.0,
            "eval_every_steps": 5,
            "validation_queries": None,
            "threads": 1,
            "learning_rate": 3e-3,
        },
        export={"variants": ["fp32"], "version": "0.1.0"},
        # Both packages have one architecture: the cost check's own test is in test_gate.py,
        # here a wide margin keeps a busy machine's timing noise out of the verdict.
        gate={"cost_rounds": 3, "cost_pairs": 64, "cost_margin": 1.0},
    )
    models_dir = config.path("models_dir")
    teacher = fake_teacher_package(models_dir)
    current = models_dir / "current"
    shutil.copytree(fp32_package, current)
    dataset = load_dataset(config)
    splits = {name: set(frame["query_key"]) for name, frame in dataset.splits.items()}
    requests = traffic(dataset)
    repeated = next(r for r in requests if r["key"] in splits["train"])
    train_requests = [r for r in requests if r["key"] in splits["train"]]
    eval_requests = [r for r in requests if r["key"] not in splits["train"]]
    assert eval_requests and train_requests
    output = tmp_path / "mirror" / "pairs.jsonl"
    # One service through the whole loop: it keeps serving while the next student trains.
    app = create_app(
        Settings(
            models_dir=models_dir,
            models={"minilm-homedepot": "current"},
            admin_token="secret",
            shadow_mirror_rate=1.0,
            shadow_queue_size=64,
            shadow_output=output,
            score_cache_mb=0,
            tune_budget_s=0,
        ),
        teacher_loader=lambda: OverlapTeacher(teacher),
    )
    sent = [*requests, repeated]

    async def score(client: httpx.AsyncClient, request: dict[str, Any]) -> dict[str, Any]:
        body = {"query": request["query"], "items": request["items"]}
        response = await client.post("/score", json=body)
        assert response.status_code == 200, response.text
        return response.json()["model"]

    async def loop() -> None:
        async with serving(app) as client:
            # 1. Live traffic on the current package, every request mirrored to the teacher.
            assert await app.state.shadow.wait_loaded(10)
            for request in sent:
                assert await score(client, request) == {"name": "minilm-homedepot", "version": "0"}
            for _ in range(1000):  # the mirror worker writes in the background
                lines = output.read_text().splitlines() if output.exists() else []
                if len(lines) == 9 * len(sent):
                    break
                await asyncio.sleep(0.02)
            app.state.shadow.mirror_rate = 0.0  # what follows is not traffic to learn from
            candidate = await asyncio.to_thread(train_and_gate, config, current, output)

            # 5. Canary: half the queries (sticky per query), then the hot swap.
            admin = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),  # the same running app
                base_url="http://test",
                headers={"Authorization": "Bearer secret"},
            )
            async with admin:
                step = await promote(
                    admin, candidate, "minilm-homedepot", "canary", canary_share=0.5
                )
                assert step["loaded"]["version"] == "0.1.0"
                served = [await score(client, r) for r in requests]
                assert served == [await score(client, r) for r in requests]  # sticky
                versions = {m["version"] for m in served}
                assert versions == {"0", "0.1.0"}, served
                assert {m["name"] for m in served if m["version"] == "0.1.0"} == {
                    "minilm-homedepot-canary"
                }
                step = await promote(admin, candidate, "minilm-homedepot", "swap")
                assert step["swapped"]["version"] == "0.1.0" and step["canary_removed"]
                after = [await score(client, r) for r in requests]
                assert {json.dumps(m) for m in after} == {
                    json.dumps({"name": "minilm-homedepot", "version": "0.1.0"})
                }
                described = (await admin.get("/admin/models")).json()
                assert described["canary"] is None
                assert [m["name"] for m in described["models"]] == ["minilm-homedepot"]
                # A package without a passing verdict is refused before the service is asked.
                with pytest.raises(PipelineError, match="no gate verdict"):
                    await promote(admin, current, "minilm-homedepot", "swap")
            info = (await client.get("/info")).json()["model"]["manifest"]
            assert info["version"] == "0.1.0"
            assert info["evaluation"]["gate"]["verdict"] == "pass"

    asyncio.run(loop())

    # What the ingest counted, for the record (train_and_gate asserted it).
    lines = output.read_text().splitlines()
    assert {json.loads(line)["teacher"] for line in lines[: 9 * len(sent)]} == {teacher}


def train_and_gate(config, current: Path, output: Path) -> Path:
    """Steps 2-4 (blocking): ingest, distill, export, gate; returns the gated candidate."""
    dataset = load_dataset(config)
    splits = {name: set(frame["query_key"]) for name, frame in dataset.splits.items()}
    requests = traffic(dataset)
    train_requests = [r for r in requests if r["key"] in splits["train"]]
    eval_requests = [r for r in requests if r["key"] not in splits["train"]]
    teacher = json.loads(output.read_text().splitlines()[0])["teacher"]
    first = output.read_text().splitlines()[0]
    # What a real file also holds: a torn line, a bad score, another teacher's record.
    with open(output, "a") as handle:
        handle.write('{"query": "angle bracket", "text": "torn\n')
        handle.write(json.dumps({**json.loads(first), "teacher_score": 7}) + "\n")
        other = {"query": train_requests[0]["query"], "text": "Another Teacher's Item"}
        handle.write(json.dumps({**other, "teacher_score": 0.5, "teacher": "t2"}) + "\n")

    # 2. Ingest: evaluation queries, human-judged pairs and repeats are dropped and counted.
    report = stage_ingest_mirror(config, [output])
    assert report["invalid"]["malformed"] == 1 and report["invalid"]["bad_score"] == 1
    assert report["dropped"] == {
        "eval_query": 9 * len(eval_requests),
        "human_labeled": 4 * len(train_requests) + 4,  # + the repeated request's judged items
        "teacher_labeled": 0,
        "duplicate": 5,  # the repeated request's new items
    }
    entry = report["teachers"][teacher]
    assert entry["pairs"] == 5 * len(train_requests)
    assert entry["holdout_pairs"] > 0 and entry["train_pairs"] > 0
    assert report["teachers"]["t2"]["pairs"] == 1 and not report["teachers"]["t2"]["configured"]
    mirror_file = Path(entry["file"])
    held = read_mirror(mirror_file).query("role == 'holdout'")

    # 3. Distill: human pairs plus the ingested training pairs, never the held-back ones.
    (run_dir,) = stage_distill(config, sizes=[0])
    record = read_run(run_dir)
    assert run_dir.name == f"human-only-mirror-n{entry['train_pairs']}"
    assert record["mirror"]["pairs"] == entry["train_pairs"]
    assert record["train_pairs_by_source"] == {
        "human": len(dataset.splits["train"]),
        "teacher": entry["train_pairs"],
    }
    assert record["mirror"]["files"][0]["file"] == f"{teacher}/{mirror_file.name}"
    # Distill again with nothing new: the run is current and skipped.
    trained_at = (run_dir / "run.json").stat().st_mtime_ns
    assert stage_distill(config, sizes=[0]) == [students_dir(config) / run_dir.name]
    assert (run_dir / "run.json").stat().st_mtime_ns == trained_at

    # 4. Export the candidate beside the current package, and gate it.
    candidate_config = config.model_copy(
        update={"paths": config.paths.model_copy(update={"default_package": "tiny-candidate"})}
    )
    candidate = stage_export(candidate_config, student=run_dir.name)
    manifest = load_package(candidate).manifest
    assert manifest.version == "0.1.0"
    assert manifest.provenance["student"]["mirror"]["pairs"] == entry["train_pairs"]
    config_file = config.save(output.parent / "config.json")
    gate = ["gate", "--config", str(config_file)]
    status = main([*gate, "--candidate", str(candidate), "--current", str(current)])
    verdict = gate_verdict(candidate)
    assert verdict is not None and verdict["heldback"]["pairs"] == len(held)
    assert verdict["heldback"]["files"] == [f"{teacher}/{mirror_file.name}"]
    checks = verdict["checks"]
    assert checks["validation"]["candidate"] > checks["validation"]["current"], checks
    assert checks["mirror"]["candidate"] > checks["mirror"]["current"], checks
    assert checks["cost"]["passed"], checks
    assert status == 0 and verdict["verdict"] == "pass" and verdict["failed"] == []
    load_package(candidate)  # the checksums still hold after the verdict was written
    return candidate
