"""One sCM training step (SANA-Sprint's sCM term, its JVP included) on a SANA transformer: sdtoolkit's `scm_step`
on the shared Denoiser against a plain reference written the way diffusers' research script
`examples/research_projects/sana/train_sana_sprint_diffusers.py` computes its "G" phase, same process, alternating
rounds, paired ratios.

The reference (plain torch + stock diffusers, written here, not imported): a TrigFlow wrapper around the stock
`SanaTransformer2DModel` (flow time t = sin s / (sin s + cos s), input scaled by sqrt(t^2 + (1 - t)^2), output
mapped back to F), the teacher's CFG on one concatenated batch, `torch.func.jvp` of the student under the SDPA
math kernel, a second student forward with gradient, the tangent, its normalisation, the adaptively weighted loss,
backward, clipping at 0.1 and AdamW. sdtoolkit's side runs the same step through `sdtoolkit.distill.scm.scm_step`
(the teacher and student are Denoisers of the same networks, dense time, `jvp` attention). Both use the
toolkit's `LogVarianceHead` (zero-initialised; the script's `logvar_linear` reads the transformer's time
embedding, which stock diffusers does not return), the same draws, and separate copies of the same student and
optimizer. The first step's losses are compared (they agree to float rounding when both compute the same thing).

    python -m benchmarks.scm_step --rounds 21 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

SIGMA_D = 0.5
GUIDANCE_EMBEDS_SCALE = 0.1


def build(args):
    from diffusers import SanaTransformer2DModel

    from sdtoolkit.distill.students import sana_sprint_student

    torch.manual_seed(0)
    teacher = SanaTransformer2DModel(
        patch_size=1,
        in_channels=args.channels,
        out_channels=args.channels,
        num_layers=args.layers,
        num_attention_heads=args.heads,
        attention_head_dim=32,
        num_cross_attention_heads=args.heads,
        cross_attention_head_dim=32,
        cross_attention_dim=32 * args.heads,
        caption_channels=64,
        sample_size=args.size,
    )
    for p in teacher.parameters():  # non-zero output layers, so that the comparison is between real values
        p.data.normal_(0, 0.02)
    teacher.requires_grad_(False).eval()
    student = sana_sprint_student(teacher, GUIDANCE_EMBEDS_SCALE)
    return teacher, student


def draws(args, student):
    g = torch.Generator().manual_seed(1)
    b, c, n = args.batch_size, args.channels, args.size
    x0 = torch.randn(b, c, n, n, generator=g)
    z = torch.randn(b, c, n, n, generator=g)
    s = torch.atan(torch.exp(torch.randn(b, generator=g) * 1.6 + 0.2) / SIGMA_D)
    w = torch.tensor([4.0, 4.5, 5.0])[torch.randint(0, 3, (b,), generator=g)]
    text = torch.randn(b, args.text_tokens, 64, generator=g)
    negative = torch.randn(b, args.text_tokens, 64, generator=g)
    mask = torch.ones(b, args.text_tokens, dtype=torch.long)
    return x0, z, s, w, text, negative, mask


# ---------------------------------------------------------------------------------------------------- reference


def reference_step(teacher, student, head, optimizer, data, r: float = 1.0, update: bool = True) -> float:
    """The research script's sCM step, written out (`update` False: stop after backward, gradients kept)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    x0, z, s, w, text, negative, mask = data
    sd = SIGMA_D

    def trigflow(net, x_scaled, t, emb, emb_mask, guidance=None):
        flow_t = torch.sin(t) / (torch.cos(t) + torch.sin(t))
        ft = flow_t.view(-1, 1, 1, 1)
        latents = x_scaled * torch.sqrt(ft**2 + (1 - ft) ** 2)
        kwargs = {} if guidance is None else {"guidance": guidance}
        out = net(
            hidden_states=latents,
            encoder_hidden_states=emb,
            encoder_attention_mask=emb_mask,
            timestep=flow_t,
            return_dict=False,
            **kwargs,
        )[0]
        return ((1 - 2 * ft) * latents + (1 - 2 * ft + 2 * ft**2) * out) / torch.sqrt(ft**2 + (1 - ft) ** 2)

    x0_t, z_t = sd * x0, sd * z
    t = s.view(-1, 1, 1, 1)
    x_t = torch.cos(t) * x0_t + torch.sin(t) * z_t
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        both = trigflow(teacher, torch.cat([x_t, x_t]) / sd, torch.cat([s, s]), torch.cat([negative, text]),
                        torch.cat([mask, mask]))  # fmt: skip
        uncond, cond = (sd * both).chunk(2)
        dxt_dt = uncond + w.view(-1, 1, 1, 1) * (cond - uncond)
    v_x = torch.cos(t) * torch.sin(t) * dxt_dt / sd
    v_t = torch.cos(s) * torch.sin(s)
    guidance = w * GUIDANCE_EMBEDS_SCALE

    def model(x_scaled, t_):
        return trigflow(student, x_scaled, t_, text, mask, guidance)

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        F_minus, dF = torch.func.jvp(model, (x_t / sd, s), (v_x, v_t))
    with sdpa_kernel(SDPBackend.MATH):
        F = model(x_t / sd, s)
    logvar = head(s).view(-1, 1, 1, 1)
    g = -(torch.cos(t) ** 2) * (sd * F_minus - dxt_dt) - r * (torch.cos(t) * torch.sin(t) * x_t + sd * dF)
    g = g / (torch.linalg.vector_norm(g, dim=(1, 2, 3), keepdim=True) + 0.1)
    weight = 1 / (torch.tan(t) * sd)
    loss = ((weight / torch.exp(logvar)) * torch.square(F - F_minus - g) + logvar).mean()
    loss.backward()
    if update:
        torch.nn.utils.clip_grad_norm_([*student.parameters(), *head.parameters()], 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


# ---------------------------------------------------------------------------------------------------- sdtoolkit


def toolkit_parts(teacher, student):
    from sdtoolkit.core.denoiser import Denoiser
    from sdtoolkit.core.schedules import FlowSchedule

    dense = FlowSchedule(num_train_timesteps=1)  # the script feeds the flow time itself (dense time) to both
    teacher_d = Denoiser(teacher, dense, "flow", attention="jvp")
    student_d = Denoiser(student, dense, "flow", attention="jvp")
    return teacher_d, student_d


def toolkit_step(teacher_d, student_d, head, optimizer, data, r: float = 1.0, update: bool = True) -> float:
    from sdtoolkit.core.conditioning import Conditioning
    from sdtoolkit.distill.scm import scm_step

    x0, z, s, w, text, negative, mask = data
    cond = Conditioning(encoder_hidden_states=text, encoder_attention_mask=mask)
    uncond = Conditioning(encoder_hidden_states=negative, encoder_attention_mask=mask)
    out = scm_step(
        student=student_d,
        jvp_student=student_d,
        teacher=teacher_d,
        logvar_head=head,
        x0=x0,
        z=z,
        s=s,
        w=w,
        embed=w * GUIDANCE_EMBEDS_SCALE,
        cond=cond,
        uncond=uncond,
        r=r,
        c=0.1,
        sigma_data=SIGMA_D,
        time_delta=0.0,
    )
    out.loss.backward()
    if update:
        torch.nn.utils.clip_grad_norm_([*student_d.model.parameters(), *head.parameters()], 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scm_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=21, help="alternating rounds (one step each side per round)")
    parser.add_argument("--batch-size", type=int, default=8, help="batch size of the step")
    parser.add_argument("--layers", type=int, default=4, help="SANA transformer blocks")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (of width 32)")
    parser.add_argument("--channels", type=int, default=32, help="latent channels (SANA's DC-AE: 32)")
    parser.add_argument("--size", type=int, default=16, help="latent side (patch 1: size^2 image tokens)")
    parser.add_argument("--text-tokens", type=int, default=32, help="caption tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sdtoolkit.distill.scm import LogVarianceHead

    teacher, student = build(args)
    data = draws(args, student)
    sides = {}
    for name in ("reference", "sdtoolkit"):
        net, head = copy.deepcopy(student), LogVarianceHead(128)
        optimizer = torch.optim.AdamW([*net.parameters(), *head.parameters()], lr=1e-5, foreach=True)
        sides[name] = (net, head, optimizer)
    teacher_d, student_d = toolkit_parts(teacher, sides["sdtoolkit"][0])

    def step(name: str, update: bool = True) -> tuple[float, float]:
        net, head, optimizer = sides[name]
        start = time.perf_counter()
        if name == "reference":
            loss = reference_step(teacher, net, head, optimizer, data, update=update)
        else:
            loss = toolkit_step(teacher_d, student_d, head, optimizer, data, update=update)
        return time.perf_counter() - start, loss

    # identical weights and draws: the same loss and the same gradients
    first = {name: step(name, update=False)[1] for name in sides}
    grads = [{k: p.grad for k, p in sides[name][0].named_parameters() if p.grad is not None} for name in sides]
    scale = max(float(g.abs().max()) for g in grads[0].values())
    difference = max(float((grads[0][k] - grads[1][k]).abs().max()) for k in grads[0])
    for _, _, optimizer in sides.values():
        optimizer.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in ("reference", "sdtoolkit") if r % 2 == 0 else ("sdtoolkit", "reference"):
            times[name].append(step(name)[0])
    ratios = [a / b for a, b in zip(times["reference"], times["sdtoolkit"])]
    result = {
        "batch_size": args.batch_size,
        "threads": args.threads,
        "rounds": args.rounds,
        "transformer": {"layers": args.layers, "heads": args.heads, "image_tokens": args.size**2},
        "first_step_loss": first,
        "first_step_max_gradient": scale,
        "first_step_max_gradient_difference": difference,
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
