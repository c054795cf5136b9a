"""The method registry: a method of one's own, in one file outside this package, runs through
`pipeline run` (train, evaluate, export), `pipeline predict` and validation like a built-in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

import pytest
import yaml
from safetensors.torch import load_file

from pipeline.methods import ADePTConfig, SoftPromptModel, get_method, register_method
from tests.helpers import (
    ENV,
    assert_accuracy_is_its_predictions,
    pipeline,
    write_boolq_rows,
    write_config,
)

TOY_METHOD = '''
"""A toy method: the soft prompt plus one learnable gain on every input-token embedding."""

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from pipeline.methods import SoftPromptConfig, SoftPromptModel, register_method


@dataclass
class GainConfig(SoftPromptConfig):
    method: ClassVar[str] = "toy_gain"
    learning_rates: ClassVar[dict[str, float]] = {"prompt": 0.01, "gain": 0.05}

    num_virtual_tokens: int = field(default=4, metadata={"help": "m: prompt length."})
    init_gain: float = field(default=1.0, metadata={"help": "The gain at step 0."})

    def trainable_parameters(self, d: int) -> int:
        return self.num_virtual_tokens * d + 1


class Gain(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(value))

    def forward(self, embeds, positions):
        return embeds * self.gain.to(embeds.dtype)


class GainModel(SoftPromptModel):
    @classmethod
    def build_offset(cls, config, d):
        return Gain(config.init_gain)

    def parameter_groups(self):
        return {"prompt": [self.prompt], "gain": [self.offset.gain]}


register_method(GainConfig, GainModel, label="Gain")
'''


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_model_dir):
    """`pipeline run` of the toy method, in a fresh process that finds it through `plugins:`."""
    tmp = tmp_path_factory.mktemp("toy")
    (tmp / "plugin").mkdir()
    (tmp / "plugin" / "toy_gain_method.py").write_text(TOY_METHOD)
    config = write_config(
        tmp,
        tiny_model_dir,
        method={"name": "toy_gain", "num_virtual_tokens": 4, "init_gain": 1.5},
        train={"lr": {"gain": 0.1}},
    )
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({"plugins": ["toy_gain_method"], **data}))
    env = dict(ENV, PYTHONPATH=os.pathsep.join([ENV["PYTHONPATH"], str(tmp / "plugin")]))
    proc = pipeline("run", str(config), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, config, env


def test_a_plugin_method_trains_evaluates_and_exports(toy_run) -> None:
    tmp, _, _ = toy_run
    run = tmp / "runs" / "tiny"
    adapter = run / "export" / "adapter"
    meta = json.loads((adapter / "pipeline_adapter.json").read_text())
    assert meta["method_config"]["method"] == "toy_gain"
    assert meta["method_module"] == "toy_gain_method"
    assert meta["trainable_parameters"] == 4 * 64 + 1  # its own count: m·d + the gain
    gain = load_file(adapter / "adapter_model.safetensors")["offset.gain"]
    assert float(gain) != 1.5  # it trained, from its own init
    history = [json.loads(x) for x in (run / "train" / "history.jsonl").read_text().splitlines()]
    assert history[0]["train/lr_gain"] > 0 and "train/lr_prompt" in history[0]
    resolved = json.loads((run / "config.resolved.json").read_text())
    assert resolved["train"]["lr"] == {"prompt": 0.01, "gain": 0.1}  # its default + the YAML
    assert_accuracy_is_its_predictions(run)
    assert json.loads((run / "export" / "registered.json").read_text())["version"] == "1"


def test_a_plugin_method_validates_its_own_options(toy_run) -> None:
    _, config, env = toy_run
    bad = pipeline("validate", str(config), "--set", "method.rank=3", env=env)
    assert bad.returncode == 2
    assert "method.rank: method 'toy_gain' has no option 'rank'" in bad.stderr
    assert "init_gain" in bad.stderr  # the error lists the options it does have
    bad = pipeline("validate", str(config), "--set", "train.lr.offset=0.1", env=env)
    assert bad.returncode == 2
    assert "train.lr.offset: method 'toy_gain' has no parameter group 'offset'" in bad.stderr


def test_predict_loads_the_plugin_method_from_the_adapter(toy_run, data_dir) -> None:
    """The adapter records the module that registered its method: `pipeline predict` imports it
    without being told (the config's plugins are not read)."""
    tmp, _, env = toy_run
    rows = write_boolq_rows(tmp / "rows.jsonl", data_dir, 3)
    proc = pipeline("predict", str(tmp / "runs" / "tiny"), "--input", str(rows), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(predictions) == 3 and all(p["label"] in ("no", "yes") for p in predictions)


def test_a_method_name_cannot_be_taken_twice() -> None:
    @dataclass
    class Impostor(ADePTConfig):
        method: ClassVar[str] = "adept"

    with pytest.raises(ValueError, match="method 'adept' is already registered"):
        register_method(Impostor, SoftPromptModel, label="impostor")
    assert get_method("adept").config_class is ADePTConfig
