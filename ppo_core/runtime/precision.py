"""Mixed precision (``train.precision``): the forward passes under autocast, the weights, gradients and optimizer
state in fp32 (the master copy the optimizer updates), and for fp16 a loss scale (``torch.amp.GradScaler``) so that
small gradients do not flush to zero in half precision.

Autocast is for CUDA. On the CPU its speed depends on the processor: bf16 matmuls are fast only with bf16
instructions (AVX512-BF16, AMX) and fp16 ones are emulated (benchmarks/cpu_precision.py), and the results are no
longer fp32's; so bf16/fp16 on the CPU is refused, with the speed measured on the machine at hand, unless
``train.precision_force``.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Optional

import torch

from ..errors import ConfigError

HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_speed_ratio(dtype: torch.dtype, size: int = 384, repeats: int = 5) -> float:
    """How fast a ``size`` x ``size`` matmul runs in ``dtype`` relative to fp32 on this CPU, now (best of
    ``repeats`` each; above 1: faster than fp32)."""
    def best_seconds(kind: torch.dtype) -> float:
        a, b = torch.randn(size, size).to(kind), torch.randn(size, size).to(kind)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - started)
        return min(times)

    return best_seconds(torch.float32) / best_seconds(dtype)


def check_precision(precision: str, force: bool, device: torch.device, source: str = "config") -> None:
    """Refuse half precision on the CPU (unless forced), naming the speed measured here."""
    if precision == "fp32" or device.type != "cpu" or force:
        return
    ratio = cpu_speed_ratio(HALF_DTYPES[precision])
    raise ConfigError(f"{source}: train.precision: {precision} autocast is for CUDA (CPU runs stay fp32); a "
                      f"{precision} matmul ran at {ratio:.2f}x the speed of fp32 on this CPU just now; set "
                      f"train.precision_force: true to run it on the CPU anyway")


class Precision:
    """Autocast for the forward passes and, for fp16, loss scaling; for fp32 every call is a plain pass-through
    (nothing changes in a default run)."""

    def __init__(self, precision: str = "fp32", device: Optional[torch.device] = None):
        self.name = precision
        self.device_type = torch.device(device or "cpu").type
        self.dtype = HALF_DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (before they are clipped or checked)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def overflowed(self, loss: float, grad_norm: float) -> bool:
        """fp16: the scaled gradients of a finite loss overflowed. That is the scaler's normal search for a scale,
        not a diverging run: the step is skipped (:meth:`skip_step` lowers the scale) and not counted as
        non-finite."""
        return self.scaler is not None and math.isfinite(loss) and not math.isfinite(grad_norm)

    def skip_step(self) -> None:
        """A step that is not taken: fp16 lowers the loss scale (``unscale_`` recorded the overflow)."""
        if self.scaler is not None:
            self.scaler.update()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
