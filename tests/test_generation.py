"""Greedy decoding through the soft-prompt path: KV cache ≡ full re-run, padding-invariant,
folded ADePT ≡ unfolded, and the prompt changes what is generated."""

from __future__ import annotations

import json
import string
from collections import Counter

import pytest
import torch

from pipeline.methods import ADePT, DePT, PromptTuning
from pipeline.methods.generation import greedy_generate
from tests.helpers import make, perturb, tiny_gemma, tiny_llama

LENGTHS = (5, 11, 8)  # rows of different lengths: pads sit between text and generated tokens


def ragged_batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, 1000, (n,), generator=g) for n in LENGTHS]
    ids = torch.zeros(len(rows), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask, rows


@pytest.mark.parametrize("base_factory", [tiny_llama, tiny_gemma], ids=["llama", "gemma3"])
@pytest.mark.parametrize("method", [PromptTuning, DePT, ADePT])
def test_cached_decoding_equals_full_rerun(base_factory, method) -> None:
    model = make(method, base_factory(), **({"max_length": 32} if method is DePT else {})).eval()
    perturb(model, scale=0.5)
    ids, mask, rows = ragged_batch()
    cached = greedy_generate(model, ids, mask, max_new_tokens=8, stop_token_ids={1})
    full = greedy_generate(model, ids, mask, 8, {1}, use_cache=False)
    assert cached == full and all(len(t) == 8 for t in cached)
    one_by_one = [
        greedy_generate(model, r[None], torch.ones_like(r)[None], 8, {1})[0] for r in rows
    ]
    assert cached == one_by_one  # batch-mates and padding change nothing
    shifts = (mask == 0).sum(1).tolist()
    left = torch.stack([torch.roll(r, s) for r, s in zip(ids, shifts, strict=True)])
    left_mask = torch.stack([torch.roll(r, s) for r, s in zip(mask, shifts, strict=True)])
    assert greedy_generate(model, left, left_mask, 8, {1}) == cached  # left padding too


def test_folded_adept_generates_the_same_tokens() -> None:
    model = make(ADePT, tiny_llama()).eval()
    perturb(model, scale=0.5)
    ids, mask, _ = ragged_batch(seed=2)
    plain = greedy_generate(model, ids, mask, 8, {1})
    assert greedy_generate(model.fold(), ids, mask, 8, {1}) == plain


def test_stop_tokens_end_a_row_and_the_prompt_matters() -> None:
    model = make(PromptTuning, tiny_llama()).eval()
    perturb(model, scale=0.5)
    ids, mask, _ = ragged_batch()
    free = greedy_generate(model, ids, mask, 6, {1})
    stop = free[1][2]  # make row 1's third token a stop token: it ends there, without it
    stopped = greedy_generate(model, ids, mask, 6, {1, stop})
    assert stopped[1] == free[1][: free[1].index(stop)]
    with torch.no_grad():
        model.prompt.add_(torch.randn_like(model.prompt))
    assert greedy_generate(model, ids, mask, 6, {1}) != free


def test_squad_rows_encode_a_target_and_leave_room_to_generate(data_dir, gemma_tokenizer) -> None:
    from pipeline.tasks import Encoder, get_task, load_task_splits

    task = get_task("squad")
    rows, source = load_task_splits(task, data_dir, {"train": 40})["train"]
    encoded = Encoder(task, gemma_tokenizer, 200).encode(rows, source)
    assert encoded["label"] == [0] * 40 and any(encoded["truncated"])
    for row, context, (target,), answers in zip(
        rows, encoded["context_ids"], encoded["choice_ids"], encoded["answers"], strict=True
    ):
        assert answers == row["answers"]
        assert gemma_tokenizer.decode(target) == f" {row['answers'][0]}\n"  # the trained tokens
        assert len(context) + max(len(target), task.max_new_tokens) <= 200
    unlabelled = Encoder(task, gemma_tokenizer, 200).encode(
        [{k: r[k] for k in ("context", "question")} for r in rows[:3]], "input", labelled=False
    )
    assert unlabelled["choice_ids"] == [[], [], []] and unlabelled["answers"] == [[], [], []]


def test_generation_declarations_are_checked() -> None:
    from pipeline.tasks import TASKS, parse_task
    from pipeline.tasks.registry import TaskDeclarationError

    spec = TASKS["squad"].model_dump(mode="json")
    with pytest.raises(TaskDeclarationError, match="target: required for type: generation"):
        parse_task({**spec, "target": None}, "x")
    with pytest.raises(TaskDeclarationError, match="choices: only for classification"):
        parse_task({**spec, "choices": [" a"]}, "x")
    with pytest.raises(
        TaskDeclarationError, match=r"metrics: unknown \['accuracy'\] for generation"
    ):
        parse_task({**spec, "metrics": ["accuracy"]}, "x")


def qa_task(data) -> dict:
    """A generative task declared in YAML: JSONL rows with one or several answers."""
    import json

    data.mkdir(parents=True, exist_ok=True)
    facts = [("Paris", "France"), ("Rome", "Italy"), ("Madrid", "Spain"), ("Lisbon", "Portugal")]
    rows = [
        {
            "context": f"{city} is the capital of {country}.",
            "question": f"Where is {city}?",
            "answers": [country, f"in {country}"],
        }
        for city, country in facts
    ]
    for split, n in (("train", 4), ("dev", 1), ("test", 1)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * n))
    return {
        "name": "capitals",
        "type": "generation",
        "template": "{context}\nQuestion: {question}\nAnswer:",
        "target": "answers",
        "max_new_tokens": 6,
        "metrics": ["token_f1", "exact_match"],
        "protocol": "explicit",
        "truncate_field": "context",
        "files": {s: {"path": str(data / f"{s}.jsonl")} for s in ("train", "dev", "test")},
    }


def base_greedy_answers(run, stop: str) -> list[str]:
    """The test rows answered by the run's base model alone with transformers' own greedy
    ``generate`` (no pipeline decoding code): decoded, cut at ``stop``, stripped."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = json.loads((run / "config.resolved.json").read_text())["model"]["source"]
    base = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    task = json.loads((run / "export" / "task.json").read_text())
    answers = []
    for context in datasets.load_from_disk(str(run / "tokenize" / "test"))["context_ids"]:
        ids = torch.tensor([context])
        out = base.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=6
        )
        text = tokenizer.decode(out[0, len(context) :], skip_special_tokens=True)
        answers.append(text.split(stop)[0].strip())
    assert task["task"] == "capitals"
    return answers


def test_a_generative_yaml_task_end_to_end(tmp_path, tiny_model_dir) -> None:
    """Train on target tokens, evaluate by generating, predict text: YAML only, tiny model."""
    import json

    from pipeline.cli import main
    from pipeline.engine.predict import Predictor
    from tests.helpers import write_config

    task = {"name": "capitals", "spec": qa_task(tmp_path / "data"), "max_length": 48}
    task.update(train_limit=None, dev_limit=None, test_limit=None)
    config = write_config(tmp_path, tiny_model_dir, task=task, tracking={"uri": None})
    assert main(["run", str(config)]) == 0
    run = tmp_path / "runs" / "tiny"
    metrics = json.loads((run / "evaluate" / "metrics.json").read_text())
    assert set(metrics["adapter"]) == set(metrics["zero_shot"]) == {"token_f1", "exact_match"}
    rows = [
        json.loads(x) for x in (run / "evaluate" / "predictions.jsonl").read_text().split("\n") if x
    ]
    assert len(rows) == 4 and all(isinstance(r["generated"], str) for r in rows)
    assert rows[0]["answers"] == ["France", "in France"]

    def squad_normal(text: str) -> str:  # SQuAD's rule, written out here
        kept = "".join(c for c in text.lower() if c not in string.punctuation)
        return " ".join(w for w in kept.split() if w not in ("a", "an", "the"))

    def scores(answers: list[str]) -> dict[str, float]:
        """SQuAD's EM and token F1 (best over each row's golds), written out here."""
        exact, f1 = [], []
        for answer, row in zip(answers, rows, strict=True):
            said = squad_normal(answer).split()
            golds = [squad_normal(a).split() for a in row["answers"]]
            exact.append(any(said == gold for gold in golds))
            overlap = [sum((Counter(said) & Counter(gold)).values()) for gold in golds]
            f1.append(
                max(
                    2 * o / (len(said) + len(gold)) if said and gold else float(said == gold)
                    for o, gold in zip(overlap, golds, strict=True)
                )
            )
        return {"exact_match": sum(exact) / len(rows), "token_f1": sum(f1) / len(rows)}

    assert metrics["adapter"] == pytest.approx(scores([r["generated"] for r in rows]))
    assert metrics["zero_shot"] == pytest.approx(scores(base_greedy_answers(run, stop="\n")))
    history = (run / "train" / "history.jsonl").read_text()
    assert "dev/token_f1" in history
    row = {"context": "Oslo is in Norway.", "question": "Where?"}
    predicted = Predictor(run).predict([row])
    assert list(predicted[0]) == ["generated"] and isinstance(predicted[0]["generated"], str)
    import mlflow
    import pandas as pd

    registered = json.loads((run / "export" / "registered.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(f"models:/{registered['name']}/{registered['version']}")
    served = model.predict(pd.DataFrame([row]))
    assert list(served.columns) == ["generated"]
    assert served["generated"].tolist() == [predicted[0]["generated"]]


def test_zero_shot_decoding_without_a_prompt() -> None:
    """No prompt (the base model through the wrapper): cached ≡ full re-run, and it equals the
    base model's own greedy `generate`."""
    from pipeline.methods import ZeroShot

    base = tiny_llama()
    model = ZeroShot(base).eval()
    ids, mask, rows = ragged_batch(seed=4)
    cached = greedy_generate(model, ids, mask, 6, {1})
    assert cached == greedy_generate(model, ids, mask, 6, {1}, use_cache=False)
    for row, tokens in zip(rows, cached, strict=True):
        out = base.generate(row[None], max_new_tokens=6, do_sample=False, eos_token_id=1)
        reference = out[0, len(row) :].tolist()
        expected = reference[: reference.index(1)] if 1 in reference else reference
        assert tokens == expected and len(expected) > 0
