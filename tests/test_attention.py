"""Tests for sdtoolkit.core.attention: backend discovery, resolution errors, equal outputs, and JVP-safe mode."""

from __future__ import annotations

import pytest
import torch

from sdtoolkit.core.attention import (
    ATTENTION_BACKENDS,
    available_backends,
    configure_attention,
    resolve_backend,
    uses_dispatch,
)
from sdtoolkit.testing import tiny_sd3_transformer, tiny_unet

CPU = torch.device("cpu")
CPU_BACKENDS = available_backends(CPU, torch.float32)


def tiny_flux():
    """A tiny Flux transformer: its `FluxAttnProcessor` routes through diffusers' `dispatch_attention_fn`."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
    )


def unet_call(dtype=torch.float32):
    model = tiny_unet().to(dtype).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator, dtype=dtype)
    c = torch.randn(2, 6, 32, generator=generator, dtype=dtype)
    t = torch.tensor([10, 500])
    return model, x, lambda x_: model(x_, t, encoder_hidden_states=c).sample


def sd3_call(dtype=torch.float32):
    model = tiny_sd3_transformer().to(dtype).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=generator, dtype=dtype)
    c = torch.randn(2, 6, 32, generator=generator, dtype=dtype)
    pooled = torch.randn(2, 32, generator=generator, dtype=dtype)
    t = torch.tensor([10.0, 500.0], dtype=dtype)
    return (
        model,
        x,
        lambda x_: model(hidden_states=x_, encoder_hidden_states=c, pooled_projections=pooled, timestep=t).sample,
    )


def flux_call(dtype=torch.float32):
    model = tiny_flux().to(dtype).eval()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 4, generator=generator, dtype=dtype)
    c = torch.randn(2, 6, 32, generator=generator, dtype=dtype)
    pooled = torch.randn(2, 32, generator=generator, dtype=dtype)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    img_ids = img_ids.reshape(-1, 3).to(dtype)
    txt_ids = torch.zeros(6, 3, dtype=dtype)
    t = torch.tensor([0.1, 0.7], dtype=dtype)

    def forward(x_):
        return model(
            hidden_states=x_,
            encoder_hidden_states=c,
            pooled_projections=pooled,
            timestep=t,
            img_ids=img_ids,
            txt_ids=txt_ids,
        ).sample

    return model, x, forward


CALLS = {"unet": unet_call, "sd3": sd3_call, "flux": flux_call}


def test_cpu_backends():
    assert {"sdpa", "math", "jvp"} <= set(CPU_BACKENDS)
    assert not {"cudnn", "xformers", "auto"} & set(CPU_BACKENDS)
    assert set(CPU_BACKENDS) <= set(ATTENTION_BACKENDS)
    assert resolve_backend("auto", "cpu", torch.float32) == "sdpa"
    assert resolve_backend("MATH", "cpu", torch.float32) == "math"


def test_processor_kinds():
    assert not uses_dispatch(tiny_unet())
    assert not uses_dispatch(tiny_sd3_transformer())
    assert uses_dispatch(tiny_flux())


@pytest.mark.parametrize("name", ["xformers", "cudnn"])
def test_unavailable_backend_lists_available(name):
    with pytest.raises(ValueError) as info:
        resolve_backend(name, "cpu", torch.float32)
    message = str(info.value)
    assert f"attention='{name}' is not available on cpu" in message
    assert "available: " + ", ".join(CPU_BACKENDS) in message


def test_unknown_backend_lists_choices():
    with pytest.raises(ValueError) as info:
        configure_attention(tiny_unet(), "flashy", "cpu", torch.float32)
    message = str(info.value)
    assert "'flashy'" in message and "unknown" in message
    for name in ATTENTION_BACKENDS:
        assert name in message


@pytest.mark.parametrize("kind", sorted(CALLS))
def test_backends_match_math(kind):
    model, x, forward = CALLS[kind]()
    with torch.no_grad():
        with configure_attention(model, "math", CPU, torch.float32)():
            reference = forward(x)
        for name in ["auto", *CPU_BACKENDS]:
            with configure_attention(model, name, CPU, torch.float32)():
                out = forward(x)
            torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5, msg=f"{kind} attention={name}")


def test_dispatch_backend_set_on_processors_without_global_leak():
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    model = tiny_flux()
    before = _AttentionBackendRegistry._active_backend
    configure_attention(model, "jvp", CPU, torch.float32)
    backends = {m.processor._attention_backend for m in model.modules() if hasattr(m, "processor")}
    assert backends == {AttentionBackendName._NATIVE_MATH}
    assert _AttentionBackendRegistry._active_backend == before
    configure_attention(model, "sdpa", CPU, torch.float32)
    backends = {m.processor._attention_backend for m in model.modules() if hasattr(m, "processor")}
    assert backends == {AttentionBackendName.NATIVE}


def _jvp(forward, x, v):
    return torch.func.jvp(forward, (x,), (v,))[1]


# (kind, finite-difference step, rtol, atol). Flux's rotary embedding runs in float32 even for a float64 model
# (diffusers' `apply_rotary_emb` upcasts with `.float()`), so its finite differences carry float32 noise.
JVP_CASES = [("unet", 1e-4, 1e-4, 1e-7), ("flux", 1e-3, 1e-3, 1e-5)]


@pytest.mark.parametrize("kind, eps, rtol, atol", JVP_CASES)
def test_jvp_mode_matches_finite_difference(kind, eps, rtol, atol):
    model, x, forward = CALLS[kind](torch.float64)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    setting = configure_attention(model, "jvp", CPU, torch.float64)
    with torch.no_grad(), setting():
        tangent = _jvp(forward, x, v)
        finite_difference = (forward(x + eps * v) - forward(x - eps * v)) / (2 * eps)
    assert tangent.abs().max() > 1e-2  # not trivially zero
    torch.testing.assert_close(tangent, finite_difference, rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", ["unet", "flux"])
@pytest.mark.parametrize("name", ["sdpa", "flash"])
def test_fused_cpu_kernel_has_no_forward_ad(kind, name):
    """Without `jvp` mode CPU SDPA runs its flash kernel, which has no forward AD: the mode above is what fixes it."""
    if name not in CPU_BACKENDS:
        pytest.skip(f"{name} not available on this CPU build")
    model, x, forward = CALLS[kind](torch.float64)
    setting = configure_attention(model, name, CPU, torch.float64)
    with torch.no_grad(), setting(), pytest.raises(RuntimeError, match="forward AD"):
        _jvp(forward, x, torch.ones_like(x))


def _to_cuda(kind, dtype):
    """A tiny model and its inputs on CUDA in `dtype` (built in float32 on CPU, then moved)."""
    model, x, forward = CALLS[kind](torch.float32)
    model.to("cuda", dtype)
    for cell in forward.__closure__ or ():
        value = cell.cell_contents
        if isinstance(value, torch.Tensor):
            cell.cell_contents = value.to("cuda", dtype if value.is_floating_point() else value.dtype)
    return model, x.to("cuda", dtype), forward


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("kind", ["sd3", "flux"])  # the tiny UNet's head_dim 4 is below the fused kernels' minimum
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_backends_match_math(kind, dtype):
    model, x, forward = _to_cuda(kind, dtype)
    names = ["auto", *available_backends("cuda", dtype)]
    assert "flash" in names or dtype == torch.float32
    with torch.no_grad():
        with configure_attention(model, "math", "cuda", dtype)():
            reference = forward(x).float()
        for name in names:
            with configure_attention(model, name, "cuda", dtype)():
                out = forward(x).float()
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
            torch.testing.assert_close(out, reference, rtol=tol, atol=tol, msg=f"{kind} {dtype} attention={name}")


@needs_cuda
def test_cuda_auto_falls_back_for_small_heads():
    """`auto` keeps fallbacks: the tiny UNet (head_dim 4) runs although cuDNN / memory-efficient reject it."""
    model, x, forward = _to_cuda("unet", torch.bfloat16)
    with torch.no_grad(), configure_attention(model, "auto", "cuda", torch.bfloat16)():
        assert torch.isfinite(forward(x)).all()


@needs_cuda
@pytest.mark.parametrize("kind", ["unet", "flux"])
def test_cuda_jvp_mode(kind):
    model, x, forward = _to_cuda(kind, torch.float32)
    v = torch.randn_like(x)
    no_tf32 = torch.backends.cudnn.flags(enabled=True, allow_tf32=False)  # TF32 convolutions would swamp the check
    with torch.no_grad(), no_tf32, configure_attention(model, "jvp", "cuda", torch.float32)():
        tangent = torch.func.jvp(forward, (x,), (v,))[1]
        eps = 1e-2
        finite_difference = (forward(x + eps * v) - forward(x - eps * v)) / (2 * eps)
    assert (tangent - finite_difference).abs().max() <= 5e-3 * finite_difference.abs().max()
    with torch.no_grad(), configure_attention(model, "auto", "cuda", torch.float32)():
        with pytest.raises(RuntimeError, match="forward AD"):
            torch.func.jvp(forward, (x,), (v,))


def test_kernel_probe_leaves_the_global_rng_alone():
    """The cached kernel probe must not draw from the global RNG: otherwise a run's first random draws depend on
    whether an earlier run in the same process already filled the cache (exact resume in one process)."""
    from sdtoolkit.core import attention

    attention._sdp_backend_runs.cache_clear()
    state = torch.get_rng_state()
    attention.available_backends("cpu", torch.float32)
    assert torch.equal(torch.get_rng_state(), state)
