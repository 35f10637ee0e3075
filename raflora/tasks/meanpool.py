"""Mean-pooling sequence classification as a transformers model (``model_type = "raflora-meanpool"``).

``logits = classifier(mean of the encoder's last hidden states over the non-padding tokens)``.
``AutoModelForSequenceClassification`` would classify from BERT's pooler on [CLS]; sentence
encoders such as all-MiniLM-L6-v2 were trained with mean pooling, and in a 3-round federated run
on BBC News the [CLS] head reached 0.35 accuracy where this head reached 0.92.

The config holds the encoder's own config (``encoder``) and where its pretrained weights come from
(``encoder_name_or_path``: a Hub id found in the local Hugging Face cache, or a folder). A folder
holding only ``config.json`` is a *base folder*: ``from_pretrained`` then loads the encoder from
``encoder_name_or_path`` and starts a new head. A folder written by ``save_pretrained`` loads as
usual. :func:`register` (run when this module is imported) registers both classes with the
transformers Auto classes; ``import raflora`` imports this module as soon as they load
(:mod:`raflora.hf_auto`).

This file is also the model code of a merged export: :meth:`MeanPoolForSequenceClassification.save_standalone`
copies it, as it is, into the folder (``modeling_raflora_meanpool.py``, named by ``auto_map`` in
``config.json``), so that ``AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)`` loads the folder where raflora is not installed. It therefore imports only
torch, transformers and the standard library (``tests/tasks/test_meanpool.py`` checks that). Where
raflora has registered these classes, transformers loads such a folder with them, not with the copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.configuration_utils import PretrainedConfig
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.models.auto.configuration_auto import AutoConfig
from transformers.models.auto.modeling_auto import AutoModel, AutoModelForSequenceClassification

MODEL_TYPE = "raflora-meanpool"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
CODE_FILE = "modeling_raflora_meanpool.py"  # this module's copy in a standalone folder


class MeanPoolConfig(PretrainedConfig):
    """``encoder``: the encoder's config (a config or its dict); ``encoder_name_or_path``: where
    its pretrained weights are (None for an encoder built in memory); ``encoder_kwargs``: keyword
    arguments for ``AutoModel.from_config`` (e.g. ``{"add_pooling_layer": False}``)."""

    # ``encoder`` is deliberately not declared a sub-config: transformers would then set the
    # wrapper's attention implementation on it, and a loaded encoder must keep its own.
    model_type = MODEL_TYPE

    def __init__(
        self,
        encoder: PretrainedConfig | dict | None = None,
        encoder_name_or_path: str | None = None,
        encoder_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        if isinstance(encoder, dict):
            encoder = AutoConfig.for_model(**encoder)
        self.encoder = encoder
        self.encoder_name_or_path = encoder_name_or_path
        self.encoder_kwargs = dict(encoder_kwargs or {})
        super().__init__(**kwargs)
        if self.id2label is not None and not self.label2id:  # transformers 5 no longer derives it
            self.label2id = {name: i for i, name in self.id2label.items()}

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size


class MeanPoolForSequenceClassification(PreTrainedModel):
    """An encoder (``backbone``) and a linear head (``classifier``) on its mean-pooled states.

    ``forward`` takes the usual ``input_ids``/``attention_mask`` (and optional ``labels``) and
    returns a ``SequenceClassifierOutput``."""

    config_class = MeanPoolConfig
    main_input_name = "input_ids"

    def __init__(self, config: MeanPoolConfig, encoder: nn.Module | None = None):
        super().__init__(config)
        if encoder is None:
            encoder = AutoModel.from_config(config.encoder, **config.encoder_kwargs)
        self.backbone = encoder
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The head starts from torch's own nn.Linear initialisation (the backbone initialises itself).
        if module is self.classifier:
            module.reset_parameters()

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **encoder_inputs: Any) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **encoder_inputs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: Any,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        logits = self.classifier(self.embed(input_ids, attention_mask, **extra))
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args: Any, **kwargs: Any):
        """As ``PreTrainedModel.from_pretrained``; a base folder (``config.json`` only) loads the
        encoder from ``encoder_name_or_path`` and starts a new head."""
        folder = Path(os.fspath(pretrained_model_name_or_path))
        if not folder.is_dir() or any((folder / name).is_file() for name in WEIGHT_FILES):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        config = kwargs.get("config") or MeanPoolConfig.from_pretrained(folder)
        if not config.encoder_name_or_path:
            raise FileNotFoundError(f"{str(folder)!r} holds no weights and its config names no encoder to load")
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype", torch.float32))
        encoder = AutoModel.from_pretrained(config.encoder_name_or_path, dtype=dtype, **config.encoder_kwargs)
        model = cls(config, encoder=encoder)
        model.config.name_or_path = str(folder)
        return model.eval()

    def save_standalone(self, folder: str | Path) -> Path:
        """``save_pretrained`` plus this module's source as ``modeling_raflora_meanpool.py`` and an
        ``auto_map`` naming its two classes in ``config.json``: transformers then loads the folder
        with ``trust_remote_code=True`` without raflora (see the module)."""
        folder = Path(folder)
        self.save_pretrained(folder)
        shutil.copyfile(__file__, folder / CODE_FILE)
        module = CODE_FILE.removesuffix(".py")
        config_file = folder / "config.json"
        config = json.loads(config_file.read_text())
        config["auto_map"] = {
            "AutoConfig": f"{module}.{MeanPoolConfig.__name__}",
            "AutoModelForSequenceClassification": f"{module}.{MeanPoolForSequenceClassification.__name__}",
        }
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")  # as save_pretrained writes it
        return folder

    def save_base(self, folder: str | Path, state_dict: dict | None = None) -> Path:
        """Write what reloads this model's frozen part: ``config.json`` alone when the encoder has
        a source (``encoder_name_or_path``), else the whole model (``save_pretrained``, with
        ``state_dict`` in place of this model's own when given)."""
        folder = Path(folder)
        if self.config.encoder_name_or_path:
            self.config.save_pretrained(folder)
        else:
            self.save_pretrained(folder, state_dict=state_dict)
        return folder


def mean_pool_classifier(
    encoder: PreTrainedModel,
    num_labels: int,
    seed: int,
    *,
    id2label: dict[int, str] | None = None,
    encoder_kwargs: dict | None = None,
) -> MeanPoolForSequenceClassification:
    """Wrap a loaded encoder (its weights kept as they are) with a new head of ``num_labels``:
    torch's ``nn.Linear`` initialisation, drawn first after ``torch.manual_seed(seed)`` (the global
    random state is left as it was)."""
    source = encoder.config.name_or_path or None
    config = MeanPoolConfig(
        encoder=encoder.config,
        encoder_name_or_path=source,
        encoder_kwargs=encoder_kwargs,
        num_labels=num_labels,
        **({"id2label": dict(id2label)} if id2label else {}),
    )
    with torch.random.fork_rng(devices=[]):
        model = MeanPoolForSequenceClassification(config, encoder=encoder)
        torch.manual_seed(seed)  # post_init drew the head once already: draw it again from the seed
        model.classifier.reset_parameters()
    return model


def register() -> None:
    """Register ``MeanPoolConfig`` with ``AutoConfig`` and ``MeanPoolForSequenceClassification``
    with ``AutoModelForSequenceClassification`` (idempotent)."""
    AutoConfig.register(MODEL_TYPE, MeanPoolConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(MeanPoolConfig, MeanPoolForSequenceClassification, exist_ok=True)


# Covers this module being imported before transformers' Auto classes. Not in a standalone folder's
# copy: transformers registers that one itself, and where raflora is loaded too, the copy must not
# replace raflora's classes under the same model type.
if __name__ == "raflora.tasks.meanpool":
    register()
