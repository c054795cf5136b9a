"""export.merged: a PT / folded-ADePT adapter as a plain Hugging Face checkpoint.

Every check scores in a fresh process that imports only torch and transformers
(``AutoModelForCausalLM`` / ``AutoTokenizer``) and compares with the adapter path.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.engine.merge import MERGE_FILE, merge_adapter, save_merged
from pipeline.engine.scoring import score_choices
from pipeline.methods import ADePT, PromptTuning
from tests.helpers import (
    TINY_DIMS,
    free_port,
    http_service,
    perturb,
    pipeline,
    post_json,
    tiny_gemma,
    write_boolq_rows,
    write_config,
)

FRESH_HEAD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

job = json.load(open(sys.argv[1]))
model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32).eval()
tokenizer = AutoTokenizer.from_pretrained(job["model"])
"""
# the job's model loaded with plain transformers; FRESH_TAIL: nothing of ours was imported
FRESH_TAIL = r"""
ours = [m for m in sys.modules if m.split(".")[0] in ("pipeline", "stages", "tests")]
assert not ours, ours
"""

SCORER = (
    FRESH_HEAD
    + r"""
results = []
for row in job["rows"]:
    if "context" in row:  # text: the merged tokenizer puts the prefix first by itself
        context = tokenizer(row["context"])["input_ids"]
    else:  # token ids of the base tokenizer: the prefix ids go before them
        context = job["prefix_ids"] + row["context_ids"]
    scores, real_vocab_scores = [], []
    for choice in row["choices"]:
        answer = tokenizer(choice, add_special_tokens=False)["input_ids"] if isinstance(
            choice, str) else choice
        with torch.no_grad():
            logits = model(torch.tensor([context + answer])).logits[0].float()
        logits = logits[len(context) - 1 : -1]
        picked = (torch.arange(len(answer)), torch.tensor(answer))
        scores.append(logits.log_softmax(-1)[picked].sum().item())
        if job.get("real_vocab"):
            real = logits[:, : job["real_vocab"]].log_softmax(-1)
            real_vocab_scores.append(real[picked].sum().item())
    results.append({"context_ids": context, "scores": scores, "real_vocab": real_vocab_scores})
"""
    + FRESH_TAIL
    + "print(json.dumps(results))\n"
)

ROWS = [
    ("w11 w12 w13 w14", ["w20", "w21"]),
    ("w300 w7 w7 w8 w900 w42", ["w20", "w21"]),
    ("w5", ["w30 w31", "w32"]),
]
TEXT_ROWS = [
    ("Question: is the sky blue? Answer:", [" yes", " no"]),
    ("Passage: Paris is in France.\nQuestion: is Paris in Spain? Answer:", [" yes", " no"]),
    ("Premise: the glass fell.\nWhat happened next?", [" It broke.", " It sang a song."]),
]


def score_in_fresh_process(tmp: Path, job: dict, script: str = SCORER) -> list:
    """Run ``script`` (default: the scorer) on ``job`` in a process with a bare environment;
    its last stdout line, as JSON."""
    (tmp / "job.json").write_text(json.dumps(job))
    (tmp / "scorer.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, "scorer.py", "job.json"],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with no reserved tokens: merging must grow the vocabulary."""
    words = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    words.update({f"w{i}": i for i in range(4, vocab)})
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def untied_llama(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, **TINY_DIMS, tie_word_embeddings=False, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def trained_looking(method, base):
    """A PT or ADePT model (m=4) whose prompt and FFN are far from their init."""
    options = {"budget_tokens": 10} if method is ADePT else {}
    model = method(base, num_virtual_tokens=4, **options)
    perturb(model, scale=0.5)
    return model


def adapter_scores(model, tokenizer, rows) -> tuple[list[list[int]], list[list[float]]]:
    contexts = [tokenizer(c)["input_ids"] for c, _ in rows]
    choices = [[tokenizer(x, add_special_tokens=False)["input_ids"] for x in ch] for _, ch in rows]
    return contexts, score_choices(model.eval(), contexts, choices, tokenizer.pad_token_id, 2)


@pytest.mark.parametrize("method", [PromptTuning, ADePT], ids=["pt", "adept"])
def test_untied_llama_without_reserved_tokens_grows_the_vocabulary(method, tmp_path) -> None:
    tokenizer, base = word_tokenizer(1000), untied_llama(1000)
    original_head = base.lm_head.weight.detach().clone()
    model = trained_looking(method, base)
    contexts, expected = adapter_scores(model, tokenizer, ROWS)
    prefix = save_merged(model, tokenizer, merge_adapter(model, tokenizer), tmp_path / "merged")
    assert not prefix.reserved and prefix.ids == [1000, 1001, 1002, 1003]
    assert prefix.tokenizer_adds_prefix
    head = base.lm_head.weight
    assert torch.equal(head[:1000], original_head) and not head[1000:].any()
    job = {"model": str(tmp_path / "merged"), "real_vocab": 1000}
    job["rows"] = [{"context": c, "choices": ch} for c, ch in ROWS]
    got = score_in_fresh_process(tmp_path, job)
    for ours, theirs, ids in zip(expected, got, contexts, strict=True):
        assert theirs["context_ids"] == prefix.ids + ids  # plain tokenizer(text) adds the prefix
        # over the real vocabulary: the adapter's numbers; over all of it, m zero-logit tokens
        # lower every log-prob a little, and never change which choice wins
        assert theirs["real_vocab"] == pytest.approx(ours, abs=1e-5)
        assert all(t < o for t, o in zip(theirs["scores"], ours, strict=True))
        assert max(range(2), key=theirs["scores"].__getitem__) == max(
            range(2), key=ours.__getitem__
        )


@pytest.mark.parametrize("method", [PromptTuning, ADePT], ids=["pt", "adept"])
def test_tied_gemma_reuses_reserved_tokens_and_matches_exactly(
    method, tmp_path, gemma_tokenizer
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gemma_tokenizer.name_or_path)  # merging edits it
    base = tiny_gemma()
    base.resize_token_embeddings(len(tokenizer))
    base.tie_weights()
    model = trained_looking(method, base)
    contexts, expected = adapter_scores(model, tokenizer, TEXT_ROWS)
    vocab = base.config.vocab_size
    prefix = save_merged(model, tokenizer, merge_adapter(model, tokenizer), tmp_path / "merged")
    assert prefix.reserved and prefix.tokens == [f"<unused{i}>" for i in range(4)]
    assert base.config.vocab_size == vocab and not base.config.tie_word_embeddings
    record = json.loads((tmp_path / "merged" / MERGE_FILE).read_text())
    assert record["prefix_text"] == "<unused0><unused1><unused2><unused3>"
    job = {"model": str(tmp_path / "merged")}
    job["rows"] = [{"context": c, "choices": ch} for c, ch in TEXT_ROWS]
    got = score_in_fresh_process(tmp_path, job)
    for ours, theirs, ids in zip(expected, got, contexts, strict=True):
        assert theirs["context_ids"] == prefix.ids + ids
        assert theirs["scores"] == pytest.approx(ours, abs=1e-5)


def test_validate_refuses_merging_dept(tmp_path, tiny_model_dir) -> None:
    config = write_config(
        tmp_path,
        tiny_model_dir,
        method={"name": "dept", "num_virtual_tokens": 4, "budget_tokens": 10},
        export={"merged": True},
    )
    proc = pipeline("validate", str(config))
    assert proc.returncode == 2
    assert "export.merged" in proc.stderr and "position" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def merged_run(tmp_path_factory, tiny_model_dir):
    """One tracked ADePT run (embedded sqlite) that exports a merged model and registers it."""
    tmp = tmp_path_factory.mktemp("merged-run")
    export = {"merged": True, "registered_model_name": "tiny-merged"}
    config = write_config(tmp, tiny_model_dir, export=export, tracking={"experiment": "merge"})
    proc = pipeline("run", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "runs" / "tiny", f"sqlite:///{(tmp / 'runs' / 'mlflow.db').resolve()}"


def test_exported_merged_model_scores_the_test_rows_like_the_adapter(merged_run, tmp_path):
    import datasets

    run_dir, _ = merged_run
    merged = run_dir / "export" / "merged"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", MERGE_FILE} <= {
        p.name for p in merged.iterdir()
    }
    record = json.loads((merged / MERGE_FILE).read_text())
    card = (merged / "README.md").read_text()
    assert record["prefix_text"] in card and "license: gemma" in card
    assert "| accuracy |" in card and "ai.google.dev/gemma/terms" in card
    source = json.loads((run_dir / "export" / "task.json").read_text())["model"]["source"]
    assert f"Base model: {source}." in card  # a local base: its path (the default's: its package)
    test = datasets.load_from_disk(str(run_dir / "tokenize" / "test"))
    adapter = [json.loads(x) for x in (run_dir / "evaluate" / "predictions.jsonl").open()]
    job = {"model": str(merged), "prefix_ids": record["ids"]}
    job["rows"] = [
        {"context_ids": c, "choices": ch}
        for c, ch in zip(test["context_ids"], test["choice_ids"], strict=True)
    ]
    got = score_in_fresh_process(tmp_path, job)
    assert len(got) == len(adapter) == 12
    for ours, theirs in zip(adapter, got, strict=True):  # the folded table vs the live FFN
        assert theirs["scores"] == pytest.approx(ours["scores"], abs=1e-5)


def test_merged_model_is_logged_with_the_transformers_flavour(merged_run) -> None:
    import mlflow

    run_dir, uri = merged_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    config_hash = json.loads((run_dir / "export" / "task.json").read_text())["config_hash"]
    local = Path(client.download_artifacts(run_id, f"merged-{config_hash}"))
    flavours = mlflow.models.Model.load(str(local / "MLmodel")).flavors
    assert flavours["transformers"]["task"] == "text-generation"
    pyfunc_bundle = client.list_artifacts(run_id, f"model-{config_hash}/artifacts/export")
    assert pyfunc_bundle and not any(a.path.endswith("/merged") for a in pyfunc_bundle)


def test_rest_serving_from_the_registry_answers_invocations(merged_run, tmp_path, data_dir):
    """README's command: ``mlflow models serve -m models:/NAME@champion --env-manager local``."""
    import os
    import time

    run_dir, uri = merged_run
    rows_file = write_boolq_rows(tmp_path / "rows.jsonl", data_dir, 6)
    expected = tmp_path / "expected.jsonl"
    predict = ["predict", str(run_dir), "--input", str(rows_file), "--output", str(expected)]
    assert pipeline(*predict).returncode == 0
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tiny-merged@champion",
        "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    # the server starts uvicorn by name: the virtualenv's bin must be on PATH (as when activated)
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {"MLFLOW_TRACKING_URI": uri, "PATH": path}
    health = f"http://127.0.0.1:{port}/ping"
    with http_service(command, tmp_path / "serve.log", health, 300, env):
        url = f"http://127.0.0.1:{port}/invocations"
        rows = [json.loads(x) for x in rows_file.read_text().splitlines()]
        started = time.perf_counter()
        status, body = post_json(url, json.dumps({"dataframe_records": rows}).encode())
        per_row = (time.perf_counter() - started) / len(rows)
        assert status == 200, body
        served = json.loads(body)["predictions"]
        ours = [json.loads(x) for x in expected.read_text().splitlines()]
        assert [r["label"] for r in served] == [r["label"] for r in ours]
        for a, b in zip(served, ours, strict=True):
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)
        missing = json.dumps({"dataframe_records": [{"passage": "no question here"}]})
        status, body = post_json(url, missing.encode())
        assert status == 400 and "missing inputs ['question']" in body, (status, body)
        status, body = post_json(url, b"{not json")
        assert status == 400 and "JSON" in body, (status, body)
        for value, kind in ((5, "is a int, not text"), (None, "is null")):  # wrong type, null
            row = json.dumps({"dataframe_records": [{"passage": value, "question": "Is it?"}]})
            status, body = post_json(url, row.encode())
            assert status == 400 and f"field 'passage' {kind}" in body, (status, body)
            assert "Traceback" not in body and "stack_trace" not in body, body
    print(f"REST latency on the tiny model: {per_row * 1000:.1f} ms per row (batch of 6)")


@pytest.mark.slow
def test_real_gemma_merged_adept_matches_the_adapter(tmp_path) -> None:
    from pipeline.engine.models import GEMMA_PACKAGE_SOURCE, load_model, load_tokenizer

    base = load_model(GEMMA_PACKAGE_SOURCE, dtype="float32", attention="sdpa")  # merging edits it
    tokenizer = copy.deepcopy(load_tokenizer(GEMMA_PACKAGE_SOURCE))  # shared: merging edits it
    model = ADePT(base, num_virtual_tokens=60, budget_tokens=100)  # r = 19: the PT-100 budget
    perturb(model, scale=0.02)
    contexts, expected = adapter_scores(model, tokenizer, TEXT_ROWS)
    prefix = save_merged(model, tokenizer, merge_adapter(model, tokenizer), tmp_path / "merged")
    assert prefix.reserved and prefix.tokenizer_adds_prefix and len(prefix.ids) == 60
    job = {"model": str(tmp_path / "merged")}
    job["rows"] = [{"context": c, "choices": ch} for c, ch in TEXT_ROWS]
    got = score_in_fresh_process(tmp_path, job)
    for ours, theirs, ids in zip(expected, got, contexts, strict=True):
        assert theirs["context_ids"] == prefix.ids + ids
        # fp32 rounding of sums over several tokens (−24 for a 3-token choice): measured
        # 1.1e-5 at most, 5e-7 relative; 1e-5 or 1e-6 of the score, whichever is larger
        assert theirs["scores"] == pytest.approx(ours, abs=1e-5, rel=1e-6)
        assert theirs["scores"].index(max(theirs["scores"])) == ours.index(max(ours))


GENERATOR = (
    FRESH_HEAD
    + r"""
answers = []
for context_ids in job["contexts"]:
    ids = torch.tensor([job["prefix_ids"] + context_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=job["max_new_tokens"], eos_token_id=job["stop_ids"])
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    answers.append(text.split("\n")[0].strip())
"""
    + FRESH_TAIL
    + "print(json.dumps(answers))\n"
)


def test_merged_generative_adept_generates_what_the_adapter_generates(
    tmp_path, tiny_model_dir
) -> None:
    """A generative YAML task (ADePT, export.merged): plain transformers `generate` on the merged
    checkpoint, in a fresh process, gives every test row's answer the pipeline generated."""
    import datasets

    from pipeline.engine.evaluation import stop_token_ids
    from pipeline.tasks import parse_task
    from tests.test_generation import qa_task

    spec = qa_task(tmp_path / "data")
    task = {"name": "capitals", "spec": spec, "max_length": 48}
    task.update(train_limit=None, dev_limit=None, test_limit=None)
    config = write_config(
        tmp_path, tiny_model_dir, task=task, export={"merged": True}, tracking={"uri": None}
    )
    proc = pipeline("run", str(config))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    merged = run_dir / "export" / "merged"
    record = json.loads((merged / MERGE_FILE).read_text())
    test = datasets.load_from_disk(str(run_dir / "tokenize" / "test"))
    ours = [json.loads(x)["generated"] for x in (run_dir / "evaluate" / "predictions.jsonl").open()]
    from transformers import AutoTokenizer

    stops = sorted(stop_token_ids(AutoTokenizer.from_pretrained(tiny_model_dir), ("\n",)))
    job = {
        "model": str(merged),
        "prefix_ids": record["ids"],
        "contexts": list(test["context_ids"]),
        "max_new_tokens": parse_task(spec, "test").max_new_tokens,
        "stop_ids": stops,
    }
    theirs = score_in_fresh_process(tmp_path, job, GENERATOR)
    assert len(ours) == 4 and any(ours) and theirs == ours  # not all empty
