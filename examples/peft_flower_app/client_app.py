"""An ordinary PEFT LoRA training loop as a Flower ClientApp: no raflora inside.

Each train message says the node's rank and LoRA alpha (``config``) and carries the LoRA state dict
it starts from (``arrays``, empty in round 1: the node keeps PEFT's init). The node trains a few
steps on its own data and replies with ``get_peft_model_state_dict`` and its example count.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

app = ClientApp()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def node_data(context: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's private data: a seeded synthetic classification set of its own size."""
    node = int(context.node_config.get("partition-id", context.node_id))
    g = torch.Generator().manual_seed(1000 + node)
    x = torch.randn(40 + 20 * node, 16, generator=g)
    return x, (x[:, :4] + 0.3 * node).argmax(dim=1)


def peft_model(msg: Message):
    """The base model (the same on every node) with a LoRA adapter of the rank the server says."""
    config = msg.content["config"]
    torch.manual_seed(0)
    lora = LoraConfig(
        r=int(config["rank"]),
        lora_alpha=float(config["lora-alpha"]),
        use_rslora=bool(config["use-rslora"]),
        target_modules=["fc1", "fc2"],
    )
    model = get_peft_model(Net(), lora)
    start = msg.content["arrays"]
    if len(start):
        set_peft_model_state_dict(model, start.to_torch_state_dict())
    if not config["trains-a"]:  # ffa: every node keeps the shared A
        for name, p in model.named_parameters():
            p.requires_grad_(p.requires_grad and "lora_A" not in name)
    return model


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = peft_model(msg)
    x, y = node_data(context)
    config = msg.content["config"]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=float(config["lr"]))
    for _ in range(int(config["local-steps"])):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    state = {k: v.detach() for k, v in get_peft_model_state_dict(model).items()}
    metrics = MetricRecord({"num-examples": len(x), "train-loss": loss.item()})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = peft_model(msg)
    x, y = node_data(context)
    with torch.no_grad():
        logits = model(x)
    metrics = {
        "num-examples": len(x),
        "eval-loss": float(nn.functional.cross_entropy(logits, y)),
        "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
    }
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
