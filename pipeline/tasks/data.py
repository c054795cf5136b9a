"""Tokenisation of task rows into context + choice token ids."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from .base import Row, Task
from .readers import DataError

# A context longer than this many characters per token of its budget is tokenized with character
# offsets in the first pass, since it will likely be cut (English text runs ~4 characters per
# token); a row cut without them is tokenized a second time.
LIKELY_CUT_CHARS_PER_TOKEN = 2.5
CHAR_CUT_MARGIN_TOKENS = 16  # tokens of slack past max_length before a field's text is cut


def rust_backend(tokenizer: Any) -> Any:
    """The fast tokenizer's Rust backend when calling it directly gives exactly what
    ``tokenizer(texts)`` gives (no truncation or padding configured on it); else None.

    The transformers wrapper converts every encoding to Python dicts row by row, which costs
    about as much as the tokenization itself on short rows (SST-2).
    """
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    return backend


def offset_free(backend: Any) -> Any:
    """The backend's batched encode without character offsets (``encode_batch_fast``,
    tokenizers >= 0.21), else its ``encode_batch``."""
    return getattr(backend, "encode_batch_fast", backend.encode_batch)


def token_ids(tokenizer: Any, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Batched token ids of ``texts``, as ``tokenizer(texts)["input_ids"]``."""
    backend = rust_backend(tokenizer)
    if backend is None:
        return tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    return [e.ids for e in offset_free(backend)(texts, add_special_tokens=add_special_tokens)]


@dataclass
class Encoded:
    """One text's token ids and their character offsets (what a Rust ``Encoding`` holds)."""

    ids: list[int]
    offsets: list[tuple[int, int]]


def encode_batch(
    tokenizer: Any, texts: list[str], with_offsets: list[bool] | None = None
) -> list[Any]:
    """Batched encodings (``.ids``, ``.offsets``), special tokens included, as
    ``tokenizer(texts, return_offsets_mapping=True)`` gives them. From the Rust backend only the
    texts flagged in ``with_offsets`` (default: all) carry offsets; the others come from the
    backend's offset-free ``encode_batch_fast`` (their ``.offsets`` are empty)."""
    backend = rust_backend(tokenizer)
    if backend is None:
        enc = tokenizer(texts, return_offsets_mapping=True)
        pairs = zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        return [Encoded(ids, offsets) for ids, offsets in pairs]
    if with_offsets is None or all(with_offsets):
        return backend.encode_batch(texts)
    out: list[Any] = [None] * len(texts)
    for encode, flag in ((backend.encode_batch, True), (offset_free(backend), False)):
        chosen = [i for i, wanted in enumerate(with_offsets) if wanted == flag]
        for i, encoding in zip(chosen, encode([texts[i] for i in chosen]), strict=True):
            out[i] = encoding
    return out


class Encoder:
    """Turns rows into ``context_ids`` + per-choice ``choice_ids`` within ``max_length`` tokens.

    Over-long rows lose tokens from the task's ``truncate_field`` (the passage), never from the
    question or the answer.
    """

    def __init__(self, task: Task, tokenizer: Any, max_length: int) -> None:
        self.task, self.tokenizer, self.max_length = task, tokenizer, max_length
        self._choice_cache: dict[str, list[int]] = {}

    @functools.cached_property
    def char_limit(self) -> int:
        """Characters of one field that can matter: no token stands for more characters than
        its vocabulary's longest entry, so a field longer than ``max_length`` (+ margin) such
        tokens has more tokens than any row may hold. Text past this is cut before tokenizing
        (a multi-megabyte passage is never tokenized whole); the token cut after it keeps the
        same tokens as without it."""
        longest = max(map(len, self.tokenizer.get_vocab()), default=1)
        return (self.max_length + CHAR_CUT_MARGIN_TOKENS) * longest

    def cut_characters(self, row: Row, source: str) -> Row:
        """``row`` with its truncate field cut to ``char_limit`` characters; another template
        field longer than that cannot fit at all: a DataError naming it, before tokenizing."""
        limit = self.char_limit
        long = [
            name
            for name in self.task.template_fields
            if isinstance(row.get(name), str) and len(row[name]) > limit
        ]
        field = self.task.truncate_field
        for name in long:
            if name != field:
                may = (
                    f"only {field!r} may be shortened"
                    if field
                    else f"task {self.task.name} has no field that may be shortened"
                )
                raise DataError(
                    f"{source}: line {row.get('_line', '?')}: field {name!r} holds "
                    f"{len(row[name]):,} characters, more than task.max_length={self.max_length} "
                    f"tokens can hold, and {may}"
                )
        return {**row, long[0]: row[long[0]][:limit]} if long else row

    def check_choices(self) -> None:
        """Distinct choice texts the tokenizer cannot tell apart are a mistake: every row
        would score them the same."""
        seen: dict[tuple[int, ...], str] = {}
        for choice in self.task.choices:
            ids = tuple(self.choice_ids(choice))
            if ids in seen:
                raise DataError(
                    f"task {self.task.name}: choices {seen[ids]!r} and {choice!r} tokenize "
                    f"identically ({list(ids)}): every row would score them the same"
                )
            seen[ids] = choice

    def choice_ids(self, text: str) -> list[int]:
        if text not in self._choice_cache:
            self._choice_cache[text] = token_ids(self.tokenizer, [text], False)[0]
        return self._choice_cache[text]

    def _fit(
        self,
        rows: list[Row],
        context_texts: list[str],
        contexts: list[list[int]],
        budgets: list[int],
        source: str,
        offset_encodings: dict[int, Any],
    ) -> list[list[int]]:
        """Shorten the truncate field of every over-long row to fit its budget.

        The cut comes from the context's own offsets (the field's tokens inside it). First the
        ids are spliced: the tokens before the cut, then the context's tokens after the field,
        which is what re-tokenizing the shortened text gives unless tokens merge across the
        cut; a few tokens either side of the cut are re-tokenized (batched) to check that.
        Rows that fail the check are re-tokenized whole, all such rows in one batched call per
        round.
        """
        contexts = list(contexts)
        pending = [i for i, ids in enumerate(contexts) if len(ids) > budgets[i]]
        if not pending:
            return contexts
        field = self.task.truncate_field
        if field is None:
            i = pending[0]
            raise DataError(
                f"{source}: line {rows[i].get('_line', '?')}: {len(contexts[i])} context tokens "
                f"exceed task.max_length={self.max_length} and task {self.task.name} has no "
                "field that may be shortened"
            )
        # each row's token offsets (of its latest encoding), converted to Python once
        offsets = {i: offset_encodings[i].offsets for i in pending if i in offset_encodings}
        unexpected = [i for i in pending if i not in offsets]
        if unexpected:  # over-long rows the first pass gave no offsets: encode them again
            again = encode_batch(self.tokenizer, [context_texts[i] for i in unexpected])
            offsets.update((i, e.offsets) for i, e in zip(unexpected, again, strict=True))
        head = self.task.template.split("{" + field + "}")[0]  # the template before the field
        texts = {i: str(rows[i][field]) for i in pending}

        def cut(i: int, slack: int) -> tuple[int, int | None, str]:
            """(index of the last kept token, index of the first token after the field or None
            when a token straddles the field's end, the shortened field text)."""
            start = len(head.format(**{**rows[i], field: texts[i]}))
            end = start + len(texts[i])
            spans = offsets[i]
            inside = [j for j, (a, b) in enumerate(spans) if b > start and a < end]
            keep = len(inside) - (len(contexts[i]) - budgets[i]) - slack
            if keep <= 0:
                self._too_short(rows[i], field, budgets[i], source)
            last_kept = inside[keep - 1]
            first_after = inside[-1] + 1 if spans[inside[-1]][1] == end else None
            return last_kept, first_after, texts[i][: spans[last_kept][1] - start]

        cuts = {i: cut(i, slack=0) for i in pending}
        spliced = self._splice(
            {i: (context_texts[i], contexts[i], offsets[i]) for i in pending},
            {i: (last, after) for i, (last, after, _) in cuts.items() if after is not None},
        )
        for i, ids in spliced.items():
            contexts[i] = ids
        pending = [i for i in pending if i not in spliced]
        for _ in range(4):  # re-tokenized text may grow at the cut: one token of slack per round
            if not pending:
                return contexts
            for i in pending:
                texts[i] = cut(i, slack=1)[2]
            shortened = [self.task.context({**rows[i], field: texts[i]}) for i in pending]
            for i, again in zip(pending, encode_batch(self.tokenizer, shortened), strict=True):
                offsets[i], contexts[i] = again.offsets, again.ids
            pending = [i for i in pending if len(contexts[i]) > budgets[i]]
        if not pending:
            return contexts
        line = rows[pending[0]].get("_line", "?")
        raise DataError(f"{source}: line {line}: could not truncate {field} to fit")

    def _splice(
        self,
        encoded: dict[int, tuple[str, list[int], list[tuple[int, int]]]],
        cuts: dict[int, tuple[int, int]],
        margin: int = 3,
    ) -> dict[int, list[int]]:
        """{row: ids} for the rows (``encoded``: context text, ids, offsets) where dropping the
        context's tokens between ``last_kept`` and ``first_after`` gives the tokenization of the
        shortened text: checked by re-tokenizing ``margin`` tokens either side of the cut
        together (one batched call) and getting the same tokens back. Windows touching a special
        token are not tried."""
        windows, expected, spliced = {}, {}, {}
        for i, (last_kept, first_after) in cuts.items():
            text, ids, offsets = encoded[i]
            lo, hi = last_kept - margin + 1, min(first_after + margin, len(ids))
            if lo < 0 or first_after >= hi or any(a == b for a, b in offsets[lo:hi]):
                continue
            windows[i] = (
                text[offsets[lo][0] : offsets[last_kept][1]]
                + text[offsets[first_after][0] : offsets[hi - 1][1]]
            )
            expected[i] = ids[lo : last_kept + 1] + ids[first_after:hi]
            spliced[i] = ids[: last_kept + 1] + ids[first_after:]
        if not windows:
            return {}
        rows = list(windows)
        again = token_ids(self.tokenizer, [windows[i] for i in rows], add_special_tokens=False)
        return {
            i: spliced[i]
            for i, window_ids in zip(rows, again, strict=True)
            if window_ids == expected[i]
        }

    def _too_short(self, row: Row, field: str, budget: int, source: str) -> None:
        empty = token_ids(self.tokenizer, [self.task.context({**row, field: ""})])[0]
        raise DataError(
            f"task.max_length={self.max_length} is shorter than the template of task "
            f"{self.task.name}: it needs {len(empty) + self.max_length - budget} tokens before "
            f"any {field} text ({source}: line {row.get('_line', '?')})"
        )

    def encode(
        self, rows: list[Row], source: str, labelled: bool = True, keep_source: bool = False
    ) -> dict[str, list]:
        """Token ids per row; ``labelled=False`` (prediction) gives label -1 and gold NaN.
        ``keep_source``: also each row's line in its file and its fields as written (``line``,
        ``source``: JSON), so predictions can be joined back to the user's file."""
        self.task.check_fields(rows, source, labelled)
        self.check_choices()
        if keep_source:
            written = [json.dumps(self.task.as_written(r), ensure_ascii=False) for r in rows]
            lines = [int(r.get("_line", i + 1)) for i, r in enumerate(rows)]
        rows = [self.cut_characters(self.task.normalise(r, source, labelled), source) for r in rows]
        context_texts = [self.task.context(r, source) for r in rows]
        generation = self.task.type == "generation"
        columns = ("context_ids", "choice_ids", "label", "gold", "truncated")
        out: dict[str, list] = {k: [] for k in (*columns, *(["answers"] if generation else []))}
        choices = [
            [self.choice_ids(c) for c in self.task.choices_for(r, source)]
            if labelled or not generation
            else []  # nothing to train on or score: the model generates
            for r in rows
        ]
        room = self.task.max_new_tokens if self.task.type == "generation" else 0  # to generate
        budgets = [
            self.max_length - max([room, *(len(c) for c in row_choices)]) for row_choices in choices
        ]
        # offsets (for the cut) only where a row is long enough to need one, in the same pass
        likely_cut = [
            len(text) > LIKELY_CUT_CHARS_PER_TOKEN * budget
            for text, budget in zip(context_texts, budgets, strict=True)
        ]
        encodings = encode_batch(self.tokenizer, context_texts, with_offsets=likely_cut)
        contexts = [e.ids for e in encodings]
        offset_encodings = {i: encodings[i] for i, flag in enumerate(likely_cut) if flag}
        fitted_contexts = self._fit(
            rows, context_texts, contexts, budgets, source, offset_encodings
        )
        for row, context_ids, fitted, row_choices in zip(
            rows, contexts, fitted_contexts, choices, strict=True
        ):
            label = self.task.label_of(row, source) if labelled else -1
            out["context_ids"].append(fitted)
            out["choice_ids"].append(row_choices)
            out["label"].append(label)
            out["gold"].append(self.task.gold_of(row, label) if labelled else float("nan"))
            out["truncated"].append(len(fitted) < len(context_ids))
            if generation:
                out["answers"].append(self.task.answers_of(row, source) if labelled else [])
        if keep_source:
            out.update(line=lines, source=written)
        return out
