"""Command line: ``raflora simulate`` (more commands arrive with the runtime)."""

from __future__ import annotations

import argparse
import sys

from raflora.aggregation import AGGREGATORS


def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ranks must be comma-separated integers, got {text!r}")
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f"ranks must be positive, got {text!r}")
    return ranks


def cmd_simulate(args: argparse.Namespace) -> int:
    from raflora.simulate import simulate_collapse

    print(f"rank collapse without training: ranks {args.ranks}, {args.rounds} rounds")
    print("rho_rmin = share of the global update's energy in its top r_min directions (1.0 = collapsed)")
    traces = [simulate_collapse(m, args.ranks, rounds=args.rounds, seed=args.seed) for m in args.methods]
    header = "round " + " ".join(f"{t.method:>10}" for t in traces)
    print(header)
    for k in range(0, args.rounds + 1):
        if k % max(1, args.rounds // 10) == 0 or k == args.rounds:
            print(f"{k:5d} " + " ".join(f"{t.rho[k]:10.3f}" for t in traces))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raflora",
        description="Federated LoRA fine-tuning with heterogeneous client ranks (raFLoRA and baselines).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="show rank collapse without training (clients resend their slice with noise)",
        description="Clients repeatedly receive their rank-r slice of the global update and send it back "
        "with small noise; prints rho_rmin per round for each method.",
    )
    sim.add_argument("--methods", nargs="+", default=["flexlora", "zero_pad", "raflora"],
                     choices=[m for m in AGGREGATORS if m not in ("fedit", "ffa", "fedsa")])
    sim.add_argument("--ranks", type=_ranks, default=_ranks("2,4,4,8,8,16,16,16"), help="comma-separated client ranks")
    sim.add_argument("--rounds", type=int, default=30)
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=cmd_simulate)
    demo = sub.add_parser("demo", help="the default demonstration")
    demo.set_defaults(func=lambda a: cmd_simulate(
        argparse.Namespace(methods=["flexlora", "zero_pad", "raflora"], ranks=_ranks("2,4,4,8,8,16,16,16"), rounds=30, seed=0)
    ))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
