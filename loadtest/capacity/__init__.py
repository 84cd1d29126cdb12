"""Capacity planning by simulation: ``python -m loadtest.capacity``.

``hpa`` is the HorizontalPodAutoscaler's algorithm, ``cluster`` the pods and their queues
under a trace, ``trace`` the traffic (generated or CSV), ``report`` reads a benchmark's
JSON and writes the table and the plot. See docs/deploy.md.
"""
