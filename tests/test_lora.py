"""The LoRA baseline (HF PEFT layers injected into the frozen base) behind the shared wrapper."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoConfig, LlamaConfig

from pipeline.core.config import ConfigError, PipelineConfig
from pipeline.engine.models import GEMMA_PACKAGE_SOURCE
from pipeline.engine.planning import KNOWN_MODELS
from pipeline.methods import LoRA, SoftPromptModel, ZeroShot, lora_params_per_rank, lora_rank
from tests.helpers import random_batch

GEMMA_270M = AutoConfig.for_model(
    KNOWN_MODELS[GEMMA_PACKAGE_SOURCE][0], **KNOWN_MODELS[GEMMA_PACKAGE_SOURCE][1]
)


def test_rank_is_closest_to_the_pt_budget() -> None:
    gemma = GEMMA_270M
    per_rank = lora_params_per_rank(gemma, ("q_proj", "v_proj"))
    assert per_rank == 18 * ((640 + 1024) + (640 + 256)) == 46_080
    assert lora_rank(100, 640, per_rank) == 1  # 46,080 is nearer 64,000 than 92,160
    llama7b = LlamaConfig(hidden_size=4096, num_attention_heads=32, num_hidden_layers=32)
    assert lora_params_per_rank(llama7b, ("q_proj", "v_proj")) == 32 * 4 * 4096
    assert lora_rank(100, 4096, 32 * 4 * 4096) == 1
    assert (
        lora_rank(400, 640, 46_080) == 6
    )  # 276,480 vs budget 256,000: 5 is 25,600 off, 6 is 20,480
    with pytest.raises(ValueError, match="gate_proj"):
        lora_params_per_rank(gemma, ("q_proj", "gate_proj"))


def _train(model: SoftPromptModel, steps: int = 3) -> None:
    input_ids, mask = random_batch()
    labels = input_ids.masked_fill(torch.arange(12) < 9, -100)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids, mask, labels=labels).loss.backward()
        optimizer.step()
    model.eval()


def test_starts_as_the_base_and_trains_only_lora(tiny_base) -> None:
    input_ids, mask = random_batch()
    before = ZeroShot(tiny_base).eval().logits(input_ids, mask)
    frozen = {k: v.clone() for k, v in tiny_base.state_dict().items()}
    model = LoRA(tiny_base, rank=2).eval()
    assert torch.equal(model.logits(input_ids, mask), before)  # B = 0 at init
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert model.num_trainable_parameters() == model.expected_trainable_parameters()
    assert all(p.dtype == torch.float32 for p in model.parameter_groups()["lora"])
    _train(model)
    assert not torch.allclose(model.logits(input_ids, mask), before)
    with pytest.raises(ValueError, match="still holds the LoRA layers of another wrapper"):
        ZeroShot(tiny_base)  # never a silent change of the base
    assert model.unload() is tiny_base  # the layers come out only when asked
    torch.testing.assert_close(ZeroShot(tiny_base).eval().logits(input_ids, mask), before)
    for name, value in frozen.items():  # the base's own weights are untouched
        assert torch.equal(tiny_base.state_dict()[name], value), name


def test_save_load_round_trip_and_rewrap_restores_base(tiny_base, tmp_path) -> None:
    pristine = copy.deepcopy(tiny_base)
    input_ids, mask = random_batch()
    base_logits = ZeroShot(pristine).eval().logits(input_ids, mask)
    model = LoRA(tiny_base, rank=2)
    _train(model)
    trained = model.logits(input_ids, mask)
    model.save_adapter(tmp_path / "adapter")
    # unloading takes the LoRA layers out: zero-shot is the base again
    assert torch.equal(ZeroShot(model.unload()).eval().logits(input_ids, mask), base_logits)
    loaded = SoftPromptModel.from_pretrained(pristine, tmp_path / "adapter").eval()
    assert type(loaded) is LoRA and loaded.config.rank == 2
    torch.testing.assert_close(loaded.logits(input_ids, mask), trained, rtol=0, atol=1e-6)


def test_config_plans_lora_and_rejects_int8_under_deepspeed() -> None:
    config = PipelineConfig.model_validate({"name": "x", "method": {"name": "lora"}})
    gemma = GEMMA_270M
    method = config.method_config(gemma)
    assert (method.rank, method.params_per_rank, method.target_modules) == (
        1,
        46_080,
        ("q_proj", "v_proj"),
    )
    with pytest.raises(ValueError, match="LoRA weights live inside the int8 base"):
        PipelineConfig.model_validate(
            {
                "name": "x",
                "method": {"name": "lora"},
                "model": {"load_in_8bit": True},
                "distributed": {"deepspeed": True},
            }
        )
    bad = PipelineConfig.model_validate(
        {"name": "x", "method": {"name": "lora", "target_modules": ["up_proj"]}}
    )
    with pytest.raises(ConfigError, match="method: LoRA target_modules"):
        bad.method_config(gemma)
    with pytest.raises(
        ValueError, match=r"method\.lora_targets: renamed to method\.target_modules"
    ):
        PipelineConfig.model_validate({"name": "x", "method": {"name": "lora", "lora_targets": []}})


@pytest.mark.parametrize(
    ("name", "dropout", "alpha"), [("lora", 0.0, 8.0), ("adept", 0.1, None), ("dept", None, 8.0)]
)
def test_each_method_keeps_its_own_defaults(name, dropout, alpha) -> None:
    """An unset method.dropout / method.alpha takes the method's own default (LoRA's dropout is
    0.0, not ADePT's 0.1); a value set explicitly reaches the method."""
    config = PipelineConfig.model_validate({"name": "x", "method": {"name": name}})
    method = config.method_config(GEMMA_270M)
    assert getattr(method, "dropout", None) == dropout
    assert getattr(method, "alpha", None) == alpha
    if dropout is not None:
        chosen = PipelineConfig.model_validate(
            {"name": "x", "method": {"name": name, "dropout": 0.25}}
        )
        assert chosen.method_config(GEMMA_270M).dropout == 0.25


@pytest.mark.parametrize(("name", "key"), [("dept", "dropout"), ("adept", "alpha")])
def test_method_key_the_method_lacks_is_an_error(name, key) -> None:
    with pytest.raises(ValueError, match=f"method.{key}: method '{name}' has no option '{key}'"):
        PipelineConfig.model_validate({"name": "x", "method": {"name": name, key: 0.2}})


@pytest.mark.parametrize("method", ["adept", "lora"])
def test_building_wrappers_leaves_the_global_rng_and_the_base_alone(tiny_base, method) -> None:
    """As the evaluate stage does it: the adapter, scored, unloaded, then the zero-shot wrapper.
    No construction reseeds the caller's RNG (the init draws from config.seed in its own scope)
    and the base ends as it began; the same seed gives the same adapter whatever the RNG."""
    from pipeline.methods import ADePT

    build = {
        "adept": lambda: ADePT(tiny_base, num_virtual_tokens=4),
        "lora": lambda: LoRA(tiny_base, rank=2),
    }[method]
    modules = [(n, type(m)) for n, m in tiny_base.named_modules()]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    adapter = build()
    assert torch.equal(torch.get_rng_state(), state)
    first = {k: v.clone() for k, v in adapter.adapter_state_dict().items()}
    adapter.eval().logits(*random_batch())
    adapter.unload()
    ZeroShot(tiny_base)
    assert torch.equal(torch.get_rng_state(), state)
    assert [(n, type(m)) for n, m in tiny_base.named_modules()] == modules
    torch.manual_seed(999)  # another caller state, the same config.seed
    again = build().adapter_state_dict()
    assert all(torch.equal(again[k], v) for k, v in first.items())
