"""The round protocol of a federated LoRA run (sample, train, aggregate, diagnose, evaluate, log,
checkpoint), driven in-process by :func:`run_federation`. Imports nothing from the CLI."""

from raflora.federation.export import export_run
from raflora.federation.runner import run_federation

__all__ = ["export_run", "run_federation"]
