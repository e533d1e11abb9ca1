"""Where a model's weights live while it is measured: one set of options for every command that loads one.

``analyze``, ``ablate`` and ``steer`` take the same placement (:class:`Placement`): the compute dtype and
device, and one of three ways to hold less than the whole model — layer streaming (``stream_layers``, or
automatically when the whole model would not fit ``max_memory``; :mod:`moescope.models.streaming`) or
accelerate's ``device_map`` (GPUs, then CPU memory up to ``max_memory``, then ``offload_folder``). Every
option is checked when the :class:`Placement` is made, before any file is read. :meth:`Placement.load`
returns the model with a *memory section* for the results (None for the plain whole-model load, so that
default results do not change): the plan, the budget, the baseline resident memory, and after
:func:`finish_memory` the peak growth over it and the bytes the streamer read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from moescope.models.loading import check_device, check_dtype, check_placement, checkpoint_dtype, load_moe_model
from moescope.models.sizes import format_size, parse_size
from moescope.models.streaming import memory_plan, stream_moe_model

__all__ = ["Placed", "Placement", "finish_memory", "proc_field", "rss"]


def proc_field(file: str, key: str) -> int | None:
    """The field ``key`` of a Linux ``/proc`` file (``/proc/meminfo``, ``/proc/self/status``: kB values, given
    in bytes; ``/proc/self/io``: bytes), else None."""
    try:
        for line in Path(file).read_text().splitlines():
            if line.startswith(key + ":"):
                value, *unit = line.split()[1:]
                return int(value) * (1024 if unit == ["kB"] else 1)
    except OSError:
        pass
    return None


def rss(key: str = "VmRSS") -> int | None:
    """``VmRSS`` (now) or ``VmHWM`` (the peak) of this process in bytes (Linux), else None."""
    return proc_field("/proc/self/status", key)


@dataclass(frozen=True, kw_only=True)
class Placed:
    """The placement fields, keyword-only: the base of every command config that loads a model
    (``AnalyzeConfig``, ``AblateConfig``, ``SteerCommand``) and of :class:`Placement` itself. Checked when
    the config is made (subclasses call ``super().__post_init__()``)."""

    dtype: str = "float32"                 # parameters' dtype (models.loading.DTYPES): float32 keeps statistics exact
    device: str = "cpu"                    # where the model runs (models.loading.DEVICES)
    stream_layers: bool = False            # run one decoder layer at a time from disk (models.streaming)
    max_memory: str | int | None = None    # budget ("4GB"): stream when the whole model would not fit it
    device_map: str | None = None          # spread the model with accelerate (models.loading.DEVICE_MAPS)
    offload_folder: Path | None = None     # with device_map: where weights that fit nowhere else are kept

    def __post_init__(self) -> None:
        self.placement  # noqa: B018 - every placement option is checked here, before any work

    @property
    def placement(self) -> Placement:
        """These fields as a :class:`Placement` (checked, and able to load the model)."""
        return Placement(**{f.name: getattr(self, f.name) for f in fields(Placed)})


@dataclass(frozen=True, kw_only=True)
class Placement(Placed):
    """Dtype, device and how much of the model is resident (:class:`Placed`'s fields); checked on construction."""

    @property
    def placement(self) -> Placement:
        return self

    def __post_init__(self) -> None:
        if self.max_memory is not None:
            parse_size(self.max_memory)  # a bad size fails here, before any work
        check_dtype(self.dtype)
        check_device(self.device)
        if self.device_map is not None:
            if self.stream_layers:
                raise ValueError("stream_layers (--stream-layers) and device_map (--device-map) are two ways to "
                                 "hold part of the model; choose one")
            check_placement(torch.device(self.device), self.device_map, self.accelerate_memory(),
                            self.offload_folder)
        elif self.offload_folder is not None:
            raise ValueError("offload_folder (--offload-folder) only applies with device_map (--device-map auto)")

    def accelerate_memory(self) -> dict | None:
        """``max_memory`` for accelerate: the budget is the CPU's (GPUs get what is free)."""
        return None if self.max_memory is None else {"cpu": self.max_memory}

    def load(self, path: Path, *, tokens: int) -> tuple[nn.Module, object, list, dict | None]:
        """``(model, tokenizer, views, memory section | None)``; ``tokens`` per forward size the streaming plan."""
        if self.device_map is not None:
            memory = {"streamed": False, "device_map": self.device_map, "baseline_rss": rss(),
                      "budget": None if self.max_memory is None else parse_size(self.max_memory)}
            return (*load_moe_model(path, dtype=self.dtype, device=self.device, device_map=self.device_map,
                                    max_memory=self.accelerate_memory(), offload_folder=self.offload_folder), memory)
        if not self.stream_layers and self.max_memory is None:
            return (*load_moe_model(path, dtype=self.dtype, device=self.device), None)
        dtype = check_dtype(self.dtype) or checkpoint_dtype(path)
        plan = memory_plan(path, dtype=dtype, tokens=tokens)
        stream = plan.decide(self.max_memory, stream=True if self.stream_layers else None)
        memory = {"streamed": stream, "budget": None if self.max_memory is None else parse_size(self.max_memory),
                  "baseline_rss": rss(), "streamed_minimum": plan.streamed, "in_memory": plan.in_memory,
                  "plan": plan.describe(), "buffer_tokens": plan.buffer_tokens(self.max_memory) if stream else None}
        load = stream_moe_model if stream else load_moe_model
        return (*load(path, dtype=dtype, device=self.device), memory)



def finish_memory(model: nn.Module, memory: dict) -> dict:
    """The memory section once the work is done: the peak resident-memory growth over the baseline (and
    ``peak``, its size in words), the bytes a streamer read."""
    base, peak = memory.pop("baseline_rss", None), rss("VmHWM")
    memory["peak_rss_growth"] = None if base is None or peak is None else peak - base
    streamer = getattr(model, "moescope_streamer", None)
    memory["bytes_read"] = streamer.bytes_read if streamer is not None else None
    if memory["peak_rss_growth"] is not None:
        memory["peak"] = format_size(memory["peak_rss_growth"])
    return memory
