"""Fault-injection scenarios of the bridge's promise: "200 means stored, and every stored message
is processed once; every reply is delivered exactly once; nothing lost, nothing sent twice".

Each scenario runs the dev host (``python -m local``) and the Cloud API simulator
(``python -m local.simulator``) as subprocesses on a fresh database, plays Meta itself (signed
webhooks, retried until 200), injects its fault, and records its counts.

    .venv/bin/pytest tests/faults                            # short size, part of `make test`
    FAULT_SCALE=full .venv/bin/pytest tests/faults -m faults # full size (hours)
    .venv/bin/python -m scripts.fault_suite --scale full     # the same, plus a markdown summary

Counts are printed in the terminal summary and written to ``.local/faults/results-<scale>.json``
(``FAULT_RESULTS`` overrides the path); every process's log is kept under pytest's temporary
directory (its path is in the JSON) and scanned by the last scenario.
"""
