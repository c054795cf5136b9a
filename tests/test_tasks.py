"""Task files, quirks, split protocol, truncation and metrics on the real GLUE/SuperGLUE files."""

from __future__ import annotations

import math

import pytest

from pipeline.tasks import TASKS, DataError, Encoder, get_task, load_task_splits
from pipeline.tasks.metrics import METRICS
from pipeline.tasks.readers import read_jsonl, read_tsv

# (task, train, dev, test) sizes under the DePT/ADePT protocol
SIZES = {
    "boolq": (9427, 1635, 1635),
    "rte": (2490, 138, 139),
    "cb": (250, 28, 28),
    "copa": (400, 50, 50),
    "wic": (5428, 319, 319),
    "sst2": (66349, 1000, 872),
    "mrpc": (3668, 204, 204),
    "cola": (8551, 521, 522),
    "stsb": (5749, 750, 750),
    "squad": (19000, 1000, 10570),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_protocol_splits_and_labels(name: str, data_dir, gemma_tokenizer) -> None:
    task = get_task(name)
    splits = load_task_splits(task, data_dir, {})
    assert tuple(len(splits[s][0]) for s in ("train", "dev", "test")) == SIZES[name]
    dev_ids = {r["_line"] for r in splits["dev"][0]}
    test_ids = {r["_line"] for r in splits["test"][0]}
    if task.protocol == "small":
        assert not dev_ids & test_ids  # disjoint halves of the validation file
    encoded = Encoder(task, gemma_tokenizer, 256).encode(splits["test"][0][:40], "test")
    n = len(task.choices_for(task.normalise(splits["test"][0][0], "test")))
    assert all(len(choices) == n for choices in encoded["choice_ids"])
    assert all(0 <= label < n for label in encoded["label"])
    assert all(
        len(c) + max(map(len, ch)) <= 256
        for c, ch in zip(encoded["context_ids"], encoded["choice_ids"], strict=True)
    )


def test_file_quirks(data_dir) -> None:
    mrpc = get_task("mrpc").files["train"].read(data_dir)
    assert "label" in mrpc[0] and "sentence1" in mrpc[0]  # BOM stripped from 'Quality'
    cola = get_task("cola").files["validation"].read(data_dir)
    assert len(cola) == 1043 and cola[-1]["label"] in ("0", "1")  # no header, no final newline
    boolq = read_jsonl(data_dir / "superglue/boolq/val.jsonl")
    assert isinstance(boolq[0]["answer"], bool)
    assert read_tsv(data_dir / "glue/sst2/dev.tsv")[0]["sentence"].endswith(" ")


def test_truncation_shortens_passage_only(data_dir, gemma_tokenizer) -> None:
    task = get_task("boolq")
    rows, source = load_task_splits(task, data_dir, {"train": 20})["train"]
    encoded = Encoder(task, gemma_tokenizer, 64).encode(rows, source)
    assert any(encoded["truncated"])
    for row, ids in zip(rows, encoded["context_ids"], strict=True):
        assert len(ids) <= 63
        text = gemma_tokenizer.decode(ids)
        assert text.endswith(f"\nQuestion: {row['question']}?\nAnswer:")  # question kept whole


@pytest.mark.parametrize("splice", [True, False])
def test_truncated_ids_are_the_tokenization_of_the_shortened_text(
    splice, data_dir, gemma_tokenizer, monkeypatch
) -> None:
    """Truncation splices ids (tokens before the cut + the context's tokens after the passage),
    checked around the cut; without the splice (a failed check) rows are re-tokenized. Either
    way a truncated row's ids are exactly what the tokenizer gives for its text, and the spliced
    ones fill the budget (96 minus the longest answer's tokens) to the token."""
    task = get_task("boolq")
    rows, source = load_task_splits(task, data_dir, {"train": 200})["train"]
    if not splice:
        monkeypatch.setattr(Encoder, "_splice", lambda self, *args: {})
    encoded = Encoder(task, gemma_tokenizer, 96).encode(rows, source)
    truncated = [i for i, cut in enumerate(encoded["truncated"]) if cut]
    assert len(truncated) > 100
    budget = 96 - max(len(c) for c in encoded["choice_ids"][0])
    for i in truncated:
        ids = encoded["context_ids"][i]
        text = gemma_tokenizer.decode(ids, skip_special_tokens=True)
        assert gemma_tokenizer(text)["input_ids"] == ids
        assert str(rows[i]["passage"]).startswith(text.split("\nQuestion: ")[0])
        assert len(ids) == budget if splice else budget - 1 <= len(ids) <= budget


def test_template_longer_than_max_length(data_dir, gemma_tokenizer) -> None:
    task = get_task("boolq")
    rows, source = load_task_splits(task, data_dir, {"train": 2})["train"]
    with pytest.raises(DataError, match=r"task\.max_length=8 is shorter than the template"):
        Encoder(task, gemma_tokenizer, 8).encode(rows, source)


def test_bad_rows_name_file_and_line(tmp_path, gemma_tokenizer) -> None:
    path = tmp_path / "superglue" / "rte"
    path.mkdir(parents=True)
    good = '{"premise": "a", "hypothesis": "b", "label": "entailment"}\n'
    (path / "train.jsonl").write_text(good + '{"premise": "a", broken\n')
    (path / "val.jsonl").write_text(good * 4)
    with pytest.raises(DataError, match=r"train.jsonl: line 2: malformed JSON"):
        load_task_splits(get_task("rte"), tmp_path, {})
    (path / "train.jsonl").write_text(good + good.replace("entailment", "maybe"))
    task = get_task("rte")
    rows, source = load_task_splits(task, tmp_path, {})["train"]
    with pytest.raises(DataError, match=r"train.jsonl: line 2: label 'maybe' is not one of"):
        Encoder(task, gemma_tokenizer, 64).encode(rows, source)


def test_unknown_task_and_missing_dir(tmp_path) -> None:
    with pytest.raises(KeyError, match="unknown task 'nope'; known: boolq"):
        get_task("nope")
    with pytest.raises(DataError, match="does not exist"):
        load_task_splits(get_task("rte"), tmp_path / "missing", {})


def test_metrics_values() -> None:
    assert METRICS["accuracy"]([1, 0, 1, 1], [1, 0, 0, 1]) == 0.75
    assert METRICS["f1"]([1, 0, 1, 1], [1, 0, 0, 1]) == pytest.approx(0.8)
    assert METRICS["mcc"]([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert METRICS["macro_f1"]([0, 1, 2], [0, 1, 1]) == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert METRICS["pearson"]([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert METRICS["spearman"]([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert METRICS["pearson"]([1, 1, 1], [1, 2, 3]) == 0.0
    assert not math.isnan(METRICS["mcc"]([1, 1], [1, 1]))


@pytest.mark.parametrize(("name", "max_length"), [("sst2", 64), ("boolq", 96), ("copa", 64)])
def test_rust_backend_path_encodes_like_the_tokenizer_call(
    name, max_length, data_dir, gemma_tokenizer, monkeypatch
) -> None:
    """The tokenize stage calls the Rust backend directly (speed); it must give the ids, the
    truncation and the choices that ``tokenizer(...)`` gives (BoolQ at 96 truncates most rows)."""
    import pipeline.tasks.data as data

    assert data.rust_backend(gemma_tokenizer) is not None
    task = get_task(name)
    rows, source = load_task_splits(task, data_dir, {"train": 300})["train"]
    fast = Encoder(task, gemma_tokenizer, max_length).encode(rows, source)
    monkeypatch.setattr(data, "rust_backend", lambda tokenizer: None)
    slow = Encoder(task, gemma_tokenizer, max_length).encode(rows, source)
    assert fast == slow
    assert (sum(fast["truncated"]) > 100) == (name == "boolq")


def test_offsets_from_the_first_pass_or_a_second_one_give_the_same_rows(
    data_dir, gemma_tokenizer, monkeypatch
) -> None:
    """Long contexts get character offsets in the first tokenizer pass (they will likely be
    cut); an over-long row the length guess missed is tokenized again with offsets. Both paths
    give the same ids, and the second pass runs over exactly the missed rows."""
    import pipeline.tasks.data as data

    task = get_task("boolq")
    rows, source = load_task_splits(task, data_dir, {"train": 200})["train"]
    passes: list[int] = []
    encode_batch = data.encode_batch

    def counting(tokenizer, texts, with_offsets=None):
        passes.append(len(texts) if with_offsets is None else sum(with_offsets))
        return encode_batch(tokenizer, texts, with_offsets)

    monkeypatch.setattr(data, "encode_batch", counting)
    results, default = {}, data.LIKELY_CUT_CHARS_PER_TOKEN
    for chars_per_token in (0.0, default, 1e9):  # all rows, the default guess, none
        monkeypatch.setattr(data, "LIKELY_CUT_CHARS_PER_TOKEN", chars_per_token)
        passes.clear()
        results[chars_per_token] = Encoder(task, gemma_tokenizer, 96).encode(rows, source)
        cut = sum(results[chars_per_token]["truncated"])
        first_pass_offsets, second_pass = passes[0], sum(passes[1:])
        if chars_per_token == default:  # a part of the rows, every row to cut among them
            assert cut <= first_pass_offsets < 200
        else:
            assert first_pass_offsets == {0.0: 200, 1e9: 0}[chars_per_token]
        assert second_pass == (cut if chars_per_token == 1e9 else 0)
    assert results[0.0] == results[default] == results[1e9]
    assert sum(results[0.0]["truncated"]) > 100


def test_each_builtin_task_file_is_named_after_its_task() -> None:
    """Built-in tasks load by name from builtin/<name>.yaml (only the one a config names)."""
    from pipeline.tasks import TASKS
    from pipeline.tasks.registry import BUILTIN_DIR, load_task_file

    files = sorted(BUILTIN_DIR.glob("*.yaml"))
    assert len(files) == len(TASKS) >= 10
    for path in files:
        assert load_task_file(path).name == path.stem
    assert "nope" not in TASKS and "boolq" in TASKS
