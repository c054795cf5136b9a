"""The shared prompt prefix (pipeline/methods/prefix.py) gives the numbers of the usual path."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from pipeline.methods import ADePT, DePT, PromptTuning, SoftPromptModel
from pipeline.methods import prefix as prefix_module
from tests.helpers import M, make, perturb, sliding_gemma, tiny_decoder, tiny_llama

BASES = {
    "llama": tiny_llama,
    "gemma-window-8": lambda: sliding_gemma(window=8),
    "qwen2": lambda: tiny_decoder("qwen2"),
    "qwen3": lambda: tiny_decoder("qwen3"),
    "mistral": lambda: tiny_decoder("mistral"),
}
LENGTHS = (5, 30, 12, 3)  # very different lengths; m + 30 is far beyond the 8-token window


def padded_batch(side: str, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    width = max(LENGTHS)
    ids = torch.zeros(len(LENGTHS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for i, n in enumerate(LENGTHS):
        start = width - n if side == "left" else 0
        ids[i, start : start + n] = torch.randint(5, 1000, (n,), generator=g)
        mask[i, start : start + n] = 1
        target[i, start + n - 2 : start + n] = True  # the last two tokens are the answer
    return ids, mask, target


def scores_and_grads(model: SoftPromptModel, ids, mask, target):
    """Per-row answer log-probs and the gradient of every trainable tensor of their sum."""
    model.zero_grad()
    out = model(ids, mask, target_mask=target)
    out.logprobs.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logprobs.detach(), grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
@pytest.mark.parametrize("base", sorted(BASES))
def test_shared_prefix_equals_unshared_fp32(base, method, side) -> None:
    model = make(method, BASES[base]()).train()
    perturb(model)
    if model.offset is not None and hasattr(model.offset, "dropout"):
        model.offset.dropout.p = 0.0  # the same numbers need the same (no) dropout draw
    batch = padded_batch(side)
    model.shared_prefix = False
    ref_scores, ref_grads = scores_and_grads(model, *batch)
    model.shared_prefix = True
    assert model.shared_prefix
    scores, grads = scores_and_grads(model, *batch)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert set(grads) == set(ref_grads) and any("offset" in n for n in grads) == (
        method is not PromptTuning
    )
    for name, grad in grads.items():
        assert relative(grad, ref_grads[name]) < 1e-5, name
    # next-token scoring (the evaluation path for single-token choices) agrees too
    model.eval()
    with torch.no_grad():
        shared = model.next_token_logprobs(batch[0], batch[1])
        model.shared_prefix = False
        unshared = model.next_token_logprobs(batch[0], batch[1])
    torch.testing.assert_close(shared, unshared, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base", sorted(BASES))
def test_shared_prefix_bf16_error_is_that_of_the_unshared_path(base) -> None:
    """Against an fp32 reference, bf16 with the shared prefix errs as much as bf16 without:
    within 2x (kernels round a shorter sequence differently; measured up to 1.6x on a CPU with
    native bf16 (AVX512-BF16), 1.1x without); a prompt at the wrong positions errs by whole
    nats, hundreds of times more."""
    fp32 = make(ADePT, BASES[base]()).eval()
    perturb(fp32)
    ids, mask, target = padded_batch("right")
    with torch.no_grad():
        fp32.shared_prefix = False
        reference = fp32(ids, mask, target_mask=target).logprobs
        bf16 = copy.deepcopy(fp32)
        bf16.base.to(torch.bfloat16)
        errors = {}
        for shared in (False, True):
            bf16.shared_prefix = shared
            errors[shared] = (bf16(ids, mask, target_mask=target).logprobs - reference).abs().max()
    assert errors[False] > 0  # bf16 is not fp32: the comparison has something to measure
    assert errors[True] <= 2 * errors[False], errors


def test_evaluation_computes_the_prefix_once(monkeypatch) -> None:
    from pipeline.engine.evaluation import evaluate_dataset
    from pipeline.tasks import get_task

    calls = []
    real = prefix_module.run_prefix

    def counting(body, prompt_embeds):
        calls.append(prompt_embeds.shape)
        return real(body, prompt_embeds)

    monkeypatch.setattr("pipeline.methods.wrapper.run_prefix", counting)
    model = make(ADePT, tiny_llama())
    perturb(model)
    g = torch.Generator().manual_seed(3)
    rows = {
        "context_ids": [torch.randint(5, 1000, (n,), generator=g).tolist() for n in range(3, 23)],
        "choice_ids": [[[7], [9]]] * 20,
        "label": [0, 1] * 10,
        "gold": [0.0, 1.0] * 10,
    }
    task = get_task("boolq")
    _, predictions = evaluate_dataset(model, task, rows, pad_id=0, batch_size=4)
    assert len(predictions) == 20 and calls == [(1, M, 64)]  # 5 batches, one prefix
    model.shared_prefix = False
    _, unshared = evaluate_dataset(model, task, rows, pad_id=0, batch_size=4)
    for a, b in zip(predictions, unshared, strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)
    model.shared_prefix = True
    model.train()  # training invalidates it: the next evaluation computes it again
    evaluate_dataset(model, task, rows, pad_id=0, batch_size=4)
    assert len(calls) == 2


def test_folded_adept_with_shared_prefix_equals_unfolded() -> None:
    model = make(ADePT, sliding_gemma(window=8)).eval()
    perturb(model)
    ids, mask, target = padded_batch("left")
    with torch.no_grad():
        model.shared_prefix = False
        unfolded = model(ids, mask, target_mask=target).logprobs
        model.shared_prefix = True
        model.fold()
        folded = model(ids, mask, target_mask=target).logprobs
    torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-5)


def test_fallback_is_logged_for_unverified_models_and_not_for_lora(caplog) -> None:
    """An unverified model type is named; LoRA has no prompt to share, so nothing is said."""
    base = tiny_llama()
    base.config.model_type = "some_new_arch"
    with caplog.at_level(logging.INFO, logger="pipeline.methods.wrapper"):
        model = make(ADePT, base)
    assert not model.shared_prefix
    assert "model type 'some_new_arch' is not verified" in caplog.text
    from pipeline.methods import LoRA

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.methods.wrapper"):
        lora = LoRA(tiny_llama())
    assert not lora.shared_prefix and "shared prompt prefix" not in caplog.text


@pytest.mark.parametrize(
    ("setting", "distributed", "int8", "training"),
    [
        (None, {}, False, True),  # one process: on
        (None, {"nproc_per_node": 2, "deepspeed": True}, False, False),  # ZeRO-3 mode (a): off
        (None, {"nproc_per_node": 2, "deepspeed": True}, True, True),  # mode (b): base outside
        (None, {"nproc_per_node": 2, "deepspeed": True, "zero_stage": 2}, False, True),
        (True, {"nproc_per_node": 2, "deepspeed": True}, False, True),  # explicit wins
        (False, {}, False, False),
    ],
)
def test_shared_prefix_auto_rule(setting, distributed, int8, training) -> None:
    from pipeline.core.config import PipelineConfig

    config = PipelineConfig.model_validate(
        {
            "name": "x",
            "model": {"shared_prefix": setting, "load_in_8bit": int8},
            "distributed": distributed,
        }
    )
    assert config.shared_prefix_in_training is training
    assert config.model.shared_prefix_in_evaluation is (setting is not False)
