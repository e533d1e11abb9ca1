"""``moescope steer PATH --contrast A=FILE --contrast B=FILE``: the experts that tell two texts apart, steered.

Loads the checkpoint, cuts each text into windows (:func:`~moescope.analysis.ablate.windows`), runs
:func:`~moescope.analysis.steering.steer` and writes one computed sentence per steering direction.
Without contrasts: the built-in sample's code against its prose (``language``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from moescope.analysis.ablate import windows
from moescope.analysis.analyze import Source, default_sources
from moescope.analysis.steering import SteerConfig, SteeringError, steer
from moescope.models.placement import Placed, finish_memory

DEFAULT_CONTRAST = ("code", "language")


@dataclass(frozen=True)
class SteerCommand(Placed):
    """What ``moescope steer`` measures."""

    path: Path
    contrast: tuple[Source, ...] = ()      # exactly two (A, B); empty: the built-in code vs language
    steer: SteerConfig = field(default_factory=SteerConfig)
    seq_len: int = 128
    max_windows: int = 32

    def __post_init__(self) -> None:
        if self.contrast and len(self.contrast) != 2:
            raise ValueError(f"--contrast takes exactly two texts, A and B; got {len(self.contrast)}")
        if len({s.label for s in self.contrast}) != len(self.contrast):
            raise ValueError("the two contrast texts need different names")
        if self.seq_len < 2 or self.max_windows < 1:
            raise ValueError(f"seq_len must be >= 2 and max_windows >= 1; got {self.seq_len}, {self.max_windows}")
        super().__post_init__()  # dtype, device, streaming and device map


def sentence(direction: str, name: str, r: dict, n: int, level: float) -> str:
    """The computed sentence for one direction and text set (the numbers the table shows)."""
    lo, hi = r["interval"]
    verb = "Switching on" if direction == "activate" else "Switching off"
    interval = f"[{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) and math.isfinite(hi) else "(no interval)"
    return (f"{verb} the {n} experts linked to the first text changes the {name} loss by {r['delta_loss']:+.4f} "
            f"nats {interval} ({level:.0%}); as many random experts change it by {r['random_mean']:+.4f} on average "
            f"(two-sided p = {r['p_value']:.2f} over {len(r['random'])} random draws).")


def steer_results(model, views, sets: dict, cmd: SteerCommand, about: dict, *,
                  on_step: Callable[[int, int], None] | None = None) -> dict:
    """Steer ``model`` on ``sets`` (A, B -> (W, T) windows) and add the sentences and the description."""
    start = time.perf_counter()
    res = steer(model, views, sets, cmd.steer, on_step=on_step)
    level, n = cmd.steer.level, len(res["linked"])
    res["sentences"] = [sentence(d, name, r, n, level) for d, per in res["steering"].items() for name, r in per.items()]
    res["model"] = {**about, "family": views[0].family, "num_moe_layers": len(views),
                    "num_experts": views[0].num_experts, "top_k": views[0].top_k,
                    "scoring": views[0].scoring}  # which steering rule ran (softmax or sigmoid)
    res["config"] = {"top": cmd.steer.top, "random_draws": cmd.steer.random_draws, "epsilon": cmd.steer.epsilon,
                     "level": level, "draws": cmd.steer.draws, "seed": cmd.steer.seed,
                     "seq_len": int(next(iter(sets.values())).shape[1]),
                     "windows": {k: int(v.shape[0]) for k, v in sets.items()}}
    res["seconds"] = time.perf_counter() - start
    return res


def run_steer(cmd: SteerCommand, *, on_step: Callable[[int, int], None] | None = None) -> dict:
    """Load the checkpoint at ``cmd.path``, tokenise the two texts, steer (:func:`steer_results`)."""
    model, tokenizer, views, memory = cmd.placement.load(cmd.path, tokens=cmd.seq_len * cmd.steer.batch_size)
    if getattr(model.config, "is_encoder_decoder", False):
        raise SteeringError(f"{cmd.path} is an encoder–decoder model; steering measures next-token loss")
    if tokenizer is None:
        raise ValueError(f"{cmd.path} has no tokenizer files; steer needs one to turn the text into token ids")
    contrast = cmd.contrast or tuple(s for s in default_sources() if s.domain in DEFAULT_CONTRAST)
    sets = {s.label: windows(tokenizer(s.text, add_special_tokens=False)["input_ids"], cmd.seq_len, cmd.max_windows)
            for s in contrast}
    about = {"path": str(cmd.path), "model_type": model.config.model_type,
             "dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device)}
    results = steer_results(model, views, sets, cmd, about, on_step=on_step)
    if memory is not None:
        results["memory"] = finish_memory(model, memory)
    return results
