"""Bad input, round four, part two (issue 47): huge fields, CSV fields over the csv module's cap,
blank-looking JSONL lines, internal keys from YAML, directories where files belong. (The REST
server under abuse: tests/test_rest.py; predict's output and ambiguous columns:
tests/test_user_terms.py.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.tasks import DataError, Encoder, get_task
from tests.helpers import ENV, REPO, write_config
from tests.test_bad_input_round3 import RTE_ROWS, config_with_task, own_task, run_cli

MEMORY_PROBE = """
import json, resource, sys
from transformers import AutoTokenizer
from pipeline.tasks import Encoder, get_task
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
encoder = Encoder(get_task("boolq"), tokenizer, 256)
row = {"question": "is it long", "label": "True", "_line": 1}
encoder.encode([{**row, "passage": "a normal passage."}], "warm-up")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
words = " ".join(f"word{i}" for i in range(2_000_000))  # ~20 MB of text
out = encoder.encode([{**row, "passage": words}], "huge")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mib": (after - before) / 1024, "tokens": len(out["context_ids"][0]),
                  "truncated": out["truncated"][0], "chars": len(words)}))
"""


def test_a_multi_megabyte_field_is_cut_before_it_is_tokenized(tiny_model_dir) -> None:
    """A 20 MB passage: cut to what max_length can use by characters first, so the process
    grows by a few times the text, not by the ~2 GB its whole tokenization took."""
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tiny_model_dir)],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["chars"] > 20_000_000 and measured["truncated"]
    assert measured["tokens"] <= 256
    assert measured["mib"] < 250, measured  # the text itself is 20 MB (more as Python str)


def test_the_character_cut_changes_no_token(gemma_tokenizer) -> None:
    """The same row with and without the character cut: identical ids, for a passage far
    longer than the cut and one just past it."""
    encoder = Encoder(get_task("boolq"), gemma_tokenizer, 128)
    limit = encoder.char_limit
    words = " ".join(f"w{i}ord" for i in range(100_000))
    row = {"question": "is it", "label": "True", "_line": 1}
    for passage in (words, words[: limit + 7]):
        cut = encoder.encode([{**row, "passage": passage}], "src")
        encoder.__dict__["char_limit"] = 10**9  # as if there were no character cut
        whole = encoder.encode([{**row, "passage": passage}], "src")
        del encoder.__dict__["char_limit"]
        assert cut["context_ids"] == whole["context_ids"] and cut["truncated"] == [True]


def test_a_huge_field_that_may_not_be_shortened_is_named(gemma_tokenizer) -> None:
    encoder = Encoder(get_task("boolq"), gemma_tokenizer, 128)
    row = {"question": "q" * 5_000_000, "passage": "p", "label": "True", "_line": 7}
    with pytest.raises(DataError, match=r"src: line 7: field 'question' holds 5,000,000 char"):
        encoder.encode([row], "src")


def csv_task(tmp, field_chars: int):
    """An RTE-like CSV task whose train file's line 101 holds a quoted field of
    ``field_chars`` characters."""
    data = tmp / "data"
    data.mkdir()
    rows = [("A man sleeps.", "A man rests.", "entailment")] * 120
    rows[99] = (
        "A " + "very, " * (field_chars // 6) + "long premise.",
        "A man rests.",
        "entailment",
    )
    body = "".join(f'"{p}","{h}",{label}\n' for p, h, label in rows)
    for split in ("train", "dev", "test"):
        (data / f"{split}.csv").write_text("premise,hypothesis,label\n" + body)
    files = {s: {"path": str(data / f"{s}.csv")} for s in ("train", "dev", "test")}
    return own_task(tmp, files=files, truncate_field="premise")


def test_a_csv_field_over_128_kib_is_read(tmp_path, tiny_model_dir, capsys) -> None:
    config = config_with_task(tmp_path, tiny_model_dir, csv_task(tmp_path, 240_000))
    assert main(["validate", str(config), "--no-probe"]) == 0, capsys.readouterr().err
    assert main(["run", str(config), "--no-probe", "--stages", "tokenize"]) == 0
    stats = json.loads((tmp_path / "runs" / "tiny" / "tokenize" / "stats.json").read_text())
    assert stats["train"]["rows"] == 120 and stats["train"]["truncated"] == 1


@pytest.mark.parametrize("invisible", ["\u00a0", "\x1c", "\u2028 "])
def test_a_line_of_only_invisible_characters_is_named_by_line(
    tmp_path, tiny_model_dir, capsys, invisible
) -> None:
    """Counted and read by one rule: the row count no longer disagrees with the reader."""
    lines = [json.dumps(RTE_ROWS[i % 2]) + "\n" for i in range(6000)]
    lines.insert(5001, invisible + "\n")  # line 5002
    task = own_task(tmp_path)
    (tmp_path / "data" / "train.jsonl").write_text("".join(lines))
    config = config_with_task(tmp_path, tiny_model_dir, task)
    err = run_cli(capsys, "validate", str(config), "--no-probe")
    assert "train.jsonl: line 5002: holds only invisible characters" in err, err
    assert "fewer rows than counted" not in err


def test_an_internal_key_from_yaml_is_refused(tmp_path, tiny_model_dir, capsys) -> None:
    config = write_config(tmp_path, tiny_model_dir, model={"dtype_resolved": "float16"})
    err = run_cli(capsys, "validate", str(config))
    assert "model.dtype_resolved: not a config key" in err and "set model.dtype" in err
    err = run_cli(capsys, "validate", str(write_config(tmp_path / "b", tiny_model_dir)),
                  "--set", "model.dtype_resolved=float16")  # fmt: skip
    assert "model.dtype_resolved: not a config key" in err


@pytest.mark.parametrize("command", ["validate", "compare"])
def test_a_directory_where_a_file_belongs_is_called_one(tmp_path, capsys, command) -> None:
    err = run_cli(capsys, command, str(tmp_path))
    what = "study file" if command == "compare" else "config file"
    assert f"{what} {tmp_path} is a directory" in err, err
