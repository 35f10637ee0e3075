"""The ServerApp: Flower's own loop (``Strategy.start``) with raflora's aggregation as the strategy."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from raflora.peft_io import save_peft_adapter
from raflora.runtimes.flower.peft_strategy import LoRAStrategy

app = ServerApp()


def serve(grid: Grid, context: Context):
    """Run the federation; returns the strategy (its ``result``, ``rejected``) and Flower's Result."""
    cfg = context.run_config
    ranks = [int(r) for r in str(cfg["ranks"]).split(",")]
    strategy = LoRAStrategy(
        str(cfg["method"]),
        ranks,
        lora_alpha=float(cfg["lora-alpha"]),
        max_weight=float(cfg["max-weight"]),
        min_train_nodes=len(ranks),
        min_available_nodes=len(ranks),
        fraction_evaluate=1.0,
    )
    result = strategy.start(
        grid,
        ArrayRecord(),  # round 1: every node starts from its own PEFT init (B = 0)
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord({"local-steps": int(cfg["local-steps"]), "lr": float(cfg["lr"])}),
    )
    if cfg.get("out") and strategy.result is not None:
        lora = {"r": max(ranks), "lora_alpha": float(cfg["lora-alpha"]), "target_modules": ["fc1", "fc2"]}
        save_peft_adapter(strategy.result, str(cfg["out"]), lora)
    return strategy, result


@app.main()
def main(grid: Grid, context: Context) -> None:
    serve(grid, context)
