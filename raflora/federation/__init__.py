"""The round protocol of a federated LoRA run (sample, train, aggregate, diagnose, evaluate), the
server's state and its checkpoints, and exports. The runtimes (:mod:`raflora.runtimes`) drive it;
it imports nothing from them or from the CLI."""

from raflora.federation.export import export_run

__all__ = ["export_run"]
