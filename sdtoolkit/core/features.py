"""Intermediate features of a network: forward hooks that keep chosen blocks' outputs and can stop the forward
right after a block (a discriminator on the UNet's down/mid features never needs its up blocks).

One utility serves every feature-reading discriminator: DMD2's classifier on the fake score's bottleneck
(`sdtoolkit.distill.adversarial.bottleneck_features`) and PCM's heads on the teacher's trunk
(`sdtoolkit.distill.adversarial.trunk_features`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn

__all__ = ["StopForward", "capture_outputs"]


class StopForward(Exception):
    """Raised by the hook of `capture_outputs(..., stop_after=block)` once `block` has run: the rest of the network
    is skipped. Caught by `capture_outputs` itself."""


_CAPTURING = 0


def capturing() -> bool:
    """Whether a `capture_outputs` is running: tensors then leave the forward through hooks, so the Denoiser keeps
    its no-grad forwards out of `torch.inference_mode` (an inference tensor cannot be saved for a later backward)."""
    return _CAPTURING > 0


def capture_outputs(
    run: Callable[[], object],
    modules: Sequence[nn.Module],
    stop_after: nn.Module | None = None,
    tuple_index: int = 0,
) -> list[Tensor]:
    """Calls `run()` (a forward of a network holding `modules`) and returns the outputs of `modules` in the order
    they ran (a tuple output gives its element `tuple_index`: 0 for UNet blocks, 1 for the (text, image) outputs
    of SD3/FLUX transformer blocks). With `stop_after`, the forward ends right after that module
    ran (its output is kept when it is in `modules`); `run`'s own return value is dropped. The hooks are removed
    whatever happens."""
    outputs: list[Tensor] = []
    keep_ids = {id(m) for m in modules}

    def hook(module: nn.Module, args, output) -> None:
        if id(module) in keep_ids:
            outputs.append(output[tuple_index] if isinstance(output, tuple) else output)
        if module is stop_after:
            raise StopForward

    hooked = list(modules) + ([stop_after] if stop_after is not None and id(stop_after) not in keep_ids else [])
    handles = [m.register_forward_hook(hook) for m in hooked]
    global _CAPTURING
    _CAPTURING += 1
    try:
        run()
    except StopForward:
        pass
    finally:
        _CAPTURING -= 1
        for handle in handles:
            handle.remove()
    return outputs
