"""Exact compaction of repeated context tokens in joint (MM-DiT) attention.

Stable Diffusion 3 without its T5 encoder (`text_encoder_3=None`) appends `max_sequence_length` (256 by default)
zero tokens to the CLIP tokens, so the transformer attends over 256 identical text tokens on every call. In an
MM-DiT (Esser et al. 2024, Sec. 4) text tokens carry no position embedding and every operation except attention is
per token; identical input tokens therefore stay identical through every block, and their only effect on any other
token is through attention, where `n` equal keys with equal values act as one key whose logit is raised by `log n`:

    sum_j exp(q.k_j) v_j / sum_j exp(q.k_j)  with k_j = k, v_j = v for n of the j
  = the same sum with those n terms replaced by one term exp(q.k + log n) v.

So a transformer fed one copy of the repeated token, with `log n` added to that key's attention logit, computes
exactly the image tokens (and the distinct text tokens) of the full call, as a function of the weights: values and
gradients agree to float rounding (`tests/test_repeated_tokens.py`). For the embedded `builtin:shapes-flow` teacher
(64 image + 16 CLIP + 256 zero tokens) the compact call attends over 81 tokens instead of 336.

`collapse_repeated_tail` finds the repeated tail, `RepeatedKeyJointAttnProcessor` is diffusers' joint attention with
the per-key log-multiplicity as an additive attention bias, and `compact_joint_attention` installs it for the span of
a `with` block. `collapse_conditioning` / `expand_conditioning` carry the count in a `Conditioning`
(`encoder_log_multiplicity`), which is how SD3's adapter uses it for every trainer and sampler.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdtoolkit.core.conditioning import Conditioning

__all__ = [
    "RepeatedKeyJointAttnProcessor",
    "collapse_conditioning",
    "collapse_repeated_tail",
    "compact_joint_attention",
    "expand_conditioning",
    "key_log_multiplicity",
]


def collapse_repeated_tail(tokens: Tensor, min_repeats: int = 2) -> tuple[Tensor, int]:
    """(tokens with their repeated tail kept once, n): the trailing tokens of `tokens` `[B, L, D]` equal to the last
    one (in every batch row) are replaced by a single copy; `n` is how many there were (1 when fewer than
    `min_repeats`, and then `tokens` is returned unchanged). One host read."""
    last = tokens[:, -1:, :]
    same = (tokens == last).all(dim=-1).all(dim=0)  # [L]: position equals the last token in every row
    # length of the run of True at the end
    flipped = same.flip(0).to(torch.int64)
    n = int(flipped.cumprod(0).sum().item())
    if n < min_repeats:
        return tokens, 1
    return tokens[:, : tokens.shape[1] - n + 1, :], n


def key_log_multiplicity(image_tokens: int, text_tokens: int, repeats: int, device=None, dtype=None) -> Tensor:
    """The additive attention bias `[1, 1, 1, image_tokens + text_tokens]` of a compact joint sequence (image tokens
    first, as diffusers' joint processors concatenate them): 0 everywhere but log(`repeats`) on the last text token,
    the one copy of the repeated tail."""
    bias = torch.zeros(image_tokens + text_tokens, device=device, dtype=dtype or torch.float32)
    bias[-1] = math.log(repeats)
    return bias.view(1, 1, 1, -1)


def collapse_conditioning(cond: Conditioning, min_repeats: int = 2) -> Conditioning:
    """`cond` with the repeated tail of its `encoder_hidden_states` kept once and the count recorded in
    `encoder_log_multiplicity` (`[B, L']`: 0, ..., 0, log n); unchanged when there is no such tail."""
    if cond.encoder_hidden_states is None or cond.encoder_log_multiplicity is not None:
        return cond
    tokens, n = collapse_repeated_tail(cond.encoder_hidden_states, min_repeats)
    if n == 1:
        return cond
    log_n = torch.zeros(tokens.shape[:2], device=tokens.device, dtype=torch.float32)
    log_n[:, -1] = math.log(n)
    return replace(cond, encoder_hidden_states=tokens, encoder_log_multiplicity=log_n)


def expand_conditioning(cond: Conditioning) -> Conditioning:
    """The inverse of `collapse_conditioning`: the literal token sequence (for attention kernels that take no bias,
    and compiled models). One host read of the count."""
    log_n = cond.encoder_log_multiplicity
    if log_n is None:
        return cond
    n = round(math.exp(float(log_n[0, -1])))
    tokens = cond.encoder_hidden_states
    tail = tokens[:, -1:].expand(-1, n - 1, -1)
    return replace(cond, encoder_hidden_states=torch.cat([tokens, tail], dim=1), encoder_log_multiplicity=None)


class RepeatedKeyJointAttnProcessor:
    """diffusers' `JointAttnProcessor2_0` (SD3's joint attention over [image; text] tokens) with an additive
    per-key bias: the log-multiplicity of each key (`key_log_multiplicity`), held in `bias` and set by
    `compact_joint_attention` for the span of a call. Without a bias it is the stock computation."""

    def __init__(self) -> None:
        self.bias: Tensor | None = None

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *args,
        **kwargs,
    ):
        batch, image_tokens = hidden_states.shape[:2]
        heads = attn.heads

        def split(x: Tensor) -> Tensor:
            return x.view(batch, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        query, key, value = (split(f(hidden_states)) for f in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            c_query = split(attn.add_q_proj(encoder_hidden_states))
            c_key = split(attn.add_k_proj(encoder_hidden_states))
            c_value = split(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                c_query = attn.norm_added_q(c_query)
            if attn.norm_added_k is not None:
                c_key = attn.norm_added_k(c_key)
            query = torch.cat([query, c_query], dim=2)
            key = torch.cat([key, c_key], dim=2)
            value = torch.cat([value, c_value], dim=2)
        bias = self.bias
        if bias is not None:
            if bias.shape[-1] != key.shape[2]:
                raise ValueError(f"repeated-key bias covers {bias.shape[-1]} keys; the attention has {key.shape[2]}")
            bias = bias.to(query.dtype)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1]).to(query.dtype)
        if encoder_hidden_states is None:
            return attn.to_out[1](attn.to_out[0](out))
        out, context = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](out)), context


def _joint_attention_modules(model: nn.Module) -> list[nn.Module]:
    cached = model.__dict__.get("_sdtoolkit_joint_attention")
    if cached is None:
        cached = [m for m in model.modules() if hasattr(m, "set_processor") and hasattr(m, "add_k_proj")]
        model.__dict__["_sdtoolkit_joint_attention"] = cached
    return cached


@contextlib.contextmanager
def compact_joint_attention(model: nn.Module, bias: Tensor) -> Iterator[None]:
    """Inside the block, every joint attention of `model` (an SD3-style MM-DiT) adds `bias` (`key_log_multiplicity`,
    or `[B, 1, 1, keys]` per sample) to its logits; the model's own processors are restored on exit."""
    modules = _joint_attention_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no joint (image + text) attention to compact")
    saved = [m.processor for m in modules]
    processor = model.__dict__.get("_sdtoolkit_compact_processor")
    if processor is None:  # one per model, signed once (diffusers inspects a processor's signature on every call)
        from sdtoolkit.core.attention import _CallSignature

        processor = RepeatedKeyJointAttnProcessor()
        processor.__call__ = _CallSignature(processor)
        model.__dict__["_sdtoolkit_compact_processor"] = processor
    previous, processor.bias = processor.bias, bias  # nested use (a call inside a call) restores the outer bias
    try:
        for m in modules:
            m.processor = processor  # plain assignment: set_processor would also reset signatures and warn
        yield
    finally:
        processor.bias = previous
        for m, p in zip(modules, saved):
            m.processor = p
