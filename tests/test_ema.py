"""Tests for sdtoolkit.core.ema: the math against a hand loop, placement, swapping, and checkpoint round trips."""

from __future__ import annotations

import pytest
import torch

from sdtoolkit.core.ema import EMA, ema_beta_half_life, ema_target, ema_warmup_decay


def small_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def perturb(model: torch.nn.Module, step: int) -> None:
    """Stand-in for an optimizer step: deterministic new weights."""
    generator = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))


def hand_loop(model: torch.nn.Module, decays: list[float]) -> list[torch.Tensor]:
    """Reference: shadow = d * shadow + (1 - d) * param, written out."""
    shadow = [p.detach().clone() for p in model.parameters()]
    for step, d in enumerate(decays):
        perturb(model, step)
        shadow = [d * s + (1 - d) * p.detach() for s, p in zip(shadow, model.parameters())]
    return shadow


def run_ema(model: torch.nn.Module, ema: EMA, steps: int, batch_size: int | None = None) -> list[float]:
    used = []
    for step in range(steps):
        perturb(model, step)
        used.append(ema.update(model, batch_size=batch_size))
    return used


def assert_all_close(actual, expected, **kw):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **kw)


def test_fixed_decay_matches_hand_loop():
    ema = EMA(small_model(), decay=0.9)
    used = run_ema(small_model(), ema, 5)
    assert used == [0.9] * 5
    assert_all_close(ema.shadow_params, hand_loop(small_model(), [0.9] * 5))
    assert ema.step == 5


def test_warmup_matches_formula():
    ema = EMA(small_model(), decay=0.99, warmup=True)
    used = run_ema(small_model(), ema, 4)
    expected = [min(0.99, (1 + s) / (10 + s)) for s in range(4)]
    assert used == pytest.approx(expected)
    assert used[0] == pytest.approx(0.1)
    assert ema_warmup_decay(0.99, 10_000) == 0.99
    assert_all_close(ema.shadow_params, hand_loop(small_model(), expected))


def test_half_life():
    assert ema_beta_half_life(64, 64) == pytest.approx(0.5)
    # After half_life_nimg images the weight of the starting point is one half, whatever the batch size.
    assert ema_beta_half_life(8, 1000) ** (1000 / 8) == pytest.approx(0.5)
    ema = EMA(small_model(), decay=None, half_life_nimg=1000)
    used = run_ema(small_model(), ema, 3, batch_size=8)
    assert used == pytest.approx([0.5 ** (8 / 1000)] * 3)
    assert_all_close(ema.shadow_params, hand_loop(small_model(), used))
    assert ema.nimg == 24
    with pytest.raises(ValueError, match="batch_size"):
        ema.update(small_model())


def test_half_life_rampup():
    ema = EMA(small_model(), decay=None, half_life_nimg=1000, rampup_ratio=0.05)
    used = run_ema(small_model(), ema, 3, batch_size=8)
    expected = [0.5 ** (8 / min(1000, 8 * (k + 1) * 0.05)) for k in range(3)]
    assert used == pytest.approx(expected)


def test_cpu_placement_dtype_and_trainable_only():
    model = small_model()
    model[0].requires_grad_(False)
    ema = EMA(model, decay=0.5, device="cpu", dtype=torch.float64, trainable_only=True)
    assert list(ema.shadow) == ["1.weight", "1.bias", "2.weight", "2.bias"]  # frozen layer 0 left out
    assert all(t.device.type == "cpu" and t.dtype == torch.float64 for t in ema.shadow_params)
    before = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    perturb(model, 0)
    ema.update(model)
    for name, shadow in ema.shadow.items():
        param = dict(model.named_parameters())[name].detach().double()
        torch.testing.assert_close(shadow, 0.5 * before[name] + 0.5 * param)


def test_include_buffers():
    model = small_model()
    ema = EMA(model, decay=0.5, include_buffers=True)
    assert "1.running_mean" in ema.shadow and "1.num_batches_tracked" not in ema.shadow
    with torch.no_grad():
        model[1].running_mean.fill_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["1.running_mean"], torch.full((4,), 1.0))


def test_copy_store_restore():
    model = small_model()
    ema = EMA(model, decay=0.5)
    run_ema(model, ema, 2)
    live = [p.detach().clone() for p in model.parameters()]
    assert not torch.equal(live[0], ema.shadow_params[0])
    with ema.swapped_in(model):
        assert_all_close([p.detach() for p in model.parameters()], ema.shadow_params, rtol=0, atol=0)
    assert_all_close([p.detach() for p in model.parameters()], live, rtol=0, atol=0)
    ema.store(model)
    ema.copy_to(model)  # diffusers' idiom: harmless after store
    with pytest.raises(RuntimeError, match="twice"):
        ema.store(model)
    ema.restore(model)
    assert_all_close([p.detach() for p in model.parameters()], live, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="without"):
        ema.restore(model)
    fresh = small_model(seed=3)
    ema.copy_to(fresh)
    assert_all_close(list(fresh.parameters()), ema.shadow_params, rtol=0, atol=0)


def test_state_dict_round_trip(tmp_path):
    ema = EMA(small_model(), decay=0.9, warmup=True)
    run_ema(small_model(), ema, 3)
    torch.save(ema.state_dict(), tmp_path / "ema.pt")
    other = EMA(small_model(seed=5), decay=0.5)
    other.load_state_dict(torch.load(tmp_path / "ema.pt", weights_only=True))
    assert other.step == 3 and other.decay == 0.9 and other.warmup
    assert_all_close(other.shadow_params, ema.shadow_params, rtol=0, atol=0)
    bad = EMA(torch.nn.Linear(3, 4), decay=0.9)
    with pytest.raises(KeyError, match="does not match"):
        bad.load_state_dict(ema.state_dict())


def test_wrong_model_is_named():
    ema = EMA(small_model(), decay=0.9)
    with pytest.raises(KeyError, match="2.weight"):
        ema.update(torch.nn.Sequential(torch.nn.Linear(3, 4)))


def test_accelerate_checkpointing(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = small_model()
    ema = EMA(model, decay=0.8)
    accelerator.register_for_checkpointing(ema)
    run_ema(model, ema, 2)
    saved = [t.clone() for t in ema.shadow_params]
    accelerator.save_state(str(tmp_path / "ckpt"))
    run_ema(model, ema, 2)
    assert not torch.equal(ema.shadow_params[0], saved[0])
    accelerator.load_state(str(tmp_path / "ckpt"))
    assert ema.step == 2
    assert_all_close(ema.shadow_params, saved, rtol=0, atol=0)


def test_ema_target_is_frozen_copy():
    model = small_model()
    target = ema_target(model)
    assert not target.training
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    assert_all_close(list(target.parameters()), list(model.parameters()), rtol=0, atol=0)
    perturb(model, 0)
    assert not torch.equal(next(target.parameters()), next(model.parameters()))
