"""Block swap: run a DiT whose blocks do not all fit on the GPU by streaming them from CPU memory.

K blocks at most are on the device at any moment. K - 2 stay there; the others live in (pinned) CPU memory and are
copied in one at a time, the copy of block i+1 running on a side CUDA stream while block i computes, and dropped
again after their forward. So the window is 2 blocks (K = 1: no overlap, copy then compute). The embeddings and the
head always stay on the device. For inference only (the streamed copies carry no gradients back).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import AliceError

# Streamed blocks in flight at once: the one computing and the one being copied in.
STREAM_WINDOW = 2


def _tensors(block: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    """(owner module, attribute, is_parameter) for every parameter and buffer of a block."""
    found = []
    for module in block.modules():
        found += [(module, name, True) for name, p in module._parameters.items() if p is not None]
        found += [(module, name, False) for name, b in module._buffers.items() if b is not None]
    return found


class BlockSwap:
    """Installed on `model` (anything with `.blocks`): `BlockSwap(model, blocks_on_device=K, device="cuda")`.

    `resident` is the set of block indices that hold a device copy now, `peak_resident` its largest size so far.
    `remove()` puts every block back in CPU memory and takes the hooks off."""

    def __init__(self, model: nn.Module, blocks_on_device: int, device: str | torch.device) -> None:
        n = len(model.blocks)
        if not 1 <= blocks_on_device <= n:
            raise AliceError(f"blocks on the device must be between 1 and the model's {n} blocks, got {blocks_on_device}")
        if any(type(m).__name__ == "Nf4Linear" for m in model.modules()):
            raise AliceError("block swap does not move NF4 layers; load the model in fp8 or bf16 to swap blocks")
        self.model, self.device = model, torch.device(device)
        self.window = min(STREAM_WINDOW, blocks_on_device) if blocks_on_device < n else 0
        self.fixed = set(range(n - (blocks_on_device - self.window), n)) if self.window else set(range(n))
        self.streamed = [i for i in range(n) if i not in self.fixed]
        cuda = self.device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self._ready: dict[int, torch.cuda.Event | None] = {}
        self.resident: set[int] = set()
        self.peak_resident = 0

        for i, block in enumerate(model.blocks):
            if i in self.fixed:
                block.to(self.device)
                self._mark_resident(i)
        others = [m for name, m in model.named_children() if name != "blocks"]
        for m in others:
            m.to(self.device)
        for name, p in model.named_parameters(recurse=False):
            p.data = p.data.to(self.device)
        # CPU masters of the streamed blocks (pinned, so copies can run asynchronously); params point at them while
        # the block is not resident.
        self.masters: dict[int, list[torch.Tensor]] = {}
        for i in self.streamed:
            block = model.blocks[i].to("cpu")
            self.masters[i] = []
            for owner, attr, _ in _tensors(block):
                t = getattr(owner, attr).data
                self.masters[i].append(t.pin_memory() if cuda else t)
            self._point_at(i, self.masters[i])
        self._hooks = []
        for order, i in enumerate(self.streamed):
            following = self.streamed[order + 1] if order + 1 < len(self.streamed) else None
            block = model.blocks[i]
            self._hooks.append(block.register_forward_pre_hook(lambda m, a, i=i, nxt=following: self._before(i, nxt)))
            self._hooks.append(block.register_forward_hook(lambda m, a, out, i=i: self._after(i)))
        model.block_swap = self

    def _point_at(self, i: int, tensors: list[torch.Tensor]) -> None:
        for (owner, attr, is_param), t in zip(_tensors(self.model.blocks[i]), tensors):
            if is_param:
                owner._parameters[attr].data = t
            else:
                owner._buffers[attr] = t

    def _mark_resident(self, i: int) -> None:
        self.resident.add(i)
        self.peak_resident = max(self.peak_resident, len(self.resident))

    def _copy_in(self, i: int) -> None:
        """Start copying block i to the device (on the side stream when there is one)."""
        if i in self.resident:
            return
        # Copies of the masters' kind: plain tensors for a model loaded outside inference mode, even when it runs
        # inside ComfyUI's (a later training step could still use it); inference tensors for one loaded inside it
        # (ComfyUI's loader nodes), whose parameters cannot point at plain tensors ("Inference tensors do not track
        # version counter" at the first forward).
        with torch.inference_mode(self.masters[i][0].is_inference()), torch.no_grad():
            if self.copy_stream is not None:
                self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.copy_stream):
                    copies = [t.to(self.device, non_blocking=True) for t in self.masters[i]]
                    event = torch.cuda.Event()
                    event.record(self.copy_stream)
            else:
                copies, event = [t.to(self.device, copy=True) for t in self.masters[i]], None
        self._point_at(i, copies)
        self._ready[i] = event
        self._mark_resident(i)

    def _before(self, i: int, following: int | None) -> None:
        self._copy_in(i)
        event = self._ready.pop(i, None)
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for owner, attr, _ in _tensors(self.model.blocks[i]):
                # The copy was allocated on the side stream: keep its memory until the compute stream is done with it.
                getattr(owner, attr).data.record_stream(compute)
        if following is not None and len(self.resident) < len(self.fixed) + self.window:
            self._copy_in(following)

    def _after(self, i: int) -> None:
        self._point_at(i, self.masters[i])
        self.resident.discard(i)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        for i in self.streamed:
            self._point_at(i, self.masters[i])
        del self.model.block_swap
        self.model.to("cpu")

