"""Teacher CPU offload for training: a frozen network's weights live in (pinned) host memory and visit the
accelerator only for its forwards (`TrainConfig.teacher_offload`).

Why not accelerate's `cpu_offload_with_hook` or diffusers' `enable_model_cpu_offload`: those are inference hooks
that copy the weights back to the host (device-to-host) each time they offload and leave the model resident until
the next model of a chain runs. A frozen teacher never changes, so its host copy stays valid: offloading is just
pointing the parameters back at that copy (no copy at all), and only the host-to-device copy before each forward
costs time. When a forward runs with gradient enabled (SiD's generator loss backpropagates through the teacher),
autograd has saved the on-device weights for the backward pass, so the weights stay on the device until the
trainer calls `offload()` after that backward.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class FrozenOffload:
    """Offloads a frozen `module` to `offload_device`, moving it to `execution_device` for each forward.

    Args:
        module: the network (every parameter must have requires_grad False).
        execution_device: where its forwards run (the accelerator).
        offload_device: where its weights live between forwards (the host).
    """

    def __init__(self, module: nn.Module, execution_device: torch.device | str, offload_device: str = "cpu"):
        trainable = [name for name, p in module.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"offload needs a frozen network; {len(trainable)} parameters require grad (first: {trainable[0]})"
            )
        self.module = module
        self.execution_device = torch.device(execution_device)
        pin = self.execution_device.type == "cuda" and torch.cuda.is_available()
        self.tensors = [*module.parameters(), *module.buffers()]
        self.host = []
        for tensor in self.tensors:
            copy = tensor.detach().to(offload_device)
            self.host.append(copy.pin_memory() if pin else copy)
        self.resident = True
        self.offload()
        self.handles = [
            module.register_forward_pre_hook(self._before_forward),
            module.register_forward_hook(self._after_forward),
        ]

    def load(self) -> None:
        """Copies the weights to the execution device (no-op when they are there)."""
        if self.resident:
            return
        for tensor, host in zip(self.tensors, self.host):
            tensor.data = host.to(self.execution_device, non_blocking=True, copy=True)
        self.resident = True

    def offload(self) -> None:
        """Points the weights back at their host copy, freeing the device copy (no copy: the weights are frozen)."""
        if not self.resident:
            return
        for tensor, host in zip(self.tensors, self.host):
            tensor.data = host
        self.resident = False

    def remove(self) -> None:
        """Removes the hooks and leaves the weights on the execution device."""
        for handle in self.handles:
            handle.remove()
        self.load()

    def _before_forward(self, module: nn.Module, args) -> None:
        self.load()

    def _after_forward(self, module: nn.Module, args, output) -> None:
        if torch.is_grad_enabled() and _requires_grad(output):
            return  # the backward pass needs the on-device weights autograd saved; the trainer offloads after it
        self.offload()


def _requires_grad(output) -> bool:
    if isinstance(output, torch.Tensor):
        return output.requires_grad
    if isinstance(output, (tuple, list)):
        return any(_requires_grad(o) for o in output)
    if isinstance(output, Mapping):
        return any(_requires_grad(o) for o in output.values())
    return False


def offload_teacher(
    teacher: nn.Module, trainable: Mapping[str, nn.Module], execution_device: torch.device | str
) -> FrozenOffload:
    """`FrozenOffload` of the frozen teacher network, refusing a teacher that shares weights with a trained network.

    Methods that train a LoRA on the teacher's own backbone (LCM-LoRA's student, the LoRA fake score of DMD2/SiD)
    run the teacher as that network with the adapters switched off: its weights are the trained network's base
    weights, needed on the device for every forward and backward of the trained network, so there is nothing to
    offload (and the LoRA setting is already the memory-light one)."""
    teacher_ids = {id(p) for p in teacher.parameters()}
    shared = [name for name, module in trainable.items() if any(id(p) in teacher_ids for p in module.parameters())]
    if shared:
        raise ValueError(
            f"teacher_offload: the trained network(s) {shared} share the teacher's weights (a LoRA on the "
            "teacher's own backbone: LCM-LoRA, or the LoRA fake score of DMD2/SiD), so the teacher cannot leave the "
            "device; use a separate copy (--fake-score full, a full LCM student) or drop --teacher-offload"
        )
    return FrozenOffload(teacher, execution_device)
