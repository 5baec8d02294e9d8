"""Device and numeric precision: which device, which autocast dtype, whether a GradScaler is needed."""
from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16, after resolving "auto"

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def autocast(self):
        """Autocast context for forward passes (training and validation alike); no-op in fp32."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling; bf16 and fp32 do not. Uses the current ``torch.amp`` API."""
        return torch.amp.GradScaler("cuda") if self.precision == "fp16" else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_runtime(device_name: str, precision: str, local_rank: int = 0) -> Runtime:
    """``local_rank``: each process of a several-GPU job uses its own GPU."""
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return Runtime(device, precision)


def device_info(device: torch.device) -> dict:
    """The machine a run trains on, for provenance.json (``runlog.write_provenance``)."""
    info = {"device": str(device), "platform": platform.platform(), "cpu": platform.processor(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
    return info
