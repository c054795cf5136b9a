"""The documentation a user reads: the README fits on a screen, every relative link resolves
(file and heading), and every config and script a page names exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "reports" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
NAMED_FILE = re.compile(r"(?<![\w./-])((?:configs|scripts|slurm|bench|ds_configs)/[\w./-]+\.\w+)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    headings = [line for line in page.read_text().splitlines() if line.startswith("#")]
    return {slug(line.lstrip("#")) for line in headings}


def test_the_readme_fits_on_a_screen() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.name}")
    assert broken == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_config_and_script_exists(page: Path) -> None:
    named = set(NAMED_FILE.findall(page.read_text()))
    missing = sorted(name for name in named if not (REPO / name).exists())
    assert missing == []


def test_no_page_is_left_with_a_placeholder() -> None:
    left = [p.name for p in PAGES if "PLACEHOLDER" in p.read_text()]
    assert left == []


def test_benchmark_tables_are_rendered_from_their_json_lines() -> None:
    """Each marked table of docs/benchmarks.md and the README is what bench/tables.py renders
    from the JSON the bench printed (reports/bench/*.json), not a hand copy."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tables", REPO / "bench" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    blocks = {}
    for path in tables.PAGES:
        page = path.read_text()
        blocks[path.name] = [name for _, name, _ in tables.BLOCK.findall(page)]
        assert tables.rendered_page(page) == page, path
    assert blocks == {
        "benchmarks.md": ["cli_startup", "estimate_accuracy", "lm_eval_agreement"],
        "study.md": ["study_costs"],
        "tasks.md": ["tokenize_scale"],
        "README.md": ["main_job", "tokenize_scale"],
    }
