"""What the command line writes: Python logging (``--log-level``, ``--log-file``) and ``--version``.

The per-round lines and the other lines a command prints go to the ``raflora`` logger; on the
console they are written through ``tqdm.write`` so that they never break a progress bar, and a
``--log-file`` gets the same lines with a time stamp. An error is printed on stderr as one line by
the CLI and also logged to the file. Warnings of the libraries that tell the user nothing they can
act on (:data:`NOISE`: deprecations inside transformers that its own code or PEFT's triggers) are
hidden; every other warning is still shown.
"""

from __future__ import annotations

import argparse
import logging
import re
import warnings
from importlib import metadata

LOGGER = "raflora"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LIBRARIES = ("torch", "transformers", "peft", "flwr")
# (category, start of the message) of the library warnings a command hides: raised by one library's
# call into another, on every run, with nothing for the user to change
NOISE = (
    # PEFT asks transformers whether checkpointing is on; transformers 5 renamed the property
    (FutureWarning, "`is_gradient_checkpointing` is deprecated"),
)


def hide_noise() -> None:
    """Filter the :data:`NOISE` warnings (the command line's; a library user keeps them)."""
    for category, start in NOISE:
        warnings.filterwarnings("ignore", message=re.escape(start), category=category)


class TqdmHandler(logging.Handler):
    """A console handler that writes through ``tqdm.write`` (stdout), above any open bar; a record
    logged with ``extra={"file_only": True}`` is for the log file alone."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):
            return
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record))
        except Exception:  # a closed stdout must not turn a finished run into a traceback
            self.handleError(record)


def setup_logging(level: str = "INFO", log_file: str | None = None) -> logging.Logger:
    """The ``raflora`` logger at ``level`` with a console handler and, with ``log_file``, a file
    handler (appending, so that a resumed run continues its log). Replaces the handlers of a
    previous call (tests call ``main`` many times in one process)."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    # propagate stays on: with no root handler (a plain command line) nothing is printed twice,
    # and a host application's or pytest's root handlers still see raflora's records
    logger.setLevel(level)
    console = TqdmHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file:
        file = logging.FileHandler(log_file, encoding="utf-8")
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file)
    return logger


def output_options() -> argparse.ArgumentParser:
    """--log-level and --log-file, which every command takes (an argparse parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LEVELS,
        help="INFO (default): the per-round and summary lines; DEBUG adds the config's overrides "
        "and the device; WARNING: errors and warnings only",
    )
    common.add_argument(
        "--log-file",
        metavar="PATH",
        help="also write every line (with a time stamp) to PATH, "
        "appending: the per-round lines, the summaries and the error, if any",
    )
    return common


def version_line() -> str:
    """raflora's version and the versions of the libraries its numbers depend on (from the
    installed metadata: importing transformers would cost seconds)."""
    from raflora.version import __version__

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return f"raflora {__version__} ({', '.join(f'{name} {installed(name)}' for name in LIBRARIES)})"


def version_action() -> type[argparse.Action]:
    """``--version`` as one line: argparse's own version action wraps it at the terminal width."""

    class Version(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(version_line())
            parser.exit()

    return Version
