"""The pieces that exist once (issue 16, item 3-4): the multistep sampler, the feature hook, the fraction -> time
conversion, the registry pattern, PCM in its own file, and adapter switches without module walks."""

import pytest
import torch
from torch import nn

from sdtoolkit.core.consistency import ddim_jump, inference_timesteps, lcm_consistency_function
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.features import capture_outputs
from sdtoolkit.core.registry import Registry
from sdtoolkit.core.sampling import few_step_sample, lcm_sample, multistep_sample, phased_sample
from sdtoolkit.core.schedules import FlowSchedule, TrigFlowSchedule, VPSchedule, make_betas
from sdtoolkit.testing import tiny_sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def denoiser():
    return Denoiser.from_pipeline(tiny_sd_pipeline(time_cond_proj_dim=8)).freeze()


def _cond(denoiser):
    cond, _ = denoiser.encode_prompt(["a red cube", "a blue torus"])
    return cond


def _t(t, x):
    return torch.full((x.shape[0],), float(t), device=x.device)


# ------------------------------------------------------------------------------------- the loops as they were


def old_lcm_sample(denoiser, noise, cond, timesteps, generator, embed, sigma_data=0.5, scaling=10.0):
    x = noise
    for i, t in enumerate(timesteps):
        prediction = denoiser.predict(x, t, cond, guidance_embed=embed)
        denoised = lcm_consistency_function(x, prediction.x0, _t(t, x), sigma_data, scaling)
        if i + 1 == len(timesteps):
            return denoised
        fresh = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = denoiser.add_noise(denoised, fresh, _t(timesteps[i + 1], x))
    return x


def old_phased_sample(denoiser, noise, cond, timesteps, embed):
    x = noise
    for i, t in enumerate(timesteps):
        prediction = denoiser.predict(x, t, cond, guidance_embed=embed)
        s = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        x = ddim_jump(denoiser, prediction, _t(s, x))
    return x


def old_few_step_sample(denoiser, z, cond, timesteps, generator):
    x = z
    for i in range(len(timesteps)):
        x0 = denoiser.predict(x, _t(timesteps[i], x), cond).x0
        if i < len(timesteps) - 1:
            eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
            x = denoiser.add_noise(x0, eps, _t(timesteps[i + 1], x0))
    return x0


def old_simulate(denoiser, z, cond, timesteps, steps):
    x = z
    for i in range(steps):
        x0 = denoiser.predict(x, _t(timesteps[i], x), cond).x0
        eps = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype)
        x = denoiser.add_noise(x0, eps, _t(timesteps[i + 1], x0))
    return x


def test_one_sampling_loop_is_bit_identical_to_the_three_it_replaced(denoiser):
    cond = _cond(denoiser)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    embed = torch.full((2,), 7.0)
    four = inference_timesteps(4)
    seed = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(
        lcm_sample(denoiser, noise, cond, four, seed(), embed),
        old_lcm_sample(denoiser, noise, cond, four, seed(), embed),
    )
    assert torch.equal(
        phased_sample(denoiser, noise, cond, four, embed), old_phased_sample(denoiser, noise, cond, four, embed)
    )
    dm = [999, 749, 499, 249]
    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()  # distribution-matching students: no w input
    assert torch.equal(
        few_step_sample(denoiser, noise, cond, dm, seed()), old_few_step_sample(denoiser, noise, cond, dm, seed())
    )
    torch.manual_seed(3)
    ours = few_step_sample(denoiser, noise, cond, dm, until=2)
    torch.manual_seed(3)
    assert torch.equal(ours, old_simulate(denoiser, noise, cond, dm, 2))
    with pytest.raises(ValueError, match="renoise='euler'"):
        multistep_sample(denoiser, noise, cond, dm, renoise="euler")


def test_trainers_sample_through_the_core_sampler():
    import sdtoolkit.trainers.distribution_matching as dm
    import sdtoolkit.trainers.lcm as lcm

    assert lcm.lcm_sample is lcm_sample and lcm.phased_sample is phased_sample
    assert dm.few_step_sample is few_step_sample


# ------------------------------------------------------------------------------------- fraction -> time


@pytest.mark.parametrize(
    "schedule",
    [VPSchedule(make_betas(1000)), VPSchedule(make_betas(700)), FlowSchedule(), TrigFlowSchedule()],
    ids=["vp1000", "vp700", "flow", "trigflow"],
)
def test_fraction_to_time_is_the_schedules_and_both_callers_agree(schedule):
    """`sample_timesteps` (DMD2/SiD/VSD) and SDS's `fraction_to_time` go through `schedule.time_from_fraction`: a
    degenerate range [f, f] draws exactly the time SDS converts f to, including halves (round half to even) and
    both ends."""
    from sdtoolkit.distill.score_distillation import sample_timesteps
    from sdtoolkit.text_to_3d.guidance.sds import fraction_to_time

    class Holder:
        pass

    holder = Holder()
    holder.schedule = schedule
    fractions = [0.0, 0.02, 0.0205, 0.0215, 0.25, 0.5, 0.98, 0.9995, 1.0]
    for f in fractions:
        drawn = sample_timesteps(schedule, 3, f, f)
        converted = fraction_to_time(holder, torch.full((3,), f, dtype=torch.float64)).float()
        assert torch.equal(drawn, converted), (f, drawn, converted)
        assert torch.equal(converted, schedule.time_from_fraction(f).float().expand(3))
    if isinstance(schedule, VPSchedule):
        T = schedule.num_train_timesteps
        assert schedule.time_from_fraction(0.02).item() == round(0.02 * T)  # DMD2's 20 for T = 1000
        assert schedule.time_from_fraction(1.0).item() == T - 1


def test_default_time_ranges_did_not_move():
    """DMD2/SiD's [0.02, 0.98] and threestudio's defaults draw integer timesteps in [20, 980] for T = 1000, as
    before the conversion moved into the schedule."""
    from sdtoolkit.distill.score_distillation import sample_timesteps

    t = sample_timesteps(VPSchedule(make_betas(1000)), 20000, 0.02, 0.98, generator=torch.Generator().manual_seed(0))
    assert t.min().item() == 20 and t.max().item() == 980


# ------------------------------------------------------------------------------------- feature hook


def test_capture_outputs_stops_after_the_mid_block_and_removes_its_hooks(denoiser):
    from sdtoolkit.distill.adversarial import bottleneck_features, trunk_features

    unet = denoiser.base_model
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([300.0, 700.0])
    cond = _cond(denoiser)
    embed = torch.zeros(2)
    up_calls = []
    handle = unet.up_blocks[0].register_forward_hook(lambda *a: up_calls.append(1))
    try:
        with torch.no_grad():
            features = trunk_features(denoiser, x, t, cond)
            mid = bottleneck_features(denoiser, x, t, cond, guidance_embed=embed)
    finally:
        handle.remove()
    assert up_calls == []
    assert len(features) == len(unet.down_blocks) + 1
    assert torch.equal(features[-1], mid.float())
    # the same features by plain hooks on a full forward
    kept = []
    handles = [
        b.register_forward_hook(lambda m, a, o: kept.append(o[0] if isinstance(o, tuple) else o))
        for b in [*unet.down_blocks, unet.mid_block]
    ]
    with torch.no_grad():
        denoiser.model_output(x, t, cond, guidance_embed=embed)
    for h in handles:
        h.remove()
    assert all(torch.equal(a, b.float()) for a, b in zip(features, kept))
    assert not any(b._forward_hooks for b in [*unet.down_blocks, unet.mid_block])


def test_capture_outputs_generic():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    ran = []
    net[2].register_forward_hook(lambda *a: ran.append(1))
    out = capture_outputs(lambda: net(torch.ones(1, 2)), [net[0]], stop_after=net[1])
    assert len(out) == 1 and out[0].shape == (1, 3) and ran == []
    assert len(capture_outputs(lambda: net(torch.ones(1, 2)), [net[0], net[2]])) == 2 and ran == [1]


# ------------------------------------------------------------------------------------- registry


def test_one_registry_pattern_for_methods_and_guidances():
    from sdtoolkit.distill.method import METHODS, get_method, method_names
    from sdtoolkit.text_to_3d.guidance.registry import GUIDANCES, find

    assert isinstance(METHODS, Registry) and isinstance(GUIDANCES, Registry)
    assert {"lcm", "pcm", "dmd2", "flash-dmd", "sid", "sida", "scm", "ladd"} <= set(method_names())
    assert get_method("pcm").__module__ == "sdtoolkit.trainers.pcm"
    with pytest.raises(ValueError, match="unknown distillation method 'nope'; registered: dmd2"):
        get_method("nope")
    cls, config_class = find("vsd")
    assert GUIDANCES.get("vsd") is cls and config_class.__name__ == "VSDConfig"


def test_registry_duplicates_metadata_and_loading():
    loads = []
    registry = Registry("widget", load=lambda: loads.append(1))

    @registry.register("a", size=3)
    class A:
        pass

    class B:
        name = "b"

    registry.register()(B)
    registry.register()(B)  # the same class again: a module imported twice
    with pytest.raises(ValueError, match="a widget named 'a' is already registered"):
        registry.add("a", B)
    assert registry.names() == ["a", "b"] and registry.meta("a") == {"size": 3} and loads == [1]
    assert registry.get("b") is B and loads == [1]
    with pytest.raises(KeyError, match="unknown widget 'c'; registered: a, b"):
        registry.get("c")
    strict = Registry("guidance", allow_same=False)
    strict.add("x", A)
    with pytest.raises(ValueError, match="already registered"):
        strict.add("x", A)


# ------------------------------------------------------------------------------------- PCM's own file


def test_pcm_has_its_own_file_and_lcm_does_not_import_it():
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "trainers"
    lcm_source = (root / "lcm.py").read_text()
    imported = {node.module or "" for node in ast.walk(ast.parse(lcm_source)) if isinstance(node, ast.ImportFrom)}
    assert not any("pcm" in name for name in imported)
    assert "class PCM" not in lcm_source and "class PCM(LCM)" in (root / "pcm.py").read_text()


# ------------------------------------------------------------------------------------- adapter switching


def test_adapter_switch_is_dictionary_stores_without_module_walks(monkeypatch):
    """After the first switch, `adapter_state` neither walks the module tree nor goes through
    `nn.Module.__setattr__` (peft's public calls and plain attribute assignment both do)."""
    from sdtoolkit.core.adapters import adapter_state
    from sdtoolkit.distill.score_distillation import FakeScoreConfig, ScorePair

    teacher = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    scores = ScorePair(teacher, FakeScoreConfig(rank=2))
    unet = teacher.base_model
    with adapter_state(unet, "fake_score"):
        pass
    counts = {"walk": 0, "setattr": 0}
    original_modules, original_setattr = nn.Module.named_modules, nn.Module.__setattr__

    def counting_modules(self, *args, **kwargs):
        counts["walk"] += 1
        return original_modules(self, *args, **kwargs)

    def counting_setattr(self, name, value):
        if name in ("_active_adapter", "_disable_adapters"):
            counts["setattr"] += 1
        return original_setattr(self, name, value)

    monkeypatch.setattr(nn.Module, "named_modules", counting_modules)
    monkeypatch.setattr(nn.Module, "__setattr__", counting_setattr)
    from sdtoolkit.core.adapters import tuner_layers

    layers = tuner_layers(unet)
    with adapter_state(unet, "fake_score"):
        assert all(not m.disable_adapters and m.active_adapters == ["fake_score"] for m in layers)
        with teacher.adapters_disabled():
            assert all(m.disable_adapters for m in layers)
        assert all(not m.disable_adapters for m in layers)
    assert all(m.disable_adapters for m in layers)  # ScorePair leaves the adapter off outside fake()
    assert counts == {"walk": 0, "setattr": 0}
    assert scores is not None
