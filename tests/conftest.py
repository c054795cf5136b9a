"""Shared fixtures: tiny random Llama / Gemma-3 decoders, the real data dir, the real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from pipeline.engine.hardware import configure_threads
from tests.helpers import TINY_DIMS, tiny_gemma, tiny_llama

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
configure_threads()  # the cores this process owns; OMP_NUM_THREADS wins


TINY_MODELS = {"llama": tiny_llama, "gemma": tiny_gemma}
SLURM_MODULES = ("test_slurm", "test_slurm_multinode")  # one cluster at a time on this machine


def pytest_collection_modifyitems(items) -> None:
    """The Slurm modules go first: under xdist they are the longest unit of work."""
    items.sort(key=lambda item: module_of(item.nodeid) not in SLURM_MODULES)


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (scripts/test.sh runs two workers) a test module runs on one worker,
    so its module-scoped fixtures (a finished run, a study, a Slurm cluster) are made once; the
    two Slurm modules share a worker, since two clusters cannot run side by side."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = module_of(nodeid)
            return "slurm" if module in SLURM_MODULES else module

    return ByModule(config, log)


def module_of(nodeid: str) -> str:
    return Path(nodeid.split("::", 1)[0]).stem


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny_base(request) -> torch.nn.Module:
    return TINY_MODELS[request.param]()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("PIPELINE_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(f"real data directory {path} missing: set PIPELINE_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from pipeline.engine.models import GEMMA_PACKAGE_SOURCE, load_tokenizer

    return load_tokenizer(GEMMA_PACKAGE_SOURCE)


@pytest.fixture(scope="session")
def gemma_fp32():
    from pipeline.engine.models import GEMMA_PACKAGE_SOURCE, load_model

    return load_model(GEMMA_PACKAGE_SOURCE, dtype="float32", attention="sdpa")


def save_tiny_gemma_with_real_tokenizer(path: Path) -> Path:
    """A tiny random Gemma-3 with the real Gemma tokenizer's vocabulary, as a local model dir."""
    from pipeline.engine.models import GEMMA_PACKAGE_SOURCE, load_tokenizer

    tokenizer = load_tokenizer(GEMMA_PACKAGE_SOURCE)
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        **TINY_DIMS,
        head_dim=16,
        max_position_embeddings=1024,
        sliding_window=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    Gemma3ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_gemma_with_real_tokenizer(tmp_path_factory.mktemp("tiny-gemma"))
