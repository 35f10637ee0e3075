"""Cost of the per-round rank-collapse diagnostics: ``result.singular_values`` on every module.

The runtime calls it every round for every method. Since singular values come from the QR
``R`` factors and the core alone (:func:`raflora.lora.product_singular_values`), a method whose
clients do not need singular vectors (flora, florist, zero_pad, ...) no longer pays for
``Q`` and ``U``/``V``. The ``full SVD`` column is the previous way (:func:`raflora.lora.product_svd`
on the same factors), timed in the same process, so the two columns are before and after.

    python -m benchmarks.diagnostics            # 64 modules of 4096 x 4096
    python -m benchmarks.diagnostics --quick    # 8 modules of 1024 x 1024
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from benchmarks.common import (
    LLAMA_DIM,
    LLAMA_MODULES,
    LLAMA_RANKS,
    machine_line,
    make_updates,
    markdown_table,
    median,
    repeat,
    set_threads,
)
from raflora import aggregate
from raflora.lora import product_svd


def run(
    dim: int = LLAMA_DIM,
    num_modules: int = LLAMA_MODULES,
    methods: Sequence[str] = ("flora", "zero_pad", "florist"),
    repeats: int = 3,
) -> dict:
    updates = make_updates(LLAMA_RANKS, num_modules, dim, dim)
    rows = []
    for method in methods:
        result = aggregate(method, updates)

        def values_only():
            result._sv.clear()  # time the computation, not the cache
            for module in result.modules:
                result.singular_values(module)

        def full_svd():
            for module in result.modules:
                factors = result.delta_factors(module)
                product_svd(factors.B, factors.A)

        after = repeat(values_only, repeats)
        before = repeat(full_svd, repeats)
        rows.append(
            {
                "method": method,
                "full_svd_s": median(before),
                "values_only_s": median(after),
                "speedup": median(before) / median(after),
            }
        )
    return {"rows": rows, "config": {"dim": dim, "modules": num_modules, "repeats": repeats}}


def table(out: dict) -> str:
    cfg = out["config"]
    rows = [
        [r["method"], f"{r['full_svd_s']:.3g}", f"{r['values_only_s']:.3g}", f"{r['speedup']:.2f}x"]
        for r in out["rows"]
    ]
    return (
        f"Diagnostics (singular values of every module), {cfg['modules']} modules of {cfg['dim']} x {cfg['dim']}, "
        f"median of {cfg['repeats']}.\n\n"
        + markdown_table(["method", "before: full product_svd s", "after: singular values only s", "speedup"], rows)
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 modules of 1024 x 1024")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    out = run(1024, 8) if args.quick else run()
    print(f"machine: {machine_line()}\n")
    print(table(out))
    return out


if __name__ == "__main__":
    main()
