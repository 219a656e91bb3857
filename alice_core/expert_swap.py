"""Running a DiT or a Wan2.2 expert pair as the samplers' velocity functions, with the image conditioning bound.

With two 14B experts only the one in use sits on the compute device; the other waits in CPU memory. The samplers
visit the experts in time order (all high-noise steps, then all low-noise ones), so a video moves each expert at
most once: the high-noise one on at the start (if the previous video left the low one there) and the swap at
the boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .conditioning import FirstFrame
from .models.dit import WanDiT
from .sampling import Experts, VelocityFn

Move = Callable[[WanDiT, torch.device], object]


def _to(module: WanDiT, device: torch.device) -> None:
    module.to(device)


class ExpertSwap:
    """Keeps one expert of a pair on `device` and the other on `offload`; `use(name)` swaps when needed."""

    def __init__(
        self, pair: Experts[WanDiT], device: torch.device | str, offload: torch.device | str = "cpu", move: Move = _to
    ) -> None:
        self.pair, self.device, self.offload, self.move = pair, torch.device(device), torch.device(offload), move
        self.resident: str | None = None
        self.swaps = 0  # device changes, for tests and benchmarks

    def use(self, name: str) -> WanDiT:
        if name != self.resident:
            if self.device != self.offload:
                if self.resident is not None:
                    self.move(getattr(self.pair, self.resident), self.offload)
                self.move(getattr(self.pair, name), self.device)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # hand the old expert's blocks back before the new one allocates
            self.resident = name
            self.swaps += 1
        return getattr(self.pair, name)


def dit_velocity(
    get_dit: Callable[[], WanDiT],
    context: torch.Tensor,
    y: torch.Tensor | None,
    clip: torch.Tensor | None,
    first_frame: FirstFrame | None = None,
) -> VelocityFn:
    """v(x, t) of the DiT `get_dit()` returns (looked up per call, so a swap takes effect), text and image bound."""

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        dit = get_dit()
        dtype = dit.dtype
        if first_frame is not None:
            x, t = first_frame.apply(x), first_frame.timesteps(t, x, dit.config.patch_size)
        with torch.inference_mode():
            cond = {
                "y": None if y is None else y.to(x.device, dtype),
                "clip_embedding": None if clip is None else clip.to(x.device, dtype),
            }
            return dit(x.to(dtype), t, context.to(x.device, dtype), **cond).float()

    return velocity


def velocities(
    dits: WanDiT | Experts[WanDiT],
    context: torch.Tensor,
    y: torch.Tensor | None = None,
    clip: torch.Tensor | None = None,
    swap: ExpertSwap | None = None,
    first_frame: FirstFrame | None = None,
) -> VelocityFn | Experts[VelocityFn]:
    """The sampler's velocity for one DiT, or an `Experts` pair of them (swapping through `swap` if given)."""
    if not isinstance(dits, Experts):
        return dit_velocity(lambda: dits, context, y, clip, first_frame)

    def getter(name: str) -> Callable[[], WanDiT]:
        return (lambda: swap.use(name)) if swap is not None else (lambda: getattr(dits, name))

    return Experts(
        dit_velocity(getter("high"), context, y, clip, first_frame),
        dit_velocity(getter("low"), context, y, clip, first_frame),
        dits.boundary,
    )
