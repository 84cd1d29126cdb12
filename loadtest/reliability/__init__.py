"""``python -m loadtest.reliability``: the long reliability and security run, with figures.

Scenarios (each against the service started on loopback from ``--model``):

(a) fuzzing: schemathesis over every operation of the OpenAPI schema, over HTTP, plus
    hand-written hostile requests (``loadtest.fuzz``, ``loadtest.badinput``);
(b) overload: capacity measured, then 0.5x, 2x and 5x of it offered open-loop;
(b') traffic: 64 concurrent 4-item requests ten times, a lone 10-item request and the
    peak throughput against the raw ONNX Runtime session, the score cache;
(c) faults: the teacher shadow hangs, raises or is absent; corrupt or missing model
    packages; SIGTERM under load;
(d) soak: steady load for 10 minutes (1 with ``--quick``), nothing may grow;
(e) security: image user, dependency ranges, HTTP surface, admin token, size limits.

It writes a Markdown report (``--out``, the table and the details) and the raw figures as
JSON next to the server logs under ``runs/reliability/``. The fast part of the same checks
runs in the test suite (``tests/reliability/``).
"""
