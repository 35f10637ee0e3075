"""How the stacked server round grows with the number of clients and with rank.

The stacked path costs ``O((m + n) R k + k^3)`` with ``R = sum r_i`` and ``k = min(R, m, n)``:
two QRs of ``m x R`` and ``n x R`` stacks, an SVD of the ``k x k`` core, and the products
that rotate the core's singular vectors back. While ``R <= min(m, n)`` that is the issue's
``O((m + n) R^2 + R^3)``; once ``R`` passes ``min(m, n)`` (1,000 clients of rank 2-8 on a
2048-wide module) the core is as large as the module and the cost stops growing as ``R^2``.

Each row reports the measured time, the model's prediction, and both as ratios to the previous
row; ``c`` is the fitted constant (seconds per model unit, least squares through the origin
over the rows), so ``measured / (c * model)`` near 1 means the model explains the row.

    python -m benchmarks.scaling            # one 2048 x 2048 module, raflora
    python -m benchmarks.scaling --quick    # one 256 x 256 module, up to 100 clients
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from benchmarks.common import machine_line, make_updates, markdown_table, median, repeat, set_threads
from raflora import aggregate


def model_cost(m: int, n: int, R: int) -> float:
    """The cost model in multiply-adds (constants dropped)."""
    k = min(R, m, n)
    return float((m + n) * R * k + k**3)


def measure(method: str, ranks: Sequence[int], dim: int, repeats: int) -> dict:
    """Median seconds of ``aggregate`` and of ``client_factors`` for every client, one module."""
    updates = make_updates(ranks, 1, dim, dim)
    module = next(iter(updates[0].factors))
    agg_times, hand_times = [], []

    def once():
        start = time.perf_counter()
        result = aggregate(method, updates)
        result.singular_values(module)  # the SVD (lazy in the result) belongs to the aggregation
        middle = time.perf_counter()
        for u in updates:
            f = u.factors[module]
            result.client_factors(module, f.rank, f.scale)
        agg_times.append(middle - start)
        hand_times.append(time.perf_counter() - middle)

    total = repeat(once, repeats, warmup=0)
    return {
        "clients": len(ranks),
        "R": sum(ranks),
        "model": model_cost(dim, dim, sum(ranks)),
        "round_s": median(total),
        "aggregate_s": median(agg_times),
        "client_factors_s": median(hand_times),
    }


def _fit(rows: list[dict]) -> None:
    """Fit ``time = c * model`` (least squares through the origin) and add the ratios."""
    c = sum(r["round_s"] * r["model"] for r in rows) / sum(r["model"] ** 2 for r in rows)
    previous = None
    for r in rows:
        r["fit"] = r["round_s"] / (c * r["model"])
        r["measured_ratio"] = r["round_s"] / previous["round_s"] if previous else None
        r["model_ratio"] = r["model"] / previous["model"] if previous else None
        previous = r


def run(
    dim: int = 2048,
    client_counts: Sequence[int] = (10, 100, 1000),
    client_ranks: Sequence[int] = (2, 4, 8),
    rank_sweep: Sequence[int] = (4, 8, 16, 32, 64),
    rank_clients: int = 10,
    method: str = "raflora",
    repeats: int = 3,
) -> dict:
    """Two sweeps: clients (ranks cycling through ``client_ranks``) and a common rank for
    ``rank_clients`` clients. Returns ``{"clients": rows, "ranks": rows, "config": ...}``."""
    by_clients = []
    for count in client_counts:
        ranks = [client_ranks[i % len(client_ranks)] for i in range(count)]
        # The largest rounds take seconds each and vary little next to that; one run is enough.
        reps = repeats if count <= 100 else 1
        by_clients.append(measure(method, ranks, dim, reps))
    by_rank = [measure(method, [r] * rank_clients, dim, repeats) for r in rank_sweep]
    _fit(by_clients)
    _fit(by_rank)
    return {
        "clients": by_clients,
        "ranks": by_rank,
        "config": {
            "dim": dim,
            "method": method,
            "client_ranks": list(client_ranks),
            "rank_clients": rank_clients,
            "repeats": repeats,
        },
    }


def table(out: dict) -> str:
    cfg = out["config"]
    headers = [
        "clients",
        "R = sum r_i",
        "round s",
        "aggregate s",
        "client_factors s",
        "measured ratio",
        "model ratio",
        "measured / fit",
    ]

    def rows(items):
        return [
            [
                r["clients"],
                r["R"],
                f"{r['round_s']:.3g}",
                f"{r['aggregate_s']:.3g}",
                f"{r['client_factors_s']:.3g}",
                "-" if r["measured_ratio"] is None else f"{r['measured_ratio']:.3g}",
                "-" if r["model_ratio"] is None else f"{r['model_ratio']:.3g}",
                f"{r['fit']:.2f}",
            ]
            for r in items
        ]

    return (
        f"Scaling with clients: {cfg['method']}, one {cfg['dim']} x {cfg['dim']} module, ranks cycling "
        f"{cfg['client_ranks']}, median of {cfg['repeats']} (1 for more than 100 clients). Ratios are to "
        f"the row above; model = (m+n) R k + k^3, k = min(R, m, n).\n\n"
        + markdown_table(headers, rows(out["clients"]))
        + f"\n\nScaling with rank: {cfg['rank_clients']} clients of one common rank, same module.\n\n"
        + markdown_table(headers, rows(out["ranks"]))
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one 256 x 256 module, up to 100 clients")
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--method", default="raflora")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        out = run(args.dim or 256, (10, 100), rank_sweep=(4, 8, 16), method=args.method, repeats=args.repeats)
    else:
        out = run(args.dim or 2048, method=args.method, repeats=args.repeats)
    print(f"machine: {machine_line()}\n")
    print(table(out))
    return out


if __name__ == "__main__":
    main()
