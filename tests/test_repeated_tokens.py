"""Exact compaction of SD3's repeated zero (no-T5) tokens: values and gradients equal the full call's."""

import math

import pytest
import torch

from sdtoolkit.core.repeated_tokens import (
    RepeatedKeyJointAttnProcessor,
    collapse_repeated_tail,
    compact_joint_attention,
    key_log_multiplicity,
)


def _tiny_sd3(seed=0):
    from sdtoolkit.testing import tiny_sd3_transformer

    model = tiny_sd3_transformer(seed)  # 2 joint blocks: the first updates the text stream, the second reads it
    torch.manual_seed(seed)
    for p in model.parameters():  # random (not zero-initialised) output layers so every block matters
        p.data.normal_(0, 0.2)
    return model


def _inputs(batch=2, clip_tokens=5, zero_tokens=40):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, 8, 8, generator=g)
    clip = torch.randn(batch, clip_tokens, 32, generator=g)
    text = torch.cat([clip, torch.zeros(batch, zero_tokens, 32)], dim=1)
    pooled = torch.randn(batch, 32, generator=g)
    t = torch.tensor([250.0, 900.0][:batch])
    return x, text, pooled, t


def test_collapse_repeated_tail_counts_the_run():
    x, text, _, _ = _inputs()
    compact, n = collapse_repeated_tail(text)
    assert n == 40 and compact.shape[1] == 6
    assert torch.equal(compact[:, :5], text[:, :5]) and not compact[:, 5].any()
    # no repeated tail: unchanged
    same, n = collapse_repeated_tail(torch.randn(2, 7, 16))
    assert n == 1 and same.shape[1] == 7
    # the run is the one every row shares: row 1 repeats its own last token 3 times, row 0 40 times
    text2 = text.clone()
    text2[1, -3:] = 1.0
    compact2, n2 = collapse_repeated_tail(text2)
    assert n2 == 3 and compact2.shape[1] == text.shape[1] - 2
    assert torch.equal(compact2, text2[:, : text.shape[1] - 2])


def test_compact_call_equals_full_call_values_and_gradients():
    model = _tiny_sd3()
    x, text, pooled, t = _inputs()

    def run(compact: bool):
        model.zero_grad()
        if compact:
            ctx, n = collapse_repeated_tail(text)
            bias = key_log_multiplicity(16, ctx.shape[1], n)
            with compact_joint_attention(model, bias):
                out = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled).sample
        else:
            out = model(hidden_states=x, timestep=t, encoder_hidden_states=text, pooled_projections=pooled).sample
        (out.square().mean()).backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    full, g_full = run(False)
    compact, g_compact = run(True)
    assert full.abs().mean() > 0.1  # a real signal, not a degenerate model
    torch.testing.assert_close(compact, full, rtol=1e-5, atol=1e-5)
    assert g_full.keys() == g_compact.keys()
    for k in g_full:
        torch.testing.assert_close(g_compact[k], g_full[k], rtol=1e-4, atol=1e-5, msg=k)


def test_without_bias_compaction_changes_the_output():
    """The log-multiplicity is what makes it exact: dropping the repeats without it is a different function."""
    model = _tiny_sd3()
    x, text, pooled, t = _inputs()
    with torch.no_grad():
        full = model(hidden_states=x, timestep=t, encoder_hidden_states=text, pooled_projections=pooled).sample
        ctx, n = collapse_repeated_tail(text)
        with compact_joint_attention(model, key_log_multiplicity(16, ctx.shape[1], 1)):
            wrong = model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, pooled_projections=pooled).sample
    assert (wrong - full).abs().max() > 1e-2
    assert key_log_multiplicity(16, ctx.shape[1], n)[0, 0, 0, -1].item() == pytest.approx(math.log(40))


def test_processors_restored_and_bad_bias_refused():
    model = _tiny_sd3()
    before = [type(p).__name__ for p in model.attn_processors.values()]
    x, text, pooled, t = _inputs()
    with pytest.raises(ValueError, match="covers 3 keys"):
        with compact_joint_attention(model, torch.zeros(1, 1, 1, 3)):
            model(hidden_states=x, timestep=t, encoder_hidden_states=text, pooled_projections=pooled)
    assert [type(p).__name__ for p in model.attn_processors.values()] == before
    assert not any(isinstance(p, RepeatedKeyJointAttnProcessor) for p in model.attn_processors.values())
    with pytest.raises(ValueError, match="no joint"):
        with compact_joint_attention(torch.nn.Linear(2, 2), torch.zeros(1)):
            pass


def _randomised_sd3_denoiser():
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.testing import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline()
    torch.manual_seed(3)
    for p in pipe.transformer.parameters():  # the tiny model's zero-initialised output would hide differences
        p.data.normal_(0, 0.2)
    return pipe, Denoiser.from_pipeline(pipe)


def test_sd3_adapter_collapses_no_t5_tokens_and_matches_the_literal_call():
    """Through the Denoiser (what every trainer and sampler uses): the stock pipeline's 256 zero tokens are kept once
    with log 256 recorded, and the network output equals the transformer called on the literal 256-token sequence."""
    pipe, den = _randomised_sd3_denoiser()
    cond, uncond = den.encode_prompt(["a red cube", "a blue sphere"])
    literal, _, pooled, _ = pipe.encode_prompt(
        ["a red cube", "a blue sphere"], None, None, do_classifier_free_guidance=False
    )
    assert literal.shape[1] == cond.encoder_hidden_states.shape[1] + 255
    assert cond.encoder_log_multiplicity[0, -1].item() == pytest.approx(math.log(256))
    assert uncond.encoder_log_multiplicity is not None
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.3, 0.8])
    ours = den.model_output(x, t, cond)
    with torch.no_grad():
        ref = pipe.transformer(
            hidden_states=x, timestep=t * 1000, encoder_hidden_states=literal, pooled_projections=pooled
        ).sample
    assert ref.abs().mean() > 0.1
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    # attention that takes no bias (xformers, flash-only, compiled): the literal sequence is rebuilt, same output
    den.model.__dict__["_sdtoolkit_attention_takes_bias"] = False
    torch.testing.assert_close(den.model_output(x, t, cond), ref, rtol=1e-5, atol=1e-5)


def test_collapsed_conditioning_survives_the_text_cache_and_expands_back():
    from sdtoolkit.core.conditioning import Conditioning
    from sdtoolkit.core.repeated_tokens import collapse_conditioning, expand_conditioning
    from sdtoolkit.distill.data import conditioning_to_tensors, tensors_to_conditioning

    x, text, pooled, _ = _inputs()
    cond = collapse_conditioning(Conditioning(text, pooled_projections=pooled))
    back = tensors_to_conditioning(conditioning_to_tensors(cond))
    assert torch.equal(back.encoder_log_multiplicity, cond.encoder_log_multiplicity)
    both = Conditioning.cat([back, back[:1]])
    assert both.encoder_log_multiplicity.shape == (3, 6)
    full = expand_conditioning(back)
    assert torch.equal(full.encoder_hidden_states, text) and full.encoder_log_multiplicity is None


def test_nested_compaction_restores_the_outer_bias_and_the_processors():
    model = _tiny_sd3()
    outer, inner = torch.zeros(1, 1, 1, 5), torch.ones(1, 1, 1, 7)
    stock = [type(p).__name__ for p in model.attn_processors.values()]
    with compact_joint_attention(model, outer):
        processor = next(iter(model.attn_processors.values()))
        with compact_joint_attention(model, inner):
            assert processor.bias is inner
        assert processor.bias is outer and isinstance(processor, RepeatedKeyJointAttnProcessor)
    assert processor.bias is None and [type(p).__name__ for p in model.attn_processors.values()] == stock


def test_attention_settings_that_take_no_bias_turn_compaction_off():
    from sdtoolkit.core.attention import AttentionSetting, takes_attention_bias

    model = _tiny_sd3()
    assert takes_attention_bias(model)
    AttentionSetting("flash", "flash", torch.device("cpu"), torch.float32).apply(model)
    assert not takes_attention_bias(model)  # flash kernels take no mask
    wrapper = torch.nn.Module()
    wrapper.module = model  # a DDP-style wrapper sees its inner model's setting
    assert not takes_attention_bias(wrapper)
    AttentionSetting("auto", "flash", torch.device("cpu"), torch.float32, fallbacks=("math",)).apply(model)
    assert takes_attention_bias(model)  # auto falls back to a kernel that takes one
    model._sdtoolkit_compiled = True
    assert not takes_attention_bias(model)
