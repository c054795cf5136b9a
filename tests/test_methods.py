"""Behaviour of the PT / DePT / ADePT wrapper on tiny random Llama and Gemma-3 models."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PromptTuningConfig as PeftPromptTuningConfig
from peft import get_peft_model

from pipeline.methods import ADePT, ADePTConfig, DePT, PromptTuning, SoftPromptModel
from tests.helpers import M, make, perturb, random_batch, sliding_gemma, tiny_gemma


def test_adept_at_init_equals_pt(tiny_base) -> None:
    adept = make(ADePT, copy.deepcopy(tiny_base))
    pt = make(PromptTuning, tiny_base)
    with torch.no_grad():
        pt.prompt.copy_(adept.prompt)
    input_ids, mask = random_batch()
    adept.train()  # dropout on: the offset is still exactly zero (B = b = 0)
    assert torch.equal(adept.logits(input_ids, mask), pt.logits(input_ids, mask))


@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
def test_only_adapter_trains_and_base_is_bit_identical(tiny_base, method) -> None:
    model = make(method, tiny_base)
    before_base = {k: v.clone() for k, v in model.base.state_dict().items()}
    before_adapter = {k: v.clone() for k, v in model.adapter_state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(before_adapter)
    assert all(not n.startswith("base.") for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    input_ids, mask = random_batch()
    labels = input_ids.masked_fill(torch.arange(12) < 9, -100)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids, mask, labels=labels).loss.backward()
        assert all(p.grad is None for p in model.base.parameters())
        optimizer.step()
    for k, v in model.base.state_dict().items():
        assert torch.equal(v, before_base[k]), k
    for k, v in model.adapter_state_dict().items():
        assert not torch.equal(v, before_adapter[k]), f"{k} never moved"


@pytest.mark.parametrize("method", [DePT, ADePT])
def test_offset_changes_outputs_once_trained(tiny_base, method) -> None:
    model = make(method, tiny_base).eval()
    input_ids, mask = random_batch()
    untouched = model.logits(input_ids, mask)
    perturb(model.offset)
    assert (model.logits(input_ids, mask) - untouched).abs().max() > 1e-3


def test_fold_matches_unfolded(tiny_base) -> None:
    model = make(ADePT, tiny_base).eval()
    perturb(model)
    input_ids, mask = random_batch()
    unfolded = model.logits(input_ids, mask)
    head = model.base.get_output_embeddings().weight
    original = head.detach().clone()
    model.fold()
    assert model.folded_embeddings.shape == (1000, 64)
    torch.testing.assert_close(model.logits(input_ids, mask), unfolded, rtol=0, atol=1e-5)
    # the head keeps the original (tied) table, untouched; only the input side is folded
    assert model.base.get_output_embeddings().weight is head and torch.equal(head, original)
    hidden = model.hidden_states(input_ids, mask)[:, M:]
    by_hand = hidden @ original.T
    if model.final_logit_softcapping:  # Gemma caps the logits: cap · tanh(logits / cap)
        cap = model.final_logit_softcapping
        by_hand = cap * torch.tanh(by_hand / cap)
    torch.testing.assert_close(model.logits(input_ids, mask), by_hand, rtol=0, atol=1e-5)
    folded_rows = model.folded_embeddings[input_ids]
    assert (folded_rows - model.base.get_input_embeddings()(input_ids)).abs().max() > 1e-3
    model.train()
    with pytest.raises(RuntimeError, match="folded model is for inference"):
        model.logits(input_ids, mask)
    model.unfold()
    torch.testing.assert_close(model.eval().logits(input_ids, mask), unfolded, rtol=0, atol=0)


def test_fold_refuses_other_methods(tiny_base) -> None:
    with pytest.raises(TypeError, match="only ADePT folds"):
        make(PromptTuning, tiny_base).fold()


@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
def test_padding_side_does_not_change_answer_logprobs(tiny_base, method) -> None:
    model = make(method, tiny_base).eval()
    perturb(model)
    g = torch.Generator().manual_seed(7)
    rows = [torch.randint(5, 1000, (n,), generator=g) for n in (7, 12, 10)]
    answer_len = 2

    def unpadded(row):
        target = torch.zeros(1, len(row), dtype=torch.bool)
        target[0, -answer_len:] = True
        return model(row[None], None, target_mask=target).logprobs[0]

    reference = torch.stack([unpadded(r) for r in rows])
    width = max(len(r) for r in rows)
    for side in ("left", "right"):
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)
        for i, row in enumerate(rows):
            start = width - len(row) if side == "left" else 0
            ids[i, start : start + len(row)] = row
            mask[i, start : start + len(row)] = 1
            target[i, start + len(row) - answer_len : start + len(row)] = True
        out = model(ids, mask, target_mask=target)
        torch.testing.assert_close(out.logprobs, reference, rtol=0, atol=1e-5, msg=side)
        assert out.num_tokens.tolist() == [answer_len] * 3


def test_head_runs_only_on_target_rows_contiguously(tiny_base) -> None:
    model = make(ADePT, tiny_base).eval()
    seen: list[tuple[tuple[int, ...], bool]] = []
    head = model.base.get_output_embeddings()
    hook = head.register_forward_hook(
        lambda _m, args, _out: seen.append((tuple(args[0].shape), args[0].is_contiguous()))
    )
    input_ids, mask = random_batch(batch=4, length=20)
    target = torch.zeros_like(input_ids, dtype=torch.bool)
    target[:, -3:] = True
    model(input_ids, mask, target_mask=target)
    hook.remove()
    assert seen == [((12, 64), True)]


def test_scores_equal_full_logit_log_softmax(tiny_base) -> None:
    model = make(ADePT, tiny_base).eval()
    perturb(model)
    input_ids, mask = random_batch()
    target = torch.zeros_like(input_ids, dtype=torch.bool)
    target[:, -2:] = True
    scores = model(input_ids, mask, target_mask=target).logprobs
    logp = model.logits(input_ids, mask).log_softmax(-1)
    manual = sum(logp[:, t - 1].gather(-1, input_ids[:, t : t + 1]).squeeze(-1) for t in (10, 11))
    torch.testing.assert_close(scores, manual, rtol=0, atol=1e-5)


def test_labels_loss_is_mean_token_nll(tiny_base) -> None:
    model = make(PromptTuning, tiny_base).eval()
    input_ids, mask = random_batch()
    labels = input_ids.clone()
    labels[:, :10] = -100
    out = model(input_ids, mask, labels=labels)
    torch.testing.assert_close(out.loss, -out.logprobs.sum() / 6)


def test_pt_matches_peft_prompt_tuning(tiny_base) -> None:
    ours = make(PromptTuning, copy.deepcopy(tiny_base)).eval()
    peft_model = get_peft_model(
        tiny_base, PeftPromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=M)
    ).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(ours.prompt)
    input_ids, mask = random_batch()
    peft_logits = peft_model(input_ids=input_ids, attention_mask=mask).logits[:, M:]
    torch.testing.assert_close(ours.logits(input_ids, mask), peft_logits, rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training_mode(tiny_base) -> None:
    model = make(ADePT, tiny_base, dropout=0.5)
    perturb(model.offset, scale=0.5)
    input_ids, mask = random_batch()
    model.train()
    torch.manual_seed(0)
    a = model.logits(input_ids, mask)
    b = model.logits(input_ids, mask)
    assert (a - b).abs().max() > 1e-4
    model.eval()
    torch.testing.assert_close(
        model.logits(input_ids, mask), model.logits(input_ids, mask), rtol=0, atol=0
    )
    # eval mode is exactly the deterministic FFN: e + B·relu(A e + a) + b
    emb = model.base.get_input_embeddings()(input_ids)
    ffn = model.offset
    manual = emb + ffn.up(torch.relu(ffn.down(emb)))
    torch.testing.assert_close(ffn(emb), manual, rtol=0, atol=0)


@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
def test_save_load_round_trip(tiny_base, tmp_path, method) -> None:
    fresh = copy.deepcopy(tiny_base)
    model = make(method, tiny_base).eval()
    perturb(model)
    out = model.save_adapter(tmp_path / "adapter")
    peft = ["adapter_config.json"] if method is PromptTuning else []  # PEFT has PT only of these
    assert sorted(p.name for p in out.iterdir()) == [
        *peft,
        "adapter_model.safetensors",
        "pipeline_adapter.json",
    ]
    assert (out / "adapter_model.safetensors").stat().st_size < 100_000  # adapter only, no base
    loaded = SoftPromptModel.from_pretrained(fresh, out).eval()
    assert type(loaded) is method
    assert loaded.config == model.config
    for k, v in model.adapter_state_dict().items():
        assert torch.equal(loaded.adapter_state_dict()[k], v), k
    input_ids, mask = random_batch()
    torch.testing.assert_close(
        loaded.logits(input_ids, mask), model.logits(input_ids, mask), rtol=0, atol=0
    )


def test_load_refuses_mismatched_width(tmp_path) -> None:
    from tests.helpers import tiny_llama

    model = make(ADePT, tiny_llama())
    model.save_adapter(tmp_path / "a")
    wide = tiny_llama()
    wide.config.hidden_size = 128
    with pytest.raises(ValueError, match="embedding width 64"):
        SoftPromptModel.from_pretrained(wide, tmp_path / "a")


def test_prompt_init_from_vocab_and_text(tiny_base) -> None:
    emb = tiny_base.get_input_embeddings()
    model = make(ADePT, tiny_base)
    assert torch.all(model.prompt.norm(dim=-1) > 0)
    # every prompt row is a real (distinct) token embedding
    table = emb(torch.arange(1000)).float()
    matches = (model.prompt[:, None, :] - table[None]).abs().amax(-1) == 0
    assert matches.any(-1).all() and len(set(matches.float().argmax(-1).tolist())) == M

    class Tok:  # minimal tokenizer stand-in returning fixed ids for the text
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [11, 12, 13]}

    texted = ADePT(
        tiny_base,
        ADePTConfig(num_virtual_tokens=M, rank=4, prompt_init="text", prompt_init_text="classify"),
        tokenizer=Tok(),
    )
    expected = emb(torch.tensor([11, 12, 13, 11, 12, 13, 11, 12])).float()
    assert torch.equal(texted.prompt.detach(), expected)


def test_dept_rejects_inputs_longer_than_table(tiny_base) -> None:
    model = make(DePT, tiny_base, max_length=8)
    input_ids, mask = random_batch(length=9)
    with pytest.raises(ValueError, match="max_length=8"):
        model.logits(input_ids, mask)


def test_adept_ffn_init_matches_authors_distribution() -> None:
    """A ~ U(±1/√r) (the authors' d×r kaiming init, fan-in r), not nn.Linear's U(±1/√d);
    up-projection and both biases start at zero (the offset is exactly zero at step 0)."""
    from pipeline.methods.adept.model import TokenFFNOffset

    d, r = 640, 19  # Gemma 3 270M, m=60 at the PT-100 budget
    torch.manual_seed(0)
    ffn = TokenFFNOffset(ADePTConfig(num_virtual_tokens=60, rank=r), d)
    down = ffn.down.weight
    bound = 1 / r**0.5  # 0.229; nn.Linear's default would be 1/√640 = 0.0395
    assert down.shape == (r, d)
    assert down.abs().max() <= bound
    assert down.abs().max() > 0.99 * bound  # 12,160 draws reach the edge of the interval
    torch.testing.assert_close(down.std().item(), bound / 3**0.5, rtol=0.03, atol=0)
    for zero in (ffn.down.bias, ffn.up.weight, ffn.up.bias):
        assert torch.count_nonzero(zero) == 0


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
def test_sliding_window_row_scores_do_not_depend_on_batch_mates(method, side) -> None:
    """m + padded width far beyond the window: a short row scores the same alone as beside a
    much longer row (no pad may sit between the prompt and the text)."""
    model = make(method, sliding_gemma(window=8)).eval()
    perturb(model)
    g = torch.Generator().manual_seed(5)
    short, long = (torch.randint(5, 1000, (n,), generator=g) for n in (5, 30))

    def target_of(length: int) -> torch.Tensor:
        target = torch.zeros(1, length, dtype=torch.bool)
        target[0, -2:] = True
        return target

    alone = model(short[None], None, target_mask=target_of(5)).logprobs[0]
    width = len(long)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask, target = torch.zeros_like(ids), torch.zeros_like(ids, dtype=torch.bool)
    ids[1], mask[1], target[1] = long, 1, target_of(width)[0]
    start = width - len(short) if side == "left" else 0
    ids[0, start : start + 5], mask[0, start : start + 5] = short, 1
    target[0, start + 3 : start + 5] = True
    beside = model(ids, mask, target_mask=target).logprobs[0]
    torch.testing.assert_close(beside, alone, rtol=1e-5, atol=1e-5)
    # the same holds for next-token scoring (the evaluation path for single-token choices)
    nxt_alone = model.next_token_logprobs(short[None])[0]
    nxt_beside = model.next_token_logprobs(ids, mask)[0]
    torch.testing.assert_close(nxt_beside, nxt_alone, rtol=1e-5, atol=1e-5)


def test_logits_come_back_in_the_input_layout(tiny_base) -> None:
    model = make(ADePT, tiny_base).eval()
    perturb(model)
    row = torch.randint(5, 1000, (6,), generator=torch.Generator().manual_seed(2))
    ids = torch.zeros(1, 9, dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[0, 3:], mask[0, 3:] = row, 1  # left padded
    torch.testing.assert_close(
        model.logits(ids, mask)[0, 3:], model.logits(row[None])[0], rtol=1e-5, atol=1e-5
    )


def test_exported_folded_table_loads_as_documented(tmp_path) -> None:
    """docs/METHOD.md: the folded table is in the embedding module's output space (Gemma: after
    its √d scale); set on a fresh wrapper, or fed as inputs_embeds to the plain model, it gives
    the adapter's logits."""
    from safetensors.torch import load_file, save_file

    model = make(ADePT, tiny_gemma()).eval()
    perturb(model)
    ids = torch.randint(5, 1000, (9,), generator=torch.Generator().manual_seed(4))
    expected = model.logits(ids[None])
    model.save_adapter(tmp_path / "adapter")
    model.fold()
    save_file({"weight": model.folded_embeddings.contiguous()}, tmp_path / "folded.safetensors")

    base = tiny_gemma()
    table = load_file(tmp_path / "folded.safetensors")["weight"]
    raw_rows = base.get_input_embeddings().weight[ids]
    scaled_rows = base.get_input_embeddings()(ids)
    assert (table[ids] - scaled_rows).norm() < (table[ids] - raw_rows).norm()  # the scaled space
    loaded = SoftPromptModel.from_pretrained(base, tmp_path / "adapter").eval()
    loaded.folded_embeddings = table.to(base.dtype)
    torch.testing.assert_close(loaded.logits(ids[None]), expected, rtol=1e-5, atol=1e-5)
    embeds = torch.cat([loaded.prompt[None].to(base.dtype), table[ids][None]], 1)
    with torch.no_grad():
        plain = base(inputs_embeds=embeds).logits[:, M:]
    torch.testing.assert_close(plain, expected, rtol=1e-5, atol=1e-5)


def hand_written_offset(model: SoftPromptModel, embeds: torch.Tensor) -> torch.Tensor:
    """Each method's embedding offset written out from the paper's formulas, from the raw
    parameters (not the modules' forward): none for PT; DePT adds (alpha / sqrt(r)) · (A B)
    row by token position; ADePT adds ReLU(e W_down + b_down) W_up + b_up (eval: no dropout)."""
    offset = model.offset
    if offset is None:
        return embeds
    if isinstance(model, DePT):
        config = model.config
        positions = torch.arange(embeds.shape[1])
        rows = offset.lora_a.detach()[positions] @ offset.lora_b.detach()
        return embeds + config.alpha / config.rank**0.5 * rows
    down, up = offset.down, offset.up
    hidden = torch.relu(embeds @ down.weight.detach().T + down.bias.detach())
    return embeds + hidden @ up.weight.detach().T + up.bias.detach()


@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
def test_each_method_equals_its_hand_written_formula(tiny_base, method) -> None:
    """The base fed [P; e_1 + offset_1 … e_n + offset_n] by hand gives the wrapper's logits,
    with every trainable tensor non-zero (pins DePT's alpha/sqrt(r) scale, ADePT's FFN and the
    prompt's place in front of the text)."""
    model = make(method, tiny_base).eval()
    perturb(model, scale=0.2)
    input_ids, mask = random_batch()
    with torch.no_grad():
        embeds = hand_written_offset(model, model.base.get_input_embeddings()(input_ids))
        prompt = model.prompt.detach().unsqueeze(0).expand(len(input_ids), -1, -1)
        full_mask = torch.cat([torch.ones(len(input_ids), M, dtype=mask.dtype), mask], 1)
        inputs = torch.cat([prompt, embeds], 1)
        reference = model.base(inputs_embeds=inputs, attention_mask=full_mask).logits[:, M:]
        ours = model.logits(input_ids, mask)
    assert (reference - model.base(input_ids, attention_mask=mask).logits).abs().max() > 1e-2
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
