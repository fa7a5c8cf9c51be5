"""Per-step host work that must not grow with the module count (issue 16, item 4): diffusers' per-call signature
introspection, the EMA's module walks, accelerate's unwrap walk, the VP schedule's repeated table lookups and the
per-parameter gradient hooks. Each change keeps the numbers bitwise; each test below fails on the code it replaced."""

import copy
import inspect

import pytest
import torch
from torch import nn

from sdtoolkit.core.attention import sign_processors
from sdtoolkit.core.denoiser import Denoiser
from sdtoolkit.core.ema import EMA
from sdtoolkit.core.schedules import VPSchedule, make_betas
from sdtoolkit.distill.loop import finite_gradients_
from sdtoolkit.testing import tiny_sd_pipeline, tiny_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def _unet_inputs(unet, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn(batch, unet.config.in_channels, size, size, generator=g)
    text = torch.randn(batch, 5, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 500]), text


class _CountSignatures:
    """Counts `inspect.signature` computations from code (the work diffusers' `Attention.forward` repeats)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = inspect._signature_from_function

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(inspect, "_signature_from_function", counting)


# ------------------------------------------------------------------------------------------ attention signatures


def test_signed_processors_skip_the_per_call_introspection_and_change_no_output(monkeypatch):
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    x, t, text = _unet_inputs(unet)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=text).sample
    counter = _CountSignatures(monkeypatch)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=text)
    assert counter.calls > 0  # diffusers introspects on every attention call: the cost being removed

    assert sign_processors(unet) > 0
    counter.calls = 0
    with torch.no_grad():
        after = unet(x, t, encoder_hidden_states=text).sample
    assert counter.calls == 0
    assert torch.equal(before, after)
    assert sign_processors(unet) == 0  # idempotent


def test_signed_processor_keeps_its_signature_class_and_copies():
    unet = tiny_unet()
    module = next(m for m in unet.modules() if getattr(m, "processor", None) is not None)
    processor = module.processor
    expected = inspect.signature(type(processor).__call__.__get__(processor))
    sign_processors(unet)
    assert inspect.signature(module.processor.__call__) == expected
    assert type(module.processor) is type(processor)  # diffusers' class checks still see its own class
    unet.set_default_attn_processor()  # refuses processors of unknown classes; signed ones are not that
    sign_processors(unet)
    twin = copy.deepcopy(unet)
    copied = next(m for m in twin.modules() if getattr(m, "processor", None) is not None).processor
    assert copied.__dict__["__call__"].processor is copied  # the copy's signature object points at the copy


def test_denoiser_signs_the_networks_it_wraps(monkeypatch):
    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline())
    counter = _CountSignatures(monkeypatch)
    x = torch.randn(2, 4, 8, 8)
    cond, _ = denoiser.encode_prompt(["a red cube", "a blue torus"])
    with torch.no_grad():
        denoiser.predict(x, torch.tensor([100.0, 700.0]), cond)
    assert counter.calls == 0


def test_unknown_cross_attention_kwargs_are_still_filtered():
    """The keyword filtering diffusers does with the signature is unchanged: an argument the processor does not
    take is dropped (with diffusers' warning), not passed through."""
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    sign_processors(unet)
    x, t, text = _unet_inputs(unet)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=text).sample
        extra = unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"not_an_argument": 1}).sample
    assert torch.equal(plain, extra)


# --------------------------------------------------------------------------------------------------------- EMA


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)


def test_ema_walks_the_model_once_and_matches_the_per_tensor_formula(monkeypatch):
    torch.manual_seed(0)
    model, target = _Net(), _Net()
    ema = EMA(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    ema.update(model)
    ema.copy_to(target)
    walks = {"n": 0}
    original = nn.Module.named_parameters

    def counting(self, *args, **kwargs):
        walks["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "named_parameters", counting)
    for _ in range(3):
        with torch.no_grad():
            for _, p in original(model):
                p.add_(0.1)
        ema.update(model)
        ema.copy_to(target)
        current = [p.detach() for _, p in original(model)]
        expected = [0.9 * e + 0.1 * c for e, c in zip(expected, current)]
    assert walks["n"] == 0
    for e, s, (_, t) in zip(expected, ema.shadow_params, original(target)):
        torch.testing.assert_close(s, e, rtol=0, atol=1e-6)
        assert torch.equal(s, t)


def test_ema_forget_re_reads_re_registered_parameters():
    model, target = _Net(), _Net()
    ema = EMA(model, decay=0.5)
    ema.copy_to(target)
    target.a.weight = nn.Parameter(torch.zeros_like(target.a.weight))  # a new tensor object
    ema.forget(target)
    ema.copy_to(target)
    assert torch.equal(target.a.weight, ema.shadow["a.weight"])


# ------------------------------------------------------------------------------------------------ VP schedule


@pytest.mark.parametrize("zero_snr", [False, True])
def test_vp_coefficients_are_bitwise_the_four_separate_lookups(zero_snr):
    schedule = VPSchedule(make_betas(1000, 0.00085, 0.012, "scaled_linear"), rescale_betas_zero_snr=zero_snr)
    t = torch.tensor([0.0, 19.0, 250.5, 731.25, 998.9, 999.0])
    alpha, sigma, d_alpha, d_sigma = schedule.coefficients(t, 4)
    assert alpha.shape == (6, 1, 1, 1)
    for got, want in zip(
        (alpha, sigma, d_alpha, d_sigma),
        (schedule.alpha(t), schedule.sigma(t), schedule.d_alpha(t), schedule.d_sigma(t)),
    ):
        assert torch.equal(got.flatten(), want)


# ----------------------------------------------------------------------------------------- finite gradients


def test_finite_gradients_mends_only_bad_tensors_as_nan_to_num_does():
    good, bad, none = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(4)), nn.Parameter(torch.ones(2))
    good.grad = torch.tensor([1.0, -2.0, 3.0])
    bad.grad = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.5])
    assert finite_gradients_([good, bad, none]) == 1
    assert torch.equal(good.grad, torch.tensor([1.0, -2.0, 3.0]))
    assert torch.equal(bad.grad, torch.tensor([0.0, 1e5, -1e5, 0.5]))
    assert none.grad is None
    assert finite_gradients_([good, bad]) == 0


@pytest.mark.parametrize("method", ["dmd2", "sid"])
def test_a_nan_generator_gradient_is_mended_not_skipped(method):
    """A NaN entry in the generator's gradient (finite loss) becomes 0 before clipping, so the update happens; without
    `finite_gradients` the non-finite guard would skip it (checked too, so the test can fail)."""
    from benchmarks import components, workloads

    comps = components.build("tiny", torch.device("cpu"), 2)
    for finite in (True, False):
        step = workloads.synthetic_trainer(comps, False, method, "eager", **workloads._dm_overrides(method, comps))
        trainer = step.trainer
        spec = next(s for s in trainer.specs if s.name == "generator")
        assert spec.finite_gradients  # what every distribution-matching generator asks for
        spec.finite_gradients = finite
        first = spec.parameters()[0]
        handle = first.register_hook(lambda g: torch.where(torch.rand_like(g) < 0.5, torch.nan, g))
        logs = {}
        for _ in range(2):  # SiD's generator steps on odd steps
            logs.update(step())
        handle.remove()
        assert ("generator/skipped" in logs) is not finite, (finite, sorted(logs))
        assert torch.isfinite(first).all()


def test_multi_tensor_adam_is_bitwise_the_per_parameter_loop():
    """text-to-3D's optimizer runs torch's multi-tensor Adam (its settings: betas (0.9, 0.99), eps 1e-15) on a CPU;
    five steps give exactly the weights of torch's CPU default, the per-parameter loop."""
    results = []
    for foreach in (False, True):
        torch.manual_seed(0)
        params = [nn.Parameter(torch.randn(64, 3)), nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(7, 7))]
        groups = [{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 1e-3}]
        optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, foreach=foreach)
        for step in range(5):
            torch.manual_seed(100 + step)
            loss = sum((p * torch.randn_like(p)).sum() + (p**2).sum() for p in params)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        results.append([p.detach().clone() for p in params])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_compiled_blocks_keep_plain_processors():
    """Regional compilation removes the signatures (a per-processor object would make dynamo guard on each processor
    and compile every block anew), and a Denoiser made later around the compiled model does not add them back."""
    from sdtoolkit.core.denoiser import compile_repeated_blocks

    unet = tiny_unet()
    sign_processors(unet)
    compile_repeated_blocks(unet)  # lazy: nothing compiles until the first call
    processors = [m.processor for m in unet.modules() if getattr(m, "processor", None) is not None]
    assert processors and all("__call__" not in p.__dict__ for p in processors)
    assert sign_processors(unet) == 0
    Denoiser(unet, VPSchedule(make_betas(1000)), "epsilon")
    assert all("__call__" not in p.__dict__ for p in processors)


def test_ema_target_shares_the_average_when_dtypes_match():
    torch.manual_seed(0)
    model, target = _Net(), _Net()
    ema = EMA(model, decay=0.5)
    assert ema.share_with(target)
    assert all(torch.equal(t, s) for t, s in zip(target.parameters(), ema.shadow_params))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # no copy_to: the target is the average
    assert all(torch.equal(t, s) for t, s in zip(target.parameters(), ema.shadow_params))
    assert not EMA(model, decay=0.5).share_with(_Net().double())  # another dtype: keeps its own weights


# ----------------------------------------------------------------------------- teacher passes without peft wrappers


def _lora_backbone():
    from sdtoolkit.distill.score_distillation import FakeScoreConfig, ScorePair

    torch.manual_seed(0)
    teacher = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    scores = ScorePair(teacher, FakeScoreConfig(rank=2))
    with torch.no_grad():  # a trained-looking adapter, so that teacher and fake score differ
        for name, p in teacher.base_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return teacher, scores


def test_teacher_pass_runs_the_plain_layers_and_equals_peft_disabled_path():
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdtoolkit.core import adapters

    teacher, _ = _lora_backbone()
    unet = teacher.base_model
    x, t, text = _unet_inputs(unet)
    n_layers = len(adapters.tuner_layers(unet))
    # peft's own disabled path (no bypass) as the reference
    for layer in adapters.tuner_layers(unet):
        layer.enable_adapters(False)
    with torch.no_grad():
        expected = unet(x, t, encoder_hidden_states=text).sample
        with adapters.adapter_state(unet, None):
            assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())  # plain network
            got = unet(x, t, encoder_hidden_states=text).sample
            with adapters.adapter_state(unet, "fake_score"):  # an adapter inside a teacher pass gets its layers
                assert sum(isinstance(m, BaseTunerLayer) for m in unet.modules()) == n_layers
                fake = unet(x, t, encoder_hidden_states=text).sample
            assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())
        assert sum(isinstance(m, BaseTunerLayer) for m in unet.modules()) == n_layers  # all back afterwards
        with adapters.adapter_state(unet, "fake_score"):
            fake_alone = unet(x, t, encoder_hidden_states=text).sample
    assert torch.equal(got, expected)
    assert torch.equal(fake, fake_alone) and not torch.equal(fake, expected)


def test_no_bypass_for_merged_adapters_or_compiled_models():
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdtoolkit.core import adapters

    teacher, _ = _lora_backbone()
    unet = teacher.base_model
    unet._sdtoolkit_compiled = True
    with adapters.adapter_state(unet, None):
        assert any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    del unet._sdtoolkit_compiled
    layer = adapters.tuner_layers(unet)[0]
    layer.merge(adapter_names=["fake_score"])
    with adapters.adapter_state(unet, None):
        assert any(isinstance(m, BaseTunerLayer) for m in unet.modules())
    layer.unmerge()
    with adapters.adapter_state(unet, None):
        assert not any(isinstance(m, BaseTunerLayer) for m in unet.modules())


def test_a_failing_teacher_pass_puts_the_layers_back():
    from peft.tuners.tuners_utils import BaseTunerLayer

    from sdtoolkit.core import adapters

    teacher, _ = _lora_backbone()
    unet = teacher.base_model
    with pytest.raises(RuntimeError, match="boom"):
        with adapters.adapter_state(unet, None):
            raise RuntimeError("boom")
    assert any(isinstance(m, BaseTunerLayer) for m in unet.modules())


# ------------------------------------------------------------------------------------ no-grad forwards, fast path


def test_no_grad_forwards_run_in_inference_mode_and_return_normal_tensors(monkeypatch):
    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100.0, 700.0])
    cond, _ = denoiser.encode_prompt(["a red cube", "a blue torus"])
    seen = []
    original = denoiser._call_network

    def spy(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(denoiser, "_call_network", spy)
    with torch.no_grad():
        fast = denoiser.model_output(x, t, cond)
    slow = denoiser.model_output(x, t, cond)  # grad mode: the ordinary path
    assert seen == [True, False]
    assert not fast.is_inference() and torch.equal(fast, slow)
    w = torch.randn_like(fast, requires_grad=True)
    (w * fast).sum().backward()  # the output may be saved for backward (an inference tensor could not)
    assert torch.equal(w.grad, fast)


def test_forward_mode_ad_keeps_the_ordinary_path(monkeypatch):
    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    denoiser.set_attention("jvp")  # the math kernel: the only one with forward-mode AD
    x = torch.randn(1, 4, 8, 8)
    cond, _ = denoiser.encode_prompt(["a red cube"])
    t = torch.tensor([300.0])
    seen = []
    original = denoiser._call_network

    def spy(*args, **kwargs):
        seen.append(torch.is_inference_mode_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(denoiser, "_call_network", spy)
    v = torch.randn_like(x)
    with torch.no_grad():
        out, tangent = torch.func.jvp(lambda x_: denoiser.model_output(x_, t, cond), (x,), (v,))
        h = 1e-3
        plus, minus = denoiser.model_output(x + h * v, t, cond), denoiser.model_output(x - h * v, t, cond)
    assert seen[0] is False  # inside torch.func.jvp: no inference mode (it would drop the tangent)
    torch.testing.assert_close(tangent, (plus - minus) / (2 * h), rtol=2e-2, atol=2e-3)


def test_captured_features_and_offloaded_weights_stay_normal_tensors():
    """Hooks take tensors out of a forward (the discriminators' features): while they do, no inference mode. The
    teacher offload's weights stay normal tensors after an inference-mode forward (uploaded there, they are dropped
    again by its post-hook), so a later forward with gradient may save them."""
    from sdtoolkit.core.features import capture_outputs
    from sdtoolkit.core.offload import FrozenOffload

    denoiser = Denoiser.from_pipeline(tiny_sd_pipeline()).freeze()
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100.0, 700.0])
    cond, _ = denoiser.encode_prompt(["a red cube", "a blue torus"])
    unet = denoiser.base_model
    with torch.no_grad():
        run = lambda: denoiser.model_output(x, t, cond)  # noqa: E731
        (mid,) = capture_outputs(run, [unet.mid_block], stop_after=unet.mid_block)
    assert not mid.is_inference()
    offload = FrozenOffload(unet, "cpu", "cpu")
    with torch.no_grad():
        denoiser.model_output(x, t, cond)  # the pre-hook uploads the weights inside inference mode
    assert not any(p.is_inference() for p in unet.parameters())
    offload.offload()
