"""Exact match and token F1 with SQuAD's normalisation, against hand-computed values."""

from __future__ import annotations

import pytest

from pipeline.tasks.text_metrics import TEXT_METRICS, normalize_answer, token_f1_one


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The Eiffel Tower.", "eiffel tower"),
        ("  an  apple, a PEAR ", "apple pear"),
        ("Theatre", "theatre"),  # 'the' only as a word
        ("U.S.A.", "usa"),
        ("", ""),
    ],
)
def test_squad_normalisation(raw, normalized) -> None:
    assert normalize_answer(raw) == normalized


def test_token_f1_by_hand() -> None:
    # prediction "the big red ball" -> [big, red, ball]; gold "a red ball" -> [red, ball]
    # common 2: precision 2/3, recall 2/2 -> F1 = 2 * (2/3 * 1) / (2/3 + 1) = 0.8
    assert token_f1_one("the big red ball", "a red ball") == pytest.approx(0.8)
    assert token_f1_one("blue", "red ball") == 0.0
    assert token_f1_one("", "") == 1.0 and token_f1_one("", "x") == 0.0
    # repeated tokens count once per occurrence: [a,a]-> [] after articles; use words
    assert token_f1_one("red red", "red") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_max_over_golds_and_mean_over_rows() -> None:
    predictions = ["Denver Broncos", "1990", "in Paris"]
    golds = [["Broncos", "Denver Broncos"], ["1989"], ["Paris", "in Paris, France"]]
    assert TEXT_METRICS["exact_match"](predictions, golds) == pytest.approx((1 + 0 + 0) / 3)
    # row 3: vs "Paris" -> [in, paris] vs [paris]: p 1/2, r 1 -> 2/3;
    #        vs "in Paris, France" -> [in, paris] vs [in, paris, france]: p 1, r 2/3 -> 0.8
    assert TEXT_METRICS["token_f1"](predictions, golds) == pytest.approx((1 + 0 + 0.8) / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 gold lists"):
        TEXT_METRICS["exact_match"](["a", "b"], [["a"]])
