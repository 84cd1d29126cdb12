"""The ONNX Runtime session options every scorer of the service runs with."""

from __future__ import annotations

import onnxruntime as ort


def session_options(intra_op_threads: int, spinning: bool) -> ort.SessionOptions:
    """Options for one serving session: sequential, one feeding thread, no memory patterns.

    ``intra_op_threads`` 0 keeps ONNX Runtime's default (one per core).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One inference thread feeds the session; parallelism lives inside each operator.
    options.inter_op_num_threads = 1
    # A memory pattern is planned and kept for every input shape the session sees; served
    # batches have a new (rows, width) almost every time, so the patterns only pile up.
    # Measured on 2 cores (150 batches of random width 8-64): the representation item
    # graph, batch 64, RSS +104 MiB with patterns, +11 without; the cross-encoder, batch
    # 16, +25 vs +1 MiB; the same time either way (docs/reliability.md, soak).
    options.enable_mem_pattern = False
    if not spinning:
        # Idle ORT threads spin-wait by default, taking the cores that the tokenizer and
        # the event loop need between batches (measured: requests ~2x slower on 2 busy cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if intra_op_threads > 0:
        options.intra_op_num_threads = intra_op_threads
    return options
