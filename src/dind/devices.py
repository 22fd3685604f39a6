"""Where a command runs and at what precision its denoiser calls run.

Design choices:
- One device choice for every command that loads a model: CUDA when there is one, else the CPU.
- Sampling precision (``--dtype``), for the model's forward passes only: the sampler's
  probabilities, nucleus draws and confidences stay float64 whatever it is.
  ``auto`` is bfloat16 autocast on CUDA and float32 on the CPU (exactly as before: nothing
  on the CPU changes); ``bf16`` is bfloat16 autocast, with TF32 for the float32 matmuls left
  on CUDA; ``tf32`` keeps float32 activations with TF32 matmuls (CUDA); ``fp32`` is IEEE
  float32 (TF32 off). TF32 is only ever switched on for CUDA matmuls, and only inside the
  context: the previous setting comes back on exit.
- ``bf16`` on the CPU is opt-in: oneDNN's bfloat16 matmuls are several times faster than
  float32 on a CPU with AVX512-BF16 or AMX (docs/results.md has the figures; ``dind bench
  sample --dtype bf16`` measures a machine), and can be slower where it is emulated. Its
  samples are not float32's.
- ``to_device``: a host tensor goes to CUDA through pinned memory, asynchronously, so the
  training loop's copies never make the host wait for the device.
- CPU and CUDA random generators give different streams for the same seed, so a sample drawn
  on a GPU does not reproduce one drawn on the CPU (nor one drawn at another precision).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from dind.config import DTYPES
from dind.errors import DindError


def default_device() -> str:
    """The device a command loads its model on: "cuda" when one is available, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: str | torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA): before reading a clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def resolve_dtype(dtype: str, device: str | torch.device) -> str:
    """The precision ``dtype`` means on ``device``; a one-line error where it cannot run."""
    if dtype not in DTYPES:
        raise DindError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    cuda = torch.device(device).type == "cuda"
    if dtype == "auto":
        return "bf16" if cuda else "fp32"
    if dtype == "tf32" and not cuda:
        raise DindError(f"--dtype {dtype} needs a CUDA device; the CPU takes fp32 or bf16")
    return dtype


@contextmanager
def cuda_tf32(enabled: bool) -> Iterator[None]:
    """CUDA float32 matmuls in TF32 (or IEEE float32) inside the block, restored on exit.
    Through the CUDA-only flag: ``torch.set_float32_matmul_precision`` would also let the
    CPU's oneDNN matmuls round. PyTorch refuses to read one of its two TF32 interfaces once
    the other was set, so this keeps to whichever the process uses."""
    matmul = torch.backends.cuda.matmul
    try:
        name, old, new = "allow_tf32", matmul.allow_tf32, enabled
    except RuntimeError:  # the process set the newer interface (torch >= 2.9): keep to it
        name, old, new = "fp32_precision", matmul.fp32_precision, "tf32" if enabled else "ieee"
    setattr(matmul, name, new)
    try:
        yield
    finally:
        setattr(matmul, name, old)


@contextmanager
def sampling_precision(device: str | torch.device, dtype: str = "auto") -> Iterator[str]:
    """Run the model's forward passes inside the block at ``dtype`` (see the module's notes);
    yields the resolved precision. On the CPU, "auto" and "fp32" change nothing."""
    resolved = resolve_dtype(dtype, device)
    if torch.device(device).type != "cuda":
        if resolved == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield resolved
        else:
            yield resolved
        return
    with cuda_tf32(resolved != "fp32"):
        if resolved == "bf16":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield resolved
        else:
            yield resolved


def autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """The dtype autocast gives matmuls on ``device`` right now, or None when it is off."""
    kind = torch.device(device).type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None


def to_device(x: Tensor, device: str | torch.device) -> Tensor:
    """``x`` on ``device``; a CPU tensor goes to CUDA through pinned memory without waiting for
    the device (an ordinary copy makes the host wait for all queued work first)."""
    device = torch.device(device)
    if device.type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
