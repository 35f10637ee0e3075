"""One base model, one PEFT adapter per rank: scales, factor swapping and the global model."""

from __future__ import annotations

import torch

from raflora.client.adapters import AdapterModel
from raflora.lora import LoRAFactors, lora_scale
from raflora.tasks import build_task


def _model(scaling="rslora"):
    task = build_task("synthetic", dim=6, hidden=8, num_classes=3)
    scales = {r: lora_scale(scaling, 4.0, r) for r in (2, 4)}
    return task, AdapterModel(task.load_model(), task.target_modules, task.head_modules, [2, 4], scales)


def test_module_names_shapes_and_peft_scaling():
    _, model = _model()
    assert model.modules == ["fc1", "fc2"]
    assert model.shapes() == {"fc1": (8, 6), "fc2": (8, 8)}
    for r in (2, 4):
        for layer in model.layers.values():
            assert layer.scaling[f"r{r}"] == lora_scale("rslora", 4.0, r)


def test_peft_output_is_base_plus_scaled_factors():
    task, model = _model()
    g = torch.Generator().manual_seed(0)
    factors = {
        m: LoRAFactors(A=torch.randn(4, n, generator=g), B=torch.randn(mm, 4, generator=g), scale=model.scales[4])
        for m, (mm, n) in model.shapes().items()
    }
    model.activate(4)
    model.set_factors(4, factors)
    x = torch.randn(5, 6, generator=g)
    model.peft.eval()
    with torch.no_grad():
        got = model.peft(x)
        head = model.get_head(4)
        with model.global_model({m: f.delta() for m, f in factors.items()}, head) as merged:
            want = merged(x)
    assert torch.allclose(got, want, atol=1e-5)
    back = model.get_factors(4)
    assert all(torch.equal(back[m].A, factors[m].A) and back[m].scale == factors[m].scale for m in factors)


def test_global_model_restores_base_weights_bit_for_bit():
    _, model = _model()
    before = {m: model.base_weight(m).clone() for m in model.modules}
    deltas = {m: torch.full(model.base_weight(m).shape, 0.1) for m in model.modules}
    with model.global_model(deltas, model.get_head(None)):
        assert not torch.equal(model.base_weight("fc1"), before["fc1"])
    assert all(torch.equal(model.base_weight(m), before[m]) for m in model.modules)


def test_activate_trains_only_that_adapter():
    _, model = _model()
    model.activate(2, train_a=False)
    trainable = sorted(n for n, p in model.peft.named_parameters() if p.requires_grad)
    assert trainable and all(".r2." in n for n in trainable)
    assert not any("lora_A" in n for n in trainable)
    assert any("modules_to_save" in n for n in trainable)
