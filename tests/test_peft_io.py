"""PEFT adapters in and out of raflora's math, against PEFT's own ``get_delta_weight`` and dense
float64 references (tiny random LLaMA, no download)."""

from __future__ import annotations

import pytest
import torch
from aggregation.reference import F64, best_rank, ref_delta, rel_err  # tests/ is on sys.path

from raflora import aggregate, load_into_peft, peft_state_dict, save_peft_adapter, update_from_peft

TARGETS = ["q_proj", "v_proj", "down_proj"]


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config)


def peft_client(rank: int, seed: int, **lora):
    """A PEFT model of ``rank`` whose factors are random (as after training: B is no longer 0)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=lora.pop("lora_alpha", 16), target_modules=TARGETS, **lora)
    model = get_peft_model(tiny_llama(), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def peft_deltas(model, adapter: str = "default") -> dict[str, torch.Tensor]:
    """PEFT's own ``get_delta_weight`` of every LoRA layer, by raflora's module name."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {
        name[len(prefix) :]: m.get_delta_weight(adapter).detach().to(F64)
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer)
    }


def assert_deltas(update, expected: dict[str, torch.Tensor]) -> None:
    assert sorted(update.factors) == sorted(expected)
    for module, delta in expected.items():
        f = update.factors[module]
        got = f.scale * (f.B.to(F64) @ f.A.to(F64))
        assert rel_err(got, delta) < 1e-6, module


@pytest.mark.parametrize(
    "lora",
    [{}, {"use_rslora": True}, {"alpha_pattern": {"v_proj": 3.0}, "rank_pattern": {"down_proj": 2}}],
    ids=["lora", "rslora", "patterns"],
)
def test_update_from_model_state_dict_and_folder_equal_peft_delta(tmp_path, lora):
    from peft import get_peft_model_state_dict

    model = peft_client(4, seed=1, **lora)
    expected = peft_deltas(model)
    assert any(d.abs().sum() > 0 for d in expected.values())
    from_model = update_from_peft(model, "a", 10)
    assert_deltas(from_model, expected)
    assert from_model.client_id == "a" and from_model.num_examples == 10
    if lora.get("rank_pattern"):
        assert from_model.factors["model.layers.0.mlp.down_proj"].rank == 2

    config = model.peft_config["default"]
    assert_deltas(update_from_peft(get_peft_model_state_dict(model), "a", 10, config=config), expected)
    assert_deltas(update_from_peft(model.state_dict(), "a", 10, config=config.to_dict()), expected)
    model.save_pretrained(tmp_path / "adapter")
    assert_deltas(update_from_peft(tmp_path / "adapter", "a", 10), expected)
    assert_deltas(update_from_peft(get_peft_model_state_dict(model), "a", 10, config=tmp_path / "adapter"), expected)


def test_module_names_are_the_model_paths():
    update = update_from_peft(peft_client(2, seed=0), 0, 1)
    assert sorted(update.factors) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.self_attn.v_proj",
    ]


def test_bad_sources_are_refused_with_one_line():
    from peft import get_peft_model_state_dict

    model = peft_client(2, seed=0)
    state = get_peft_model_state_dict(model)
    with pytest.raises(ValueError, match="config= .* or scale="):
        update_from_peft(state, 0, 1)
    with pytest.raises(ValueError, match="carries its own scaling"):
        update_from_peft(model, 0, 1, scale=2.0)
    with pytest.raises(ValueError, match=r"lora_A has rank 2, the adapter config says r = 8"):
        update_from_peft(state, 0, 1, config={"r": 8, "lora_alpha": 16})
    broken = {k: v for k, v in state.items() if not k.endswith("q_proj.lora_B.weight")}
    with pytest.raises(ValueError, match=r"'model.layers.0.self_attn.q_proj': lora_B.weight is missing"):
        update_from_peft(broken, 0, 1, scale=1.0)
    with pytest.raises(ValueError, match="DoRA"):
        update_from_peft(peft_client(2, seed=0, use_dora=True), 0, 1)
    with pytest.raises(ValueError, match="adapter folder 'nowhere' does not exist"):
        update_from_peft("nowhere", 0, 1)
    with pytest.raises(ValueError, match="no LoRA factors"):
        update_from_peft({"lm_head.weight": torch.zeros(2, 2)}, 0, 1, scale=1.0)


def three_clients():
    models = [peft_client(r, seed=10 + r) for r in (2, 4, 8)]
    updates = [update_from_peft(m, f"c{i}", n) for i, (m, n) in enumerate(zip(models, (30, 50, 20)))]
    return models, updates


@pytest.mark.parametrize("method", ["raflora", "flexlora"])
def test_saved_adapter_loads_with_the_best_rank_r_delta(tmp_path, method):
    """Aggregate 3 PEFT clients of ranks 2/4/8, write each client's start as an adapter of its
    rank, load it with ``PeftModel.from_pretrained``: PEFT's delta is the best rank-r
    approximation of the dense float64 aggregate."""
    from peft import PeftModel

    models, updates = three_clients()
    result = aggregate(method, updates)
    for model in models:
        config = model.peft_config["default"]
        folder = save_peft_adapter(result, tmp_path / f"{method}-r{config.r}", config)
        loaded = PeftModel.from_pretrained(tiny_llama(), folder)
        assert loaded.peft_config["default"].r == config.r
        for module, delta in peft_deltas(loaded).items():
            expected = best_rank(ref_delta(method, updates, module), config.r)
            assert rel_err(delta, expected) < 1e-5, (method, config.r, module)
            f = result.client_factors(module, config.r, config.lora_alpha / config.r)
            assert rel_err(delta, f.delta().to(F64)) < 1e-6


def test_state_dict_and_load_into_peft_match_client_factors():
    from peft import set_peft_model_state_dict

    models, updates = three_clients()
    result = aggregate("raflora", updates)
    for model in models:
        rank = model.peft_config["default"].r
        scale = model.peft_config["default"].lora_alpha / rank
        twin = peft_client(rank, seed=99)
        set_peft_model_state_dict(twin, peft_state_dict(result, rank, scale))
        assert load_into_peft(model, result) == list(result.modules)
        for got in (peft_deltas(model), peft_deltas(twin)):
            for module, delta in got.items():
                assert rel_err(delta, result.client_factors(module, rank, scale).delta().to(F64)) < 1e-6


def test_load_into_peft_merges_for_flora_and_keeps_fedsa_b():
    models, updates = three_clients()
    model = models[1]
    base = {m: layer.get_base_layer().weight.detach().clone() for m, layer in _layers(model).items()}
    result = aggregate("flora", updates)
    load_into_peft(model, result)
    for module, layer in _layers(model).items():
        merged = layer.get_base_layer().weight.to(F64)
        assert rel_err(merged - base[module].to(F64), ref_delta("flora", updates, module)) < 1e-5
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0  # a fresh adapter: B = 0

    model = models[2]
    own_b = {m: layer.lora_B["default"].weight.detach().clone() for m, layer in _layers(model).items()}
    result = aggregate("fedsa", updates)
    load_into_peft(model, result)
    for module, layer in _layers(model).items():
        assert torch.equal(layer.lora_B["default"].weight, own_b[module])
        assert rel_err(layer.lora_A["default"].weight.detach(), ref_delta("fedsa", updates, module)[:8]) < 1e-6


def _layers(model):
    from peft.tuners.lora import LoraLayer

    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def test_save_peft_adapter_refusals(tmp_path):
    models, updates = three_clients()
    config = models[0].peft_config["default"]
    with pytest.raises(ValueError, match="flora: clients merge the global update into the base weight"):
        save_peft_adapter(aggregate("flora", updates), tmp_path / "f", config)
    with pytest.raises(ValueError, match="fedsa: each client keeps its own B"):
        save_peft_adapter(aggregate("fedsa", updates), tmp_path / "f", config)
    result = aggregate("raflora", updates)
    with pytest.raises(ValueError, match="target_modules .* miss module 'model.layers.0.mlp.down_proj'"):
        save_peft_adapter(result, tmp_path / "f", {**config.to_dict(), "target_modules": ["q_proj", "v_proj"]})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        save_peft_adapter(result, tmp_path / "mine", config)
    assert (tmp_path / "mine" / "adapter_config.json").read_text() == "{}"
    save_peft_adapter(result, tmp_path / "mine", config, rank=4, overwrite=True)
    assert '"r": 4' in (tmp_path / "mine" / "adapter_config.json").read_text()
