"""Command line: ``raflora run | export | demo | simulate | compare | sweep | report`` (thin: parse, call, print).
``python -m raflora`` is the same.

Config problems (unknown key, wrong type, rank above r_max, unknown method or task, missing file)
print one line ``error: ...`` and exit with code 2 before any work starts; so does a folder that
another command is writing (its lock names the holder). A run that finishes without aggregating
any round exits with code 3. A write the disk refuses (full, read-only, no permission) prints one
line and exits with code 74 (``EX_IOERR`` of sysexits.h); what was written before stays whole. Ctrl-C
prints one line (for a run: the round it completed and the command that resumes it) and exits with
code 130; the run folder keeps its last complete checkpoint and its lock is released. Progress bars
are drawn only on a terminal (stderr), so a log file or a pipe gets the per-round lines alone. What
a command says goes to the ``raflora`` logger (:mod:`raflora.cli_output`: ``--log-level``, ``--log-file``).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
from pathlib import Path

from raflora.aggregation import AGGREGATORS
from raflora.cli_output import LOGGER, hide_noise, output_options, setup_logging, version_action
from raflora.compare import DEFAULT_METHODS

log = logging.getLogger(LOGGER)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "bbc_minilm.toml"
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


class Interrupted(Exception):
    """Ctrl-C during a run: the one line that says how far it got and how to go on."""


def bars(quiet: bool) -> bool:
    """Progress bars: unless ``--quiet``, and only on a terminal (a log file gets no ``\r`` lines)."""
    return not quiet and sys.stderr.isatty()


def resume_line(out: str) -> str:
    """What a run interrupted now says: the last round its checkpoints hold, and how to resume."""
    import shlex

    from raflora.federation.state import checkpoint_round, latest_checkpoint

    latest = latest_checkpoint(Path(out) / "checkpoints")
    done = checkpoint_round(latest) if latest is not None else None
    if not done:
        return f"interrupted before round 1 ended; nothing to resume in {out} (run the command again)"
    return f"interrupted after round {done}; resume with: raflora run --resume {shlex.quote(str(out))}"


def _ranks(text: str) -> list[int]:
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ranks must be comma-separated integers, got {text!r}") from None
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f"ranks must be positive, got {text!r}")
    return ranks


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def method_summaries() -> list[str]:
    """``name (option=default, ...)`` for every method, from the method classes."""
    out = []
    for name, cls in AGGREGATORS.items():
        options = ", ".join(
            f"{f.name}={f.default!r}"
            if f.default_factory is dataclasses.MISSING
            else f"{f.name}={f.default_factory()!r}"
            for f in cls.option_fields()
        )
        out.append(f"{name} ({options})" if options else name)
    return out


def simulates(cls) -> bool:
    """Whether ``raflora simulate`` can play the method: clients resend their whole rank-r slice,
    so it needs mixed ranks, a trained A and nothing kept on the client."""
    return cls.mixed_ranks and cls.trains_a and not cls.private


def simulated_methods() -> list[str]:
    return [name for name, cls in AGGREGATORS.items() if simulates(cls)]


def _method_list(text: str) -> list[str]:
    """``a,b`` (as compare takes them); several such words (``a b``) add up."""
    return [name.strip() for name in text.split(",") if name.strip()]


def cmd_simulate(args: argparse.Namespace) -> int:
    from raflora.config import ConfigError
    from raflora.runtimes.folder import plural
    from raflora.simulate import simulate_collapse

    methods = [m for word in args.methods for m in _method_list(word)]
    unknown = [m for m in methods if m not in simulated_methods()]
    if unknown or not methods:
        raise ConfigError(
            f"simulate --methods: {', '.join(map(repr, unknown)) or 'no method'} cannot be simulated; "
            f"choose from {','.join(simulated_methods())}"
        )
    log.info(f"rank collapse without training: ranks {args.ranks}, {args.rounds} {plural(args.rounds, 'round')}")
    log.info("rho_rmin = share of the global update's energy in its top r_min directions (1.0 = collapsed)")
    traces = [simulate_collapse(m, args.ranks, rounds=args.rounds, seed=args.seed) for m in methods]
    log.info("round " + " ".join(f"{t.method:>10}" for t in traces))
    for k in range(0, args.rounds + 1):
        if k % max(1, args.rounds // 10) == 0 or k == args.rounds:
            log.info(f"{k:5d} " + " ".join(f"{t.rho[k]:10.3f}" for t in traces))
    return 0


def _run(
    config_path,
    *,
    out=None,
    method=None,
    rounds=None,
    resume=None,
    overwrite=False,
    stop_after=None,
    quiet=False,
    settings=(),
    runtime=None,
) -> int:
    from raflora.client.device import resolve_device
    from raflora.config import ConfigError
    from raflora.config_io import load_config, parse_assignment

    legacy = False
    if config_path is None:
        if not resume:
            raise ConfigError("give a config file, or --resume DIR to continue the run in DIR")
        # the run folder's config.toml is the config, with every override the run was started with
        config_path, legacy = Path(resume) / "config.toml", True
        if not config_path.is_file():
            raise ConfigError(f"cannot resume: {str(resume)!r} holds no config.toml of a run")
    overrides = dict(parse_assignment(text) for text in settings)
    overrides.update(
        {
            k: v
            for k, v in {
                "run.out": str(resume or out) if (resume or out) else None,
                "federation.method": method,
                "run.rounds": rounds,
                "run.runtime": runtime,
            }.items()
            if v is not None
        }
    )
    config = load_config(config_path, overrides, legacy=legacy)  # ConfigError -> exit 2 in main()
    log.debug(f"config {config_path} with overrides {overrides}")
    from raflora.runtimes import check_runtime, run

    check_runtime(config)  # a missing extra is reported like a config problem
    device = resolve_device(config.run.device)  # a device this machine lacks: refused before the start line
    log.debug(f"device {device} (run.device = {config.run.device!r})")
    from raflora.runtimes.folder import exit_code
    from raflora.tasks.common import progress_bars

    with progress_bars(bars(quiet)):
        try:
            metrics = run(
                config,
                resume=bool(resume),
                overwrite=overwrite,
                stop_after=stop_after,
                log=log.info,
                progress=bars(quiet),
            )
        except KeyboardInterrupt:
            raise Interrupted(resume_line(config.out)) from None
    return exit_code(config, metrics)  # 3: no round was aggregated


def cmd_run(args: argparse.Namespace) -> int:
    return _run(
        args.config,
        out=args.out,
        method=args.method,
        rounds=args.rounds,
        resume=args.resume,
        overwrite=args.overwrite,
        stop_after=args.stop_after,
        quiet=args.quiet,
        settings=args.set,
        runtime=args.runtime,
    )


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from raflora.config import config_schema

    print(json.dumps(config_schema(), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return _run(DEMO_CONFIG, out="runs/demo", overwrite=True, quiet=args.quiet)


def cmd_export(args: argparse.Namespace) -> int:
    from raflora.config import ConfigError
    from raflora.federation import export_run

    merged = args.merged is not None
    if isinstance(args.merged, str):
        if args.out:
            raise ConfigError(f"give the export folder once (--merged {args.merged} or {args.out})")
        args.out = args.merged
    out = Path(args.out or Path(args.run) / ("merged" if merged else "export"))
    written = export_run(args.run, out, merged=merged, rank=args.rank, overwrite=args.overwrite)
    kind = "the merged model" if merged else "a PEFT adapter"
    log.info(f"wrote {kind} to {written}")
    return 0


def _print_summary(report: dict, folder: Path) -> None:
    from raflora.report.tables import group_rows, has_seeds, markdown_table, paired_rows, summary_table
    from raflora.runtimes.folder import plural

    log.info("\n".join(summary_table(report)))
    if has_seeds(report):
        log.info("\nover seeds: mean ± std [min, max]")
        log.info("\n".join(markdown_table(*group_rows(report))))
        if report["paired"]:
            log.info(f"\npaired differences, reference {report['reference']} minus the other method, seed by seed")
            log.info("\n".join(markdown_table(*paired_rows(report))))
    if report.get("sweep"):
        from raflora.report.tables import sweep_rows

        log.info("\nsweep: one row per grid point")
        log.info("\n".join(markdown_table(*sweep_rows(report))))
    log.info(
        f"wrote {folder / 'report.html'}, report.md, report.json and {len(report['plots'])} "
        f"{plural(len(report['plots']), 'plot')} to {folder}"
    )


def _comparison_args(args: argparse.Namespace) -> dict:
    """compare's and sweep's shared options, parsed (ConfigError before any run for a bad one)."""
    from raflora.compare import parse_methods, parse_seeds
    from raflora.config_io import parse_assignment

    overrides = dict(parse_assignment(text) for text in args.set)
    overrides["run.rounds"] = args.rounds
    return {
        "methods": parse_methods(args.methods),
        "seeds": parse_seeds(args.seeds),
        "reference": args.reference,
        "overrides": overrides,
        "overwrite": args.overwrite,
        "log": log.info,
        "progress": bars(args.quiet),
    }


def cmd_compare(args: argparse.Namespace) -> int:
    from raflora.compare import compare
    from raflora.tasks.common import progress_bars

    options = _comparison_args(args)
    with progress_bars(bars(args.quiet)):
        folder, report = compare(args.config, options.pop("methods"), args.out, tuned=args.tuned, **options)
    _print_summary(report, folder)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from raflora.sweep import parse_grid, sweep
    from raflora.tasks.common import progress_bars

    options = _comparison_args(args)
    points = parse_grid(args.grid)
    with progress_bars(bars(args.quiet)):
        folder, report = sweep(args.config, points, options.pop("methods"), args.out, **options)
    _print_summary(report, folder)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from raflora.report import load_runs
    from raflora.report.destination import check_target, report_folder, write_report_folder

    folder = Path(args.out) if args.out else report_folder(args.runs)
    load_runs(args.runs)  # runs that cannot be reported leave an old report in place
    check_target(folder, args.overwrite)
    _print_summary(write_report_folder(args.runs, folder, reference=args.reference), folder)
    return 0


def _comparison_options(command: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments compare and sweep share: the config, the methods, seeds and reference, and the
    per-run overrides."""
    command.add_argument("config", help="TOML config file (see docs/usage.md)")
    command.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        metavar="M1,M2,...",
        help=f"comma-separated methods (default {','.join(DEFAULT_METHODS)}): {', '.join(AGGREGATORS)}",
    )
    command.add_argument(
        "--seeds",
        metavar="S1,S2,...",
        help="run every method once per seed (run.seed), e.g. "
        "--seeds 0,1,2: the seed sets the partition, the sampled clients and the initial adapters",
    )
    command.add_argument(
        "--reference",
        metavar="METHOD",
        help="the method the others are compared with, seed by "
        "seed, in the same setting (default: the first of --methods)",
    )
    command.add_argument("--out", help=out_help)
    command.add_argument("--rounds", type=_positive, help="number of rounds (overrides [run] rounds)")
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value in every run (as for run; repeatable)",
    )
    command.add_argument("--overwrite", action="store_true", help="replace runs already in the output folder")
    command.add_argument("--quiet", action="store_true", help="no progress bar (the per-round lines are still printed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raflora",
        description="Federated LoRA fine-tuning with heterogeneous client ranks (raFLoRA and baselines).",
    )
    parser.add_argument(
        "--version",
        action=version_action(),
        nargs=0,
        help="print the versions of raflora, torch, transformers, peft and flwr, and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = output_options()

    run = sub.add_parser(
        "run",
        help="run a federation from a TOML config",
        parents=[common],
        description="Run a federation (in this process, or under Flower with --runtime flower). Writes "
        "config.toml, run.json, metrics.jsonl, checkpoints/ and adapter/ to the output folder ([run] "
        "out, default runs/<name>). raflora run --resume DIR continues the run in DIR from its own "
        "config.toml. One run at a time writes a folder: a second one exits with code 2 naming the first.",
    )
    run.add_argument(
        "config",
        nargs="?",
        help="TOML config file (see docs/usage.md); optional with --resume, "
        "which reads DIR/config.toml (given both, they must agree)",
    )
    run.add_argument("--out", help="output folder (overrides [run] out)")
    run.add_argument(
        "--method",
        help="aggregation method, with its options at their defaults (overrides "
        "[federation.method]; set its options with --set federation.method.KEY=VALUE): "
        + "; ".join(method_summaries()),
    )
    run.add_argument("--rounds", type=_positive, help="number of rounds (overrides [run] rounds)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set train.lr=0.01 --set ranks.ranks=[4,8] "
        "(VALUE is read as TOML; repeatable)",
    )
    run.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its last checkpoint (DIR is the "
        "output folder; its config.toml is the config unless CONFIG is given)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in the output folder (kept until the new run writes its first checkpoint); "
        "files no raflora run wrote are never replaced",
    )
    run.add_argument(
        "--stop-after", type=_positive, metavar="K", help="stop after round K (checkpoint kept, resumable)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar (the per-round lines are still printed)")
    run.add_argument(
        "--runtime",
        metavar="NAME",
        help="embedded (this process, the default) or flower (Flower's "
        "simulation engine, same numbers; pip install .[flower]); overrides [run] runtime",
    )
    run.set_defaults(func=cmd_run)

    export = sub.add_parser(
        "export",
        help="write a run's global model as a PEFT adapter folder or merged weights",
        parents=[common],
        description="Export the newest valid checkpoint of a run folder. Default: a PEFT "
        "adapter folder with a model card (rank [ranks] r_max, the best rank-r approximation of "
        "the global update): AutoPeftModelForSequenceClassification (after import raflora) or "
        "AutoPeftModelForCausalLM loads it, raflora.tasks.vision.load_adapter for vision. "
        "--merged: the exact merged model, a save_pretrained folder that AutoModelFor... loads "
        "(text, with trust_remote_code=True and no raflora needed: the folder holds its model code; "
        "reasoning; raflora.tasks.vision.load_merged for vision). OUT must be new or empty "
        "(or an earlier export, with --overwrite), and not inside the run's own files.",
    )
    export.add_argument("run", help="run folder (holds config.toml and checkpoints/)")
    export.add_argument("out", nargs="?", help="folder to write (default: RUN/export, or RUN/merged with --merged)")
    export.add_argument(
        "--merged",
        nargs="?",
        const=True,
        metavar="OUT",
        help="write merged weights instead of an adapter (optionally into OUT)",
    )
    export.add_argument("--rank", type=_positive, help="adapter rank (default: [ranks] r_max of the run)")
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier export in OUT (only the files it wrote, listed in OUT/raflora-files.json); "
        "without it OUT must be new or empty. Files raflora did not write are never replaced",
    )
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser(
        "demo",
        help="the default run: MiniLM + BBC News, 10 clients, raflora, into runs/demo",
        parents=[common],
        description=f"Runs {DEMO_CONFIG.name} (all-MiniLM-L6-v2 on BBC News, 10 clients with "
        "Dirichlet 0.5 label skew, ranks 2/4/8/16, raflora) into runs/demo, replacing a previous demo.",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    sim = sub.add_parser(
        "simulate",
        parents=[common],
        help="show rank collapse without training (clients resend their slice with noise)",
        description="Clients repeatedly receive their rank-r slice of the global update and send it back "
        "with small noise; prints rho_rmin per round for each method.",
    )
    sim.add_argument(
        "--methods",
        nargs="+",
        default=["flexlora,zero_pad,raflora"],
        metavar="M1,M2,...",
        help="comma-separated methods, as for compare (default flexlora,zero_pad,raflora): "
        f"{','.join(simulated_methods())}",
    )
    sim.add_argument("--ranks", type=_ranks, default=_ranks("2,4,4,8,8,16,16,16"), help="comma-separated client ranks")
    sim.add_argument("--rounds", type=_positive, default=30, help="rounds to simulate (default 30)")
    sim.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    sim.set_defaults(func=cmd_simulate)

    cmp = sub.add_parser(
        "compare",
        help="run one config once per method (and seed), then report them side by side",
        parents=[common],
        description="Runs CONFIG once per method (same seed: the same clients, ranks, data and "
        "sampling) into OUT/<method>/, each a normal run folder, then writes the report of "
        "the runs into OUT/report/. With --seeds, every method runs once per seed into "
        "OUT/<method>/seed-<k>/ and the report shows mean and spread over the seeds and the "
        "paired difference reference minus each other method. Every config is checked "
        "before the first run.",
    )
    _comparison_options(cmp, "comparison folder (default runs/<run.name>-compare)")
    cmp.add_argument(
        "--tuned",
        metavar="SWEEP_DIR",
        help="run each method at its own point of this sweep (e.g. --grid train.lr=...), the one "
        "with the best mean validation metric after the last round (the sweep must have run with "
        "eval.validation > 0); the choices go to OUT/tuned.json and the report pairs the methods "
        "across the keys they chose",
    )
    cmp.set_defaults(func=cmd_compare)

    swp = sub.add_parser(
        "sweep",
        help="compare methods (and seeds) at each point of a grid of config values, one report",
        parents=[common],
        description="Runs every method (and seed) at every grid point into OUT/point-<p>/<method>/ "
        "(.../seed-<k>/ with --seeds), then one report over all runs in OUT/report/ with a "
        "table of points x methods. Each --grid is one point that sets one or more keys, "
        'e.g. --grid "ranks.policy=groups ranks.ranks=[16,4,2] ranks.shares=[0.1,0.4,0.5]"; '
        "KEY=V1,V2,... is one point per value. A method option (federation.method.tau: florist) "
        "applies only to the methods that have it; the others are not run again for it. "
        "Every config is checked before the first run.",
    )
    _comparison_options(swp, "sweep folder (default runs/<run.name>-sweep)")
    swp.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="'KEY=VALUE [KEY=VALUE ...]' | KEY=V1,V2,...",
        help="one grid point (VALUE is read as TOML, as for --set), or one point per value of one key; repeatable",
    )
    swp.set_defaults(func=cmd_sweep)

    rep = sub.add_parser(
        "report",
        help="tables and plots of finished runs: report.html, report.md, report.json, PNGs",
        parents=[common],
        description="Reads each run folder's config.toml and metrics.jsonl and writes report.html "
        "(one self-contained page), report.md (summary and per-round tables), report.json (the "
        "same numbers) and plots (metric, rho_rmin, energy per rank partition and round, bytes "
        "per method). Runs whose configs differ only in run.seed are one group: mean and spread "
        "over the seeds. The runs must be of one task.",
    )
    rep.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (each holds config.toml and "
        "metrics.jsonl); a compare or sweep folder stands for every run below it",
    )
    rep.add_argument(
        "--out",
        help="report folder (default: RUN_DIR/report for one folder, a run or a compare or "
        "sweep folder; report-<name>+<name>... beside several runs)",
    )
    rep.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report already in the report folder (without it, an existing report is never written over)",
    )
    rep.add_argument(
        "--reference",
        metavar="METHOD",
        help="paired differences are METHOD minus each other "
        "method of the same setting, seed by seed (default: the method of the first run)",
    )
    rep.set_defaults(func=cmd_report)

    schema = sub.add_parser(
        "schema",
        parents=[common],
        help="print the config file's JSON Schema (for editors that complete and check TOML keys)",
        description="Print the JSON Schema of a raflora config file: every section and key with its "
        "type, bounds, default and help, [federation.method] and [task] by name (docs/usage.md).",
    )
    schema.set_defaults(func=cmd_schema)
    return parser


IO_ERROR = 74  # EX_IOERR (sysexits.h): a write the disk refused
IO_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}


def io_error_line(err: OSError) -> str:
    """One line for a write the disk refused: what, where, and that nothing written before was lost."""
    where = f" {err.filename}" if err.filename else ""
    return (
        f"error: cannot write{where}: {err.strerror or err} (errno {errno.errorcode.get(err.errno, err.errno)}); "
        "the files written before are whole: free space or fix the permissions, then run again (--resume DIR continues a run)"
    )


def main(argv: list[str] | None = None) -> int:
    from raflora.config import ConfigError

    # The per-round lines are the progress report; transformers' weight-loading bar is noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    hide_noise()

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        try:
            setup_logging(args.log_level, args.log_file)
        except OSError as err:
            raise ConfigError(f"--log-file {args.log_file!r}: {err.strerror or err}") from None
        return int(args.func(args) or 0)
    except Interrupted as err:
        return _error(str(err), INTERRUPTED)
    except KeyboardInterrupt:
        return _error("interrupted", INTERRUPTED)
    except ConfigError as err:
        # one line, whatever the message quotes (a library's OSError text runs over several)
        return _error("error: " + " ".join(line.strip() for line in str(err).splitlines() if line.strip()), 2)
    except OSError as err:
        if err.errno not in IO_ERRNOS:
            raise  # a bug (a file the code itself lost): the traceback, exit 1
        return _error(io_error_line(err), IO_ERROR)


def _error(line: str, code: int) -> int:
    print(line, file=sys.stderr)
    try:
        log.error(line, extra={"file_only": True})  # the console has it already, on stderr
    except OSError:
        pass  # the log file's disk is the full one
    return code


if __name__ == "__main__":
    sys.exit(main())
