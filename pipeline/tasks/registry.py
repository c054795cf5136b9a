"""The task registry. Adding a classification task = one ``Task(...)`` entry here (see README)."""

from __future__ import annotations

from .base import DataFile, Row, Task

NO_YES = (" no", " yes")
BOOL_LABELS = {False: 0, True: 1, "False": 0, "True": 1, "0": 0, "1": 1}


def _superglue(name: str) -> dict[str, DataFile]:
    return {
        "train": DataFile(f"superglue/{name}/train.jsonl"),
        "validation": DataFile(f"superglue/{name}/val.jsonl"),
    }


def _glue(name: str, **kw) -> dict[str, DataFile]:
    return {
        "train": DataFile(f"glue/{name}/train.tsv", **kw),
        "validation": DataFile(f"glue/{name}/dev.tsv", **kw),
    }


COPA_CONNECTORS = {"cause": "because", "effect": "therefore"}


def _copa_prepare(row: Row) -> Row:
    if row["question"] not in COPA_CONNECTORS:
        raise ValueError(f"question {row['question']!r} is not one of {sorted(COPA_CONNECTORS)}")
    empty = [name for name in ("choice1", "choice2") if not row[name].strip()]
    if empty:
        raise ValueError(f"empty choice(s) {empty}")
    connector = COPA_CONNECTORS[row["question"]]
    row["premise_trimmed"] = row["premise"].strip().rstrip(".")
    row["connector"] = connector
    return row


def _copa_choices(row: Row) -> list[str]:
    return [" " + c[0].lower() + c[1:] for c in (row["choice1"], row["choice2"])]


def _boolq_label(row: Row):
    return row["answer"] if "answer" in row else row["label"]


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            name="boolq",
            template="{passage}\nQuestion: {question}?\nAnswer:",
            fields=("passage", "question"),
            label_field=None,  # 'answer' (HF parquet export) or 'label' (SuperGLUE JSONL)
            label_fn=_boolq_label,
            choices=NO_YES,
            label_map=BOOL_LABELS,
            metrics=("accuracy",),
            protocol="small",
            files=_superglue("boolq"),
            hub=("google/boolq", None),
            truncate_field="passage",
        ),
        Task(
            name="rte",
            template="{premise}\nQuestion: {hypothesis} True or False?\nAnswer:",
            fields=("premise", "hypothesis"),
            label_field="label",
            choices=(" True", " False"),
            label_map={"entailment": 0, "not_entailment": 1, 0: 0, 1: 1},
            metrics=("accuracy",),
            protocol="small",
            files=_superglue("rte"),
            hub=("super_glue", "rte"),
            truncate_field="premise",
        ),
        Task(
            name="cb",
            template="{premise}\nQuestion: {hypothesis}. True, False, or Neither?\nAnswer:",
            fields=("premise", "hypothesis"),
            label_field="label",
            choices=(" True", " False", " Neither"),
            label_map={"entailment": 0, "contradiction": 1, "neutral": 2, 0: 0, 1: 1, 2: 2},
            metrics=("accuracy", "macro_f1"),
            protocol="small",
            files=_superglue("cb"),
            hub=("super_glue", "cb"),
            truncate_field="premise",
        ),
        Task(
            name="copa",
            template="{premise_trimmed} {connector}",
            fields=("premise", "choice1", "choice2", "question"),
            label_field="label",
            row_choices=_copa_choices,
            prepare=_copa_prepare,
            metrics=("accuracy",),
            protocol="small",
            files=_superglue("copa"),
            hub=("super_glue", "copa"),
        ),
        Task(
            name="wic",
            template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Is the word "
            "'{word}' used in the same way in the two sentences above?\nAnswer:",
            fields=("sentence1", "sentence2", "word"),
            label_field="label",
            choices=NO_YES,
            label_map=BOOL_LABELS,
            metrics=("accuracy",),
            protocol="small",
            files=_superglue("wic"),
            hub=("super_glue", "wic"),
        ),
        Task(
            name="sst2",
            template="{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
            fields=("sentence",),
            label_field="label",
            choices=(" negative", " positive"),
            label_map={"0": 0, "1": 1, 0: 0, 1: 1},
            metrics=("accuracy",),
            protocol="large",
            files=_glue("sst2"),
            hub=("glue", "sst2"),
            truncate_field="sentence",
        ),
        Task(
            name="mrpc",
            template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Do both "
            "sentences mean the same thing?\nAnswer:",
            fields=("sentence1", "sentence2"),
            label_field="label",
            choices=NO_YES,
            label_map={"0": 0, "1": 1, 0: 0, 1: 1},
            metrics=("accuracy", "f1"),
            protocol="small",
            files=_glue(
                "mrpc",
                rename={"Quality": "label", "#1 String": "sentence1", "#2 String": "sentence2"},
            ),
            hub=("glue", "mrpc"),
            truncate_field="sentence1",
        ),
        Task(
            name="cola",
            template="{sentence}\nQuestion: Does this sentence make sense?\nAnswer:",
            fields=("sentence",),
            label_field="label",
            choices=NO_YES,
            label_map={"0": 0, "1": 1, 0: 0, 1: 1},
            metrics=("mcc", "accuracy"),
            protocol="small",
            files=_glue("cola", columns=("source", "label", "original_label", "sentence")),
            hub=("glue", "cola"),
            truncate_field="sentence",
        ),
        Task(
            name="stsb",
            template="Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: How similar "
            "are the two sentences, on a scale from 0 to 5?\nAnswer:",
            fields=("sentence1", "sentence2"),
            label_field=None,  # 'score' (GLUE TSV) or 'label' (hub)
            label_fn=lambda row: round(float(row.get("score", row.get("label")))),
            choices=(" 0", " 1", " 2", " 3", " 4", " 5"),
            choice_values=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0),
            gold_value=lambda row: float(row.get("score", row.get("label"))),
            metrics=("pearson", "spearman"),
            protocol="small",
            files=_glue("stsb"),
            hub=("glue", "stsb"),
            truncate_field="sentence1",
        ),
    ]
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"task.name: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]
