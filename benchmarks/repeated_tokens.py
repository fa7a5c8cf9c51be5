"""SD3 without T5: the transformer step on the literal 256 zero tokens against the exact compaction
(`sdtoolkit.core.repeated_tokens`), same process, alternating rounds, paired medians.

The work is one training step of `builtin:shapes-flow`'s architecture (the flow teacher's default
`FlowTeacherConfig`: a 6-block SD3 transformer, 64 image + 16 CLIP + 256 zero tokens) at batch 32: forward,
backward through the transformer. The reference is what stock diffusers does (the 256-token sequence the stock
`StableDiffusion3Pipeline.encode_prompt` builds); sdtoolkit's side keeps one zero token weighted log 256. Both
compute the same function (checked here on every run, and in `tests/test_repeated_tokens.py`).

    python -m benchmarks.repeated_tokens --rounds 15 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.repeated_tokens", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds (one step each side per round)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size of the step")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sdtoolkit.core.repeated_tokens import collapse_repeated_tail, compact_joint_attention, key_log_multiplicity
    from sdtoolkit.models.shapes_flow_teacher import FlowTeacherConfig, build_transformer

    config = FlowTeacherConfig()
    torch.manual_seed(0)
    model = build_transformer(config, latent_channels=4, latent_size=16)
    for p in model.parameters():  # non-zero output layers, so the check below compares real values
        p.data.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    b, width = args.batch_size, 2 * config.text_hidden_size
    x = torch.randn(b, 4, 16, 16, generator=g)
    clip = torch.randn(b, config.max_length, width, generator=g)
    literal = torch.cat([clip, torch.zeros(b, config.max_sequence_length, width)], dim=1)
    compact, n = collapse_repeated_tail(literal)
    bias = key_log_multiplicity((16 // config.patch_size) ** 2, compact.shape[1], n)
    pooled = torch.randn(b, width, generator=g)
    t = torch.rand(b, generator=g) * 1000

    def step(side: str) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        if side == "compact":
            with compact_joint_attention(model, bias):
                out = model(hidden_states=x, timestep=t, encoder_hidden_states=compact, pooled_projections=pooled)
        else:
            out = model(hidden_states=x, timestep=t, encoder_hidden_states=literal, pooled_projections=pooled)
        out.sample.square().mean().backward()
        return time.perf_counter() - start, out.sample.detach()

    _, a = step("literal")
    _, c = step("compact")
    difference = float((a - c).abs().max())
    times: dict[str, list[float]] = {"literal": [], "compact": []}
    for r in range(args.rounds):
        for side in ("literal", "compact") if r % 2 == 0 else ("compact", "literal"):
            times[side].append(step(side)[0])
    ratios = [lit / com for lit, com in zip(times["literal"], times["compact"])]
    result = {
        "batch_size": b,
        "threads": args.threads,
        "rounds": args.rounds,
        "tokens": {"literal": literal.shape[1] + 64, "compact": compact.shape[1] + 64},
        "max_abs_output_difference": difference,
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "paired_ratio_median": statistics.median(ratios),
        "paired_ratio_iqr": statistics.quantiles(ratios, n=4)[::2],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
