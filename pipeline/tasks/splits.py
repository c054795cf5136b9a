"""Splits (the DePT/ADePT protocol) planned from the files' row counts alone, so the rows can
stream: which row of which file goes to which split, at which position."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import OneFileSplit, Row, Task
from .readers import DataError
from .sources import RowSource, hub_sources, local_sources

SPLIT_SEED = 42
LARGE_DEV_SIZE = 1000
SCAN_ROWS = 65_536  # rows of the plan turned into Python at a time
CHUNK_ROWS = 4096  # rows read, checked and encoded together
CHECKED_ROWS = 20  # rows of each split `pipeline validate` runs through templates and labels


def row_indices(values: Any, rows: int) -> Any:
    """Row indices in the smallest unsigned type that holds them (4 bytes a row below 4G
    rows): the plan's memory is a few bytes per row, not a Python object per row."""
    import numpy as np

    return np.asarray(values).astype(np.min_scalar_type(max(rows, 1)))


def protocol_order(
    task: Task, sizes: dict[str, int], seed: int = SPLIT_SEED, classes: Any = None
) -> dict[str, tuple[str, Any]]:
    """{split: (the file it comes from, that file's row indices in the split's order)}, given
    each file's row count. Small tasks: validation shuffled (seed 42) and halved → dev, test.
    Large tasks: 1,000 shuffled training rows are held out as dev; the official validation set
    is the test set. Explicit: the task's own train/dev/test files. Split: one file cut by
    :func:`one_file_order` (``classes``: each row's class, to stratify by)."""
    import numpy as np  # here: checking a config needs no numpy

    def identity(n: int) -> Any:
        return row_indices(np.arange(n), n)

    if task.protocol == "explicit":
        return {split: (split, identity(n)) for split, n in sizes.items()}
    if task.protocol == "split":
        return one_file_order(task.split or OneFileSplit(), sizes["data"], classes)
    rng = np.random.default_rng(seed)
    if task.protocol == "small":
        n = sizes["validation"]
        order, half = row_indices(rng.permutation(n), n), n // 2
        return {
            "train": ("train", identity(sizes["train"])),
            "dev": ("validation", order[:half]),
            "test": ("validation", order[half:]),
        }
    n = sizes["train"]
    order = row_indices(rng.permutation(n), n)
    return {
        "train": ("train", order[LARGE_DEV_SIZE:]),
        "dev": ("train", order[:LARGE_DEV_SIZE]),
        "test": ("validation", identity(sizes["validation"])),
    }


def one_file_order(how: OneFileSplit, rows: int, classes: Any = None) -> dict[str, tuple]:
    """The ``data`` file's rows cut into train, dev and test: a seeded shuffle, within each
    class when ``classes`` (one per row) is given, so every class keeps its share in each
    split (rounded per class); each split in file order."""
    import numpy as np

    rng = np.random.default_rng(how.seed)
    groups = (
        [np.arange(rows)]
        if classes is None
        else [np.flatnonzero(classes == c) for c in np.unique(classes)]
    )
    picked: dict[str, list[Any]] = {"train": [], "dev": [], "test": []}
    for group in groups:
        shuffled = rng.permutation(group)
        test, dev = round(how.test * len(group)), round(how.dev * len(group))
        picked["test"].append(shuffled[:test])
        picked["dev"].append(shuffled[test : test + dev])
        picked["train"].append(shuffled[test + dev :])
    return {
        split: ("data", row_indices(np.sort(np.concatenate(parts)), rows))
        for split, parts in picked.items()
    }


def row_classes(task: Task, source: RowSource) -> Any:
    """Each row's class (its label's choice index) in file order: what a one-file split is
    stratified by. A row without a usable label is a DataError naming its line, here."""
    import numpy as np

    where = source.description
    return np.fromiter((task.label_of(row, where) for row in source.rows()), dtype=np.int32)


@dataclass
class SplitPlan:
    """Where every row of a task's files goes (the protocol split, then the row limits), worked
    out from the files' row counts alone, so the rows themselves can stream."""

    files: dict[str, RowSource]
    counts: dict[str, int]  # rows per file
    order: dict[str, tuple[str, Any]]  # split → (file, its row indices in split order)
    cut: dict[str, Any] | None = None  # protocol split: how the one file was cut (recorded)

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(indices) for split, (_, indices) in self.order.items()}

    def source(self, split: str) -> str:
        return self.files[self.order[split][0]].description

    def in_file_order(self, split: str) -> bool:
        """Whether the split's rows come in the order its file has them (no shuffle)."""
        import numpy as np

        indices = self.order[split][1]
        return bool(np.all(indices[1:] > indices[:-1]))

    def subset(self, positions: dict[str, Any]) -> SplitPlan:
        """The plan of only the rows at ``positions`` of each split, in that order."""
        import numpy as np

        order = {}
        for split, (file, indices) in self.order.items():
            order[split] = (file, indices[np.asarray(positions[split], dtype=np.int64)])
        return SplitPlan(self.files, self.counts, order, self.cut)

    def routes(self, file: str) -> tuple[list[str], Any, Any]:
        """(split names, per row of ``file`` the index of its split or -1 when no split takes
        it, per row its position in that split)."""
        import numpy as np

        splits = [s for s, (f, _) in self.order.items() if f == file]
        n = self.counts[file]
        split_of, position = np.full(n, -1, np.int8), np.zeros(n, np.min_scalar_type(max(n, 1)))
        for k, split in enumerate(splits):
            indices = self.order[split][1]
            split_of[indices], position[indices] = k, np.arange(len(indices))
        return splits, split_of, position

    def chunks(self, rows: int) -> Iterator[tuple[str, Any, list[Row]]]:
        """(split, positions, rows): every split's rows, at most ``rows`` at a time, each file
        read once in its own order; rows no split takes are skipped (JSONL: unparsed)."""
        import numpy as np

        for file, source in self.files.items():
            splits, split_of, position = self.routes(file)
            wanted = split_of >= 0
            pending: dict[int, tuple[list[int], list[Row]]] = {}
            read = source.rows(wanted)
            for start in range(0, len(wanted), SCAN_ROWS):  # never a Python int per row
                for index in (np.flatnonzero(wanted[start : start + SCAN_ROWS]) + start).tolist():
                    row = next(read, None)
                    if row is None:
                        raise DataError(f"{source.description}: fewer rows than counted (changed?)")
                    k = int(split_of[index])
                    held = pending.setdefault(k, ([], []))
                    held[0].append(index)
                    held[1].append(row)
                    if len(held[1]) == rows:
                        del pending[k]
                        yield splits[k], position[held[0]].astype(np.int64), held[1]
            if next(read, None) is not None:
                raise DataError(f"{source.description}: more rows than counted (changed?)")
            for k, (held_indices, held_rows) in pending.items():
                yield splits[k], position[held_indices].astype(np.int64), held_rows


def plan_splits(task: Task, data_dir: Path | None, limits: dict[str, int | None]) -> SplitPlan:
    """The split plan of a task's data. Without a data directory, a task with a hub dataset is
    read from the hub; else its file paths are taken as they are (absolute, or relative to the
    working directory). An empty split is an error naming its file."""
    names = list(task.files)
    local = data_dir is not None or task.hub is None
    files = local_sources(task, data_dir, names) if local else hub_sources(task, names)
    counts = {name: source.count() for name, source in files.items()}
    how = task.split or OneFileSplit()
    stratified = task.protocol == "split" and how.stratify and task.type == "classification"
    classes = row_classes(task, files["data"]) if stratified else None
    order = {}
    for split, (file, indices) in protocol_order(task, counts, classes=classes).items():
        limit = limits.get(split)
        order[split] = (file, indices[:limit] if limit else indices)
        if not len(order[split][1]):
            raise DataError(f"task {task.name}: split {split} is empty ({files[file].description})")
    cut = one_file_cut(task, how, order, classes) if task.protocol == "split" else None
    return SplitPlan(files, counts, order, cut)


def one_file_cut(task: Task, how: OneFileSplit, order: dict, classes: Any) -> dict[str, Any]:
    """What a one-file split did, as the run records it (tokenize's stats.json): fractions,
    seed, what it was stratified by, and each split's rows per label value."""
    import numpy as np

    cut: dict[str, Any] = {
        "protocol": "split",
        **how.model_dump(),
        "stratified_by": task.label.field if classes is not None else None,
        "rows": {split: len(indices) for split, (_, indices) in order.items()},
    }
    if classes is not None:
        values = task.label_values()
        cut["classes"] = {
            split: {
                values[c]: int(n)
                for c, n in enumerate(np.bincount(classes[indices], minlength=len(values)))
            }
            for split, (_, indices) in order.items()
        }
    return cut


def load_task_splits(
    task: Task | SplitPlan,
    data_dir: Path | None = None,
    limits: dict[str, int | None] | None = None,
) -> dict[str, tuple[list[Row], str]]:
    """{split: (rows, source description)} after the protocol split and the row limits (or
    of a plan), held in memory (the tokenize stage streams them instead)."""
    plan = task if isinstance(task, SplitPlan) else plan_splits(task, data_dir, limits or {})
    out: dict[str, list[Any]] = {split: [None] * size for split, size in plan.sizes.items()}
    for split, positions, rows in plan.chunks(CHUNK_ROWS):
        for position, row in zip(positions.tolist(), rows, strict=True):
            out[split][position] = row
    return {split: (out[split], plan.source(split)) for split in plan.order}


def check_task_data(
    task: Task, data_dir: Path | None, limits: dict[str, int | None]
) -> SplitPlan | None:
    """What `pipeline validate` checks in the data, in seconds, before any model loads: every
    split's file is read (streamed), the fields the declaration names exist in its rows, and
    the first rows go through the templates and the label map (a DataError names the file and
    line). The split plan (its ``sizes``, ``source(split)`` and a one-file ``cut``); None when
    the data would come from the hub (not read here)."""
    if data_dir is None and task.hub is not None:
        return None
    plan = plan_splits(task, data_dir, limits)
    for split, positions, rows in plan.chunks(CHUNK_ROWS):
        source = plan.source(split)
        task.check_fields(rows, source)
        for position, row in zip(positions.tolist(), rows, strict=True):
            if position < CHECKED_ROWS:
                normal = task.normalise(row, source)
                task.context(normal, source)
                task.label_of(normal, source)  # renders the choices too
    return plan
