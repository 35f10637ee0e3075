"""Server-side performance benchmarks for raflora (not timed tests).

Each module runs alone (``python -m benchmarks.server --quick``) and returns its rows from a
plain function, so :mod:`benchmarks.run_all` and the smoke test in ``tests/benchmarks`` can call
them at any size. Numbers and the commands that produce them are in ``docs/performance.md``.
"""
