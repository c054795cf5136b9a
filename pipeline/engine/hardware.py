"""The machine a run lands on: which dtype the frozen base computes in, how many threads a
process uses, and a one-line description for logs and benchmark output.

``model.dtype: auto`` resolves to bf16 where the hardware computes it natively — a CUDA device
that supports it, an x86 CPU with AVX512-BF16 or AMX-BF16 (PyTorch's capability report), an ARM
CPU reporting bf16 when a matmul probe confirms it is not slower than fp32 — and to fp32
elsewhere. On a CPU without native bf16 (AVX2 only: most laptops and many VMs) PyTorch emulates
bf16 and a matmul runs 30–100x slower than in fp32, so an explicit ``bfloat16`` there still runs
but is warned about once, with the measured ratio. A CUDA device without bf16 gets fp32: fp16
with loss scaling has not been shown to train this pipeline's methods.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.config import EIGHT_BIT_DEEPSPEED, ConfigError, PipelineConfig
from ..util.cpus import owned_cpus, thread_count
from ..util.files import write_json_atomic

log = logging.getLogger(__name__)

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86: bf16 dot products in hardware
ARM_BF16_FLAGS = ("bf16", "sve_bf16")  # ARM: reported, confirmed by the probe
PROBE_SHAPE = (64, 640, 1024)  # rows × d × out: one Gemma 3 270M-sized matmul, small enough
PROBE_FILE = "bf16_probe.json"


@dataclass(frozen=True)
class Precision:
    """What ``model.dtype`` means on this machine."""

    requested: str
    dtype: str
    reason: str
    warning: str | None = None  # an explicit choice that is slow here


def cpu_capabilities() -> dict[str, Any]:
    return dict(torch.cpu.get_capabilities())


def cpu_name() -> str:
    name = cpu_capabilities().get("cpu_name") or platform.processor() or platform.machine()
    return str(name).strip()


def cpu_isa() -> str:
    """The ISA level PyTorch dispatches to, plus the bf16 extensions it reports."""
    caps = cpu_capabilities()
    extensions = [
        flag.upper() for flag in (*NATIVE_BF16_CPU_FLAGS, *ARM_BF16_FLAGS) if caps.get(flag)
    ]
    return "+".join([torch.backends.cpu.get_cpu_capability(), *extensions])


def describe_machine() -> dict[str, Any]:
    """The fields every measured figure is reported with (bench JSON lines, README tables)."""
    cpus, _ = owned_cpus()
    described = {
        "cpu": cpu_name(),
        "isa": cpu_isa(),
        "cpus": cpus,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        described["gpu"] = torch.cuda.get_device_name()
    return described


BF16_SLOW_RATIO = 1.5  # bf16 matmul this many times fp32's time or more: warned about


def cpu_has_native_bf16() -> bool | None:
    """True/False when PyTorch's report settles it; None when only the probe can tell (ARM)."""
    caps = cpu_capabilities()
    if any(caps.get(flag) for flag in NATIVE_BF16_CPU_FLAGS):
        return True
    if any(caps.get(flag) for flag in ARM_BF16_FLAGS):
        return None
    return False


def _time_matmul(dtype: torch.dtype, repeats: int = 3) -> float:
    rows, d, out = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, d, generator=generator).to(dtype)
    b = torch.randn(d, out, generator=generator).to(dtype)
    a @ b  # first call: kernel selection, allocation
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return best


@functools.cache
def bf16_slowdown(cache: Path | None = None) -> float:
    """How many times slower a bf16 matmul is than fp32 on this CPU (a probe of about a second
    on a CPU without native bf16; cached per CPU, thread count and torch version)."""
    key = f"{cpu_name()}|{cpu_isa()}|{torch.get_num_threads()}|{torch.__version__}"
    known = _read_probe_cache(cache)
    if key in known:
        return known[key]
    ratio = round(_time_matmul(torch.bfloat16) / _time_matmul(torch.float32), 2)
    if cache is not None:
        write_json_atomic(cache / PROBE_FILE, {**known, key: ratio})
    return ratio


def _read_probe_cache(cache: Path | None) -> dict[str, float]:
    if cache is None:
        return {}
    try:
        return json.loads((cache / PROBE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def resolve_precision(requested: str, cache: Path | None = None) -> Precision:
    """``model.dtype`` (auto, float32, bfloat16, float16) for the device this process trains
    on: the first CUDA device when there is one, else the CPU."""
    if torch.cuda.is_available():
        return _cuda_precision(requested)
    if requested == "auto":
        native = cpu_has_native_bf16()
        if native is None:
            native = bf16_slowdown(cache) <= 1.0
            how = "the matmul probe"
        else:
            how = "PyTorch's CPU report"
        isa = cpu_isa()
        if native:
            return Precision(requested, "bfloat16", f"CPU {isa} computes bf16 natively ({how})")
        return Precision(
            requested, "float32", f"CPU {isa} has no native bf16 ({how}): fp32 is faster here"
        )
    if requested == "bfloat16" and not cpu_has_native_bf16():
        ratio = bf16_slowdown(cache)
        if ratio > BF16_SLOW_RATIO:
            warning = (
                f"model.dtype: {requested} on a CPU without native bf16 ({cpu_isa()}): a bf16 "
                f"matmul runs {ratio:g}x slower than fp32 here; use dtype: auto (fp32 on this CPU)"
            )
            return Precision(requested, requested, "set explicitly", warning)
    return Precision(requested, requested, "set explicitly")


def _cuda_precision(requested: str) -> Precision:
    name = torch.cuda.get_device_name()
    supported = torch.cuda.is_bf16_supported()
    if requested != "auto":
        warning = None
        if requested == "bfloat16" and not supported:
            warning = f"model.dtype: bfloat16 on {name}, which has no bf16: use dtype: auto"
        return Precision(requested, requested, "set explicitly", warning)
    if supported:
        return Precision(requested, "bfloat16", f"CUDA device {name} supports bf16")
    return Precision(
        requested,
        "float32",
        f"CUDA device {name} has no bf16; fp16 with loss scaling is not verified for these "
        "methods, so fp32",
    )


def configure_threads() -> int:
    """Set torch's thread count to the cores this process owns (core/cpus.py); returns it."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads, why = thread_count(local_ranks)
    torch.set_num_threads(threads)
    log.info("CPU threads: %d (%s)", threads, why)
    return threads


def with_resolved_dtype(config: PipelineConfig, cache: Path | None = None) -> PipelineConfig:
    """A copy of ``config`` whose ``model.dtype_resolved`` says what ``model.dtype`` means on
    this machine; the choice and its reason are logged once per process (a slow explicit choice
    as a warning)."""
    precision = resolve_precision(config.model.dtype, cache)
    model = config.model
    if model.load_in_8bit and config.distributed.deepspeed and precision.dtype == "float32":
        raise ConfigError(
            f"{EIGHT_BIT_DEEPSPEED} (model.dtype {model.dtype} is float32 on this machine: "
            f"{precision.reason})"
        )
    announce(precision)
    resolved = model.model_copy(update={"dtype_resolved": precision.dtype})
    return config.model_copy(update={"model": resolved})


@functools.cache
def announce(precision: Precision) -> None:
    log.info(
        "model dtype: %s (%s%s)",
        precision.dtype,
        "auto: " if precision.requested == "auto" else "",
        precision.reason,
    )
    if precision.warning:
        log.warning(precision.warning)
