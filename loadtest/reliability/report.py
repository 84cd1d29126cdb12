"""The Markdown report of a reliability run: context, one table, and what each row means."""

from __future__ import annotations

from typing import Any

from loadtest.reliability.common import Row

FIXED_IN_SERVICE = """\
## Failures this suite found, fixed in the service

Found while building the suite (on the tiny model) and fixed in `service/`, not excluded:

- A lone UTF-16 surrogate (`"\\ud800"`) in a query or text reached the Rust tokenizer: 500 on
  the query, a misleading 413 on a text. Now 422 naming the field, as TEI's parser does.
- A body that is not UTF-8, or JSON nested past Python's recursion limit, got FastAPI's
  undocumented 400 with a message naming no field; now the usual 422 (`body: invalid JSON`).
- A body without `Content-Type` was handed to validation as raw bytes (FastAPI's strict
  default) and refused with a puzzling 422; it is read as JSON, as documented.
- The OpenAPI schema said requests were valid that the server refuses: a blank query, more
  items than `RELEVANCE_MAX_ITEMS`, `deadline_ms` above the maximum, `truncation_direction`
  `Left`, `/shadow/score`'s lower item limit; the admin endpoint's 401/415/503 were
  undocumented. The schema now publishes the configured limits and every status.
- Lax parsing took `"true"`, `1` or `"0.5"` for booleans and numbers (`truncate`,
  `raw_scores`, `top_k`, `mirror_rate`) and unknown fields on the admin body; now strict.
- A teacher that raised turned `/shadow/score` into a 500 with a traceback; now 503
  (`shadow_failed`).
- Overload: admission was bounded only by queue size (4096 pairs, about 15 s of the FP32
  model on 2 cores), so under 2x load admitted requests waited out their deadline and most
  ended in 504. Admission is now also bounded by latency: a request is refused (429, at
  once) when the pairs ahead of it plus its own would, at the measured throughput, take
  longer than `RELEVANCE_ADMISSION_SLO_FACTOR` ({factor:g} by default) of its SLO budget,
  counting the measured time requests spend outside the model (parsing, tokenizing, answering); the
  throughput is measured while work is queued (gaps included, pairs and seconds averaged
  apart) and seeded from the warm-up. Deadlines now count from the request's arrival, not
  from the end of body parsing.
- Overload where the HTTP work, not the model, is short of CPU (seen with the tiny model):
  requests queued on the event loop and even 429s took seconds. Scoring requests are now
  refused before their body is read when `RELEVANCE_MAX_CONCURRENT_REQUESTS` (64) are in
  progress (which also bounds memory), when the event loop stays more than
  `RELEVANCE_MAX_LOOP_LAG_MS` (100) behind, or when the queue alone is past its budget.
- FastAPI ran the trivial dependencies (settings, engine, content-type check) on worker
  threads: four thread hand-offs per request and a thread count that grew with
  concurrency. They are `async def` now.
- `RELEVANCE_TEACHER_DIR` naming a missing directory imported torch before failing, slowing
  `/score` for seconds; it now fails at once.
- Overload on the real package (2-core Intel Xeon, 2026-12-03): admitted p99 116% / 131% of
  the SLO at 2x / 5x, measured on the server's own clock (`x-total-time`) as on the
  client's, so not the load client. Forecasts scaled by the mean lateness were right on
  average, but the queue is kept full to the budget under overload and the spread alone
  made requests late. Admission's tail guard now holds each due time to `lateness / q` of
  it, `q` the 98th percentile (`RELEVANCE_ADMISSION_TAIL_QUANTILE`) of how far requests
  admitted near their edge overran the cost model in the last 20 s. Found with it: the
  early check before a body is read judged its probe from the wrong instant and refused
  everything while the guard was active (goodput fell to 70%); fixed and tested.
"""


def _default_factor() -> float:
    from service.settings import Settings

    return float(Settings.model_fields["admission_slo_factor"].default)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(
    rows: list[Row],
    *,
    command: str,
    started: str,
    elapsed_s: float,
    machine: dict[str, Any],
    model: dict[str, Any],
    commit: str,
    notes: list[str],
    json_path: str,
) -> str:
    held = sum(r.held for r in rows)
    lines = [
        "# Reliability and security",
        "",
        f"Produced by `{command}` on {started} ({elapsed_s / 60:.1f} min), commit {commit}.",
        "",
    ]
    for note in notes:
        lines += [f"> **{note}**", ""]
    load = machine.get("load_average")
    lines += [
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"load average (1/5/15 min) at start {load}, at the end "
        f"{machine.get('load_average_end')}; Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items()),
        f"- Model: {model.get('name')} {model.get('version')} ({model.get('backbone')}), "
        f"{model.get('variant')} graph on {model.get('provider')}, from `{model.get('dir')}`",
        f"- SLO: {model.get('slo')}",
        f"- Verdict: **{held} of {len(rows)} rows held**"
        + ("" if held == len(rows) else " (see the rows marked NO)"),
        f"- Raw figures: `{json_path}` (with the server logs next to it)",
        "",
        "| Scenario | Load / inputs | Held | What must hold | Numbers |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_cell(r.scenario)} | {_cell(r.load)} | {'yes' if r.held else '**NO**'} | "
            f"{_cell(r.what)} | {_cell(r.numbers)} |"
        )
    lines += [
        "",
        "## How to read it",
        "",
        "- *Lost*: a request that got no HTTP answer (timeout, connection cut). *Admitted*: "
        "answered 200 or 504 (it was queued); 429 and 503 are refusals, answered at once.",
        "- The SLO budget of a request of n items is `RELEVANCE_SLO_LATENCY_MS * max(1, "
        "n / RELEVANCE_SLO_ITEMS)`; overload requests have 20-100 items, so their budget is "
        "the SLO latency itself.",
        "- Recovery: from the moment the load stopped until three probes in a row are within "
        "1.5x (+10 ms) of the same request's latency on the idle server.",
        "- *Goodput*: pairs of the requests answered 200 within their SLO budget, per second "
        "from the first send to the last answer; *capacity*: pairs/s answered 200 by 3 "
        "closed-loop clients. Half load and overload are multiples of the capacity's "
        'requests/s. Load rows send `"cache": false` (their requests are cycled; a repeat '
        "answered from the score cache would be throughput the model never delivered).",
        "- *Raw session*: the ONNX Runtime session alone (`loadtest.bench.measure_ceiling`: "
        "pre-tokenized batches of the same request mix in request order and sorted by length, "
        "a ladder of batch sizes, idle threads spinning and not, and one single-thread session "
        "per core running side by side; the best wins) at the graph, provider and intra-op "
        "threads the server reports in `/info`, measured in the same run with the server idle. "
        "The lone request's cost of a pair is its p50 over its 10 items.",
        "- A row that did not hold ends with *broken:* and the rules it broke.",
        "- Overload traffic is sent with `loadtest.rawhttp` (one connection per request): "
        "httpx needed more CPU per request than the server on this machine and turned "
        "client-side queueing into seconds of apparent latency.",
        "- The fast part of these checks runs with the tests: `pytest tests/reliability` "
        "(schemathesis in-process, hostile inputs, a 2-second overload, teacher and package "
        "faults, security).",
        "",
        FIXED_IN_SERVICE.format(factor=_default_factor()),
    ]
    return "\n".join(lines)
