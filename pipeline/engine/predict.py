"""Score new rows with an exported adapter (``pipeline predict`` and the MLflow pyfunc)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import ModelSection
from ..methods import ADAPTER_WEIGHTS_NAME, SoftPromptModel
from ..tasks import Encoder, Task, get_task, parse_task
from ..util.files import load_json
from .evaluation import generate_answers, predict_from_scores
from .hardware import resolve_precision
from .model_checks import check_safetensors
from .models import cache_dir, load_model, load_tokenizer
from .scoring import score_choices

TASK_FILE = "task.json"
PREDICT_BATCH_SIZE = 16


def find_export_dir(path: str | Path) -> Path:
    """Accept a run directory, its export directory, or anything holding task.json + adapter/."""
    path = Path(path)
    for candidate in (path / "export", path):
        if (candidate / TASK_FILE).is_file() and (candidate / "adapter").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{path}: not a run or export directory (expected export/{TASK_FILE} and export/adapter/)"
    )


def exported_task(export_dir: Path) -> tuple[dict[str, Any], Task]:
    """An export's task.json and its task (no model loaded)."""
    description: dict[str, Any] = load_json(export_dir / TASK_FILE)
    task = (  # exports before task declarations named a built-in task only
        parse_task(description["task_spec"], f"{export_dir / TASK_FILE}: task_spec")
        if "task_spec" in description
        else get_task(description["task"])
    )
    return description, task


class Predictor:
    """Loads base model + adapter once; ``predict(rows)`` gives, per row, the predicted choice,
    the task's own label value for it (from its label map), its index and every choice's
    score — or the generated text."""

    def __init__(self, export_dir: str | Path) -> None:
        self.export_dir = find_export_dir(export_dir)
        self.description, self.task = exported_task(self.export_dir)
        check_safetensors(self.export_dir / "adapter" / ADAPTER_WEIGHTS_NAME)
        SoftPromptModel.read_adapter_config(self.export_dir / "adapter")  # before the base loads
        model_cfg = ModelSection.model_validate(self.description["model"])
        source = model_cfg.source
        self.tokenizer = load_tokenizer(source)
        dtype = resolve_precision(
            model_cfg.dtype, cache_dir()
        ).dtype  # this machine's, not the trainer's
        base = load_model(source, dtype, model_cfg.attention, model_cfg.load_in_8bit)
        self.model = SoftPromptModel.from_pretrained(
            base, self.export_dir / "adapter", model_cfg.shared_prefix_in_evaluation
        ).eval()
        self.encoder = Encoder(self.task, self.tokenizer, self.description["max_length"])

    def predict(
        self, rows: list[dict[str, Any]], batch_size: int = PREDICT_BATCH_SIZE, source="input"
    ) -> list[dict[str, Any]]:
        """``rows`` keyed by the task's fields or by its files' own column names; errors name
        ``source`` and the row's line (``_line``, else its position from 1)."""
        rows = [self.task.renamed({"_line": i + 1, **r}, source) for i, r in enumerate(rows)]
        encoded = self.encoder.encode(rows, source, labelled=False)
        if self.task.type == "generation":
            answers = generate_answers(
                self.model, self.task, encoded["context_ids"], self.tokenizer, batch_size
            )
            return [{"generated": text} for text in answers]
        scores = score_choices(
            self.model,
            encoded["context_ids"],
            encoded["choice_ids"],
            self.tokenizer.pad_token_id,
            batch_size,
        )
        out, values = [], self.task.label_values()
        for row, row_scores in zip(rows, scores, strict=True):
            normal = self.task.normalise(row, source, labelled=False)
            choices = [c.strip() for c in self.task.choices_for(normal, source)]
            index, value = predict_from_scores(self.task, row_scores)
            result = {
                "label": choices[index],
                "label_value": values[index],
                "label_index": index,
                "scores": dict(zip(choices, row_scores, strict=True)),
            }
            if self.task.choice_values is not None:
                result["value"] = value
            out.append(result)
        return out
