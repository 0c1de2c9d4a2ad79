"""Fault injection for Conveyor: seeded, bounded scenarios and a no-loss checker.

Ground truth lives outside the queue. Every job appends ``start``/``end`` lines to a
per-process log (one ``write()`` each, so a ``kill -9`` loses nothing already written),
producers log every enqueue as ``ok``/``failed``/``unknown``, and the harness logs every
fault it injects. :mod:`chaos.checker` compares that record with the engine's final state
and prints one JSON line per run. Run ``python -m chaos --help``.
"""
