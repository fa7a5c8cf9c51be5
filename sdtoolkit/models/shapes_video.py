"""The shapes video teacher: a diffusers `MotionAdapter` (AnimateDiff, Guo et al. 2024) trained on top of the frozen
`builtin:shapes` UNet on procedural clips (`sdtoolkit.data.clips`), saved as a stock `AnimateDiffPipeline` folder.

Training (AnimateDiff's motion-module stage): the image UNet is frozen, only the motion modules train, with the
image teacher's own epsilon loss on clip latents (each frame encoded by the image VAE) and 10 % caption dropout for
CFG. Options, measured in benchmarks/RESULTS.md ("The shapes video teacher"): a frame-difference loss
(`motion_loss_weight`), the cross-attention key/value projections trained too (`train_cross_attention`), more
high-noise steps (`timestep_power`), a warm start (`init_from`); and for the text path of the turning direction
(the motion modules take no text, so the direction word reaches them only through the image UNet's cross-attention)
distinct starting rows for the motion words (`motion_word_init`), their own learning rate (`embedding_lr`) and an
auxiliary motion classifier on the spatial features (`motion_aux_weight`). The log's direction gain says whether
the teacher reads the direction word at all.
`train_video_teacher(config, output)` writes `output/` which `AnimateDiffPipeline.from_pretrained` loads (vae,
text_encoder, tokenizer, unet = UNetMotionModel, motion_adapter, scheduler).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from sdtoolkit.core.config import AT_LEAST_1, SEED, Bound, Range
from sdtoolkit.core.prediction import Coefficients, to_x0_eps
from sdtoolkit.core.schedules import VPSchedule
from sdtoolkit.core.utils import append_dims
from sdtoolkit.data.clips import ClipConfig, ClipDataset


@dataclass
class VideoTeacherConfig:
    """Motion-module training of the shapes video teacher."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "resolution": AT_LEAST_1,
        "motion_layers_per_block": AT_LEAST_1,
        "motion_num_attention_heads": AT_LEAST_1,
        "motion_norm_num_groups": AT_LEAST_1,
        "motion_max_seq_length": Range(2),
        "seed": SEED,
        "log_every": AT_LEAST_1,
        "num_threads": AT_LEAST_1,
    }

    image_teacher: str = "builtin:shapes"
    """The frozen image teacher (builtin:shapes or a StableDiffusionPipeline folder)."""
    init_from: str | None = None
    """A video teacher folder (this command's output) to start from instead of fresh motion modules: its motion
    modules, motion-word embeddings and UNet weights are the starting point. A warm start, not an exact resume: the
    optimizer and the data order start afresh, and the folder's own motion layout wins over the motion_* fields.
    None: fresh, zero-initialised motion modules."""
    num_frames: int = 16
    """Frames per training clip (AnimateDiff's motion modules take up to `motion_max_seq_length`)."""
    resolution: int = 64
    """Clip resolution in pixels (the image teacher's)."""
    num_clips: int = 4096
    """Rendered training clips."""
    turn_deg: float = 60.0
    """Total rotation of a turning training clip from its first to its last frame, degrees (`ClipConfig.turn_deg`;
    at most 88, so that every frame keeps its caption's view word)."""
    bob_amplitude: float = 0.15
    """Amplitude of a bobbing training clip along +z, world units (`ClipConfig.bob_amplitude`; ~5 px at 64 px)."""
    motion_layers_per_block: int | None = None
    """Motion layers per block (None: the UNet's layers_per_block, which MotionAdapter must match)."""
    motion_num_attention_heads: int = 2
    """Heads of the temporal attention."""
    motion_norm_num_groups: int = 8
    """GroupNorm groups of the motion modules (must divide every block width)."""
    motion_max_seq_length: int = 32
    """Longest clip the motion modules' positional embedding takes."""
    steps: int = 20000
    """Optimizer steps."""
    batch_size: int = 16
    """Clips per step."""
    lr: float = 1e-4
    """AdamW learning rate (AnimateDiff: 1e-4)."""
    caption_dropout: float = 0.1
    """Fraction of captions replaced by "" (for CFG)."""
    motion_loss_weight: float = 0.0
    """Weight lambda of the frame-difference loss added to the epsilon loss: lambda min(SNR_t, 1)
    ||D x0_hat - D x0||^2, D the difference of consecutive frames (MCM's "diff" motion representation, applied to
    the teacher's own x0 prediction). Motion is a small part of a clip's pixels, so the plain epsilon loss barely
    rewards it; 0: AnimateDiff's plain epsilon loss."""
    train_cross_attention: bool = False
    """Also train the image UNet's cross-attention key/value projections (attn2.to_k / to_v), the path by which the
    motion words reach the features the motion modules see (the motion modules themselves take no text). False:
    AnimateDiff's recipe, the image UNet frozen."""
    timestep_power: float = 1.0
    """Training timesteps t = floor(T (1 - (1 - u)^b)), u uniform, b this power: 1 is AnimateDiff's uniform t; b > 1
    draws high noise more often, where a clip's motion is decided (Blattmann et al. 2023, SVD, shift their video
    training to more noise for the same reason); a share 2^(-1/b) of the steps is at t >= T/2 (b = 2: 71 %)."""
    motion_word_init: str = "mean"
    """Start of the motion words' new embedding rows: "mean" (every new row the mean of the image vocabulary's
    rows, so "clockwise", "counter" and "-" start identical) or "spread" (the mean plus Gaussian noise with the
    image rows' per-dimension spread, so the two directions' captions differ from the first step)."""
    embedding_lr: float | None = None
    """Learning rate of the motion words' embedding rows (None: `lr`)."""
    motion_aux_weight: float = 0.0
    """Weight of an auxiliary motion classifier: one linear head per spatial transformer of the image UNet reads its
    output (mean over pixels and frames) and predicts the clip's motion id (cross-entropy; captions dropped for CFG
    are left out). Its gradient reaches the motion words' rows (and the cross-attention when trained), so the
    features the motion modules see carry the caption's motion; the heads are training-only and not exported.
    0: off (AnimateDiff's recipe)."""
    probe_clips: int = 32
    """Training clips of the motion probe logged every `log_every` steps: ||D x0_hat - D x0||^2 / ||D x0||^2 at
    t = `probe_timestep` with fixed noise (1: no better than a still clip; 0: the motion predicted exactly); and,
    over the turning clips among them, the direction gain <D x0_hat(c) - D x0_hat(c'), D x0> / ||D x0||^2 with c'
    the caption with its direction swapped (0: the direction word is not read; 2: the turn predicted exactly and
    reversed by the swap). 0: off."""
    probe_timestep: int = 600
    """Timestep of the motion probe."""
    seed: int = 0
    """Seed of the data and the initialisation."""
    device: str = "cpu"
    """cpu or cuda (the clips are rendered and encoded there too)."""
    max_minutes: float | None = None
    """Wall-clock budget of the training steps, minutes: training stops after the first step past it and the teacher
    is written as after `steps` (its training_config.json says how many steps ran). For lent GPUs with a hard time
    limit. None: run all `steps`."""
    log_every: int = 50
    """Steps between log lines."""
    num_threads: int | None = None
    """torch.set_num_threads for CPU runs (None: leave torch's default)."""


def motion_adapter_for(unet: Any, config: VideoTeacherConfig) -> Any:
    """A fresh `MotionAdapter` matching the image UNet's blocks (zero-initialised output projections, as
    AnimateDiff's: the video UNet starts as the image UNet applied per frame)."""
    from diffusers import MotionAdapter

    layers = config.motion_layers_per_block or unet.config.layers_per_block
    adapter = MotionAdapter(
        block_out_channels=tuple(unet.config.block_out_channels),
        motion_layers_per_block=layers,
        motion_num_attention_heads=config.motion_num_attention_heads,
        motion_norm_num_groups=config.motion_norm_num_groups,
        motion_max_seq_length=config.motion_max_seq_length,
    )
    # diffusers builds the temporal transformers' `proj_out` with nn.Linear's default (random) init; AnimateDiff's
    # own code zero-initialises it (`zero_module`), so that each motion module is the identity (a residual of 0) and
    # the untrained video UNet is the image UNet applied frame by frame
    with torch.no_grad():
        for name, module in adapter.named_modules():
            if name.endswith("proj_out") and isinstance(module, torch.nn.Linear):
                module.weight.zero_()
                module.bias.zero_()
    return adapter


def extend_vocabulary(pipeline: Any, words: list[str]) -> list[int]:
    """Gives the pipeline's word tokenizer (`sdtoolkit.models.text`) single tokens for `words` (the motion phrases
    of the clip captions) and its text encoder an embedding row for each new token; existing tokens keep their ids'
    embeddings (copied by token string), new rows start at the mean embedding. Returns the new rows' ids (the only
    text-encoder weights the motion training updates)."""
    from sdtoolkit.models.text import build_word_tokenizer

    old = pipeline.tokenizer
    old_vocab = old.get_vocab()
    words = sorted(set(old_vocab_words(old_vocab)) | set(words))
    tokenizer = build_word_tokenizer([" ".join(words)], model_max_length=old.model_max_length)
    embedding = pipeline.text_encoder.get_input_embeddings()
    weight = embedding.weight.data
    vocab = tokenizer.get_vocab()
    rows = weight.mean(0, keepdim=True).repeat(len(vocab), 1)
    new = []
    for token, index in vocab.items():
        if token in old_vocab:
            rows[index] = weight[old_vocab[token]]
        else:
            new.append(index)
    pipeline.text_encoder.resize_token_embeddings(len(vocab))
    pipeline.text_encoder.get_input_embeddings().weight.data.copy_(rows)
    pipeline.text_encoder.config.vocab_size = len(vocab)
    pipeline.tokenizer = tokenizer
    pipeline.register_modules(tokenizer=tokenizer)
    return new


def old_vocab_words(vocab: dict[str, int]) -> list[str]:
    """The whole words of a word tokenizer's vocabulary (its word-final tokens)."""
    return [t[: -len("</w>")] for t in vocab if t.endswith("</w>") and len(t) > len("a</w>")] + ["a"]


def video_pipeline(image_pipeline: Any, adapter: Any, scheduler: Any | None = None) -> Any:
    """A stock `AnimateDiffPipeline` of the image pipeline's components plus `adapter`."""
    from diffusers import AnimateDiffPipeline

    return AnimateDiffPipeline(
        vae=image_pipeline.vae,
        text_encoder=image_pipeline.text_encoder,
        tokenizer=image_pipeline.tokenizer,
        unet=image_pipeline.unet,
        motion_adapter=adapter,
        scheduler=scheduler or image_pipeline.scheduler,
    )


def max_frames(pipeline: Any) -> int:
    """The longest clip the pipeline's motion modules take (their positional embedding's length)."""
    unet = getattr(pipeline, "unet", pipeline)
    return int(unet.config.get("motion_max_seq_length", 32))


@torch.no_grad()
def encode_clips(pipeline: Any, frames: torch.Tensor) -> torch.Tensor:
    """Clips `[N, F, 3, H, W]` in [-1, 1] -> scaled latents `[N, C, F, h, w]` (posterior means)."""
    vae = pipeline.vae
    n, num_frames = frames.shape[:2]
    flat = frames.reshape(n * num_frames, *frames.shape[2:]).to(vae.device, vae.dtype)
    latents = vae.encode(flat).latent_dist.mean * vae.config.scaling_factor
    return latents.reshape(n, num_frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4).float()


def frame_differences(x: torch.Tensor) -> torch.Tensor:
    """D x: differences of consecutive frames of video latents `[N, C, F, h, w]` -> `[N, C, F - 1, h, w]`."""
    return x[:, :, 1:] - x[:, :, :-1]


def frame_difference_loss(eps_hat: torch.Tensor, eps: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
    """min(SNR_t, 1) ||D x0_hat - D x0||^2, averaged over elements and the batch.

    With x0_hat - x0 = -(sigma_t / alpha_t) (eps_hat - eps) = -(eps_hat - eps) / sqrt(SNR_t) this is
    min(1, 1 / SNR_t) ||D eps_hat - D eps||^2: at high noise (SNR < 1) the x0-space frame-difference error weighted
    by SNR as the epsilon loss weights x0 errors, at low noise (where each noisy frame shows its own motion) damped
    by 1 / SNR (Min-SNR weighting, Hang et al. 2023, with gamma 1). `snr` (the schedule's `snr(t)`) broadcasts
    `[N, 1, 1, 1, 1]`."""
    weight = snr.clamp(max=1.0) / snr  # min(SNR, 1) * (1 / SNR): the x0 -> epsilon factor
    error = frame_differences(eps_hat.float() - eps.float())
    return (weight * error.pow(2)).mean()


def direction_gain(change: torch.Tensor, swapped: torch.Tensor, target: torch.Tensor) -> float:
    """<D x0_hat(c) - D x0_hat(c'), D x0> / ||D x0||^2: how far swapping the caption's turning direction (c -> c')
    moves the predicted frame changes `change` -> `swapped` against the true ones `target` (all `[N, C, F - 1, h, w]`).
    0: the direction word is not read; 2: the turn predicted exactly and exactly reversed by the swap."""
    return float(((change - swapped) * target).sum() / target.pow(2).sum())


def spread_rows(weight: torch.Tensor, rows: list[int], old_rows: list[int], seed: int) -> None:
    """`VideoTeacherConfig.motion_word_init` "spread": each of `rows` becomes the mean of `old_rows` plus Gaussian
    noise with their per-dimension standard deviation (in place)."""
    old = weight[old_rows]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(rows), weight.shape[1], generator=generator).to(weight)
    weight[rows] = old.mean(0) + noise * old.std(0)


class MotionHeads(torch.nn.Module):
    """`VideoTeacherConfig.motion_aux_weight`'s training-only classifier: a linear head per spatial transformer of a
    `UNetMotionModel` reads that block's output, averaged over pixels and frames, and predicts the clip's motion
    (an index into `sdtoolkit.data.clips.MOTIONS`). Forward hooks collect the outputs of the UNet's calls made with
    autograd on."""

    def __init__(self, unet: Any, num_classes: int):
        super().__init__()
        blocks = [
            a for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) for a in getattr(b, "attentions", [])
        ]
        self.heads = torch.nn.ModuleList(torch.nn.Linear(b.config.in_channels, num_classes) for b in blocks)
        self.outputs: list[torch.Tensor] = []
        self.hooks = [b.register_forward_hook(self._keep) for b in blocks]

    def _keep(self, module, inputs, output) -> None:
        if torch.is_grad_enabled():  # training calls only (not the no-grad probe or sampling)
            self.outputs.append(output[0] if isinstance(output, tuple) else output.sample)

    def loss(self, motion: torch.Tensor, num_frames: int, keep: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of every head on the clips where `keep` (the outputs of the last UNet call; cleared)."""
        outputs, self.outputs = self.outputs, []
        total = torch.zeros((), device=motion.device)
        for head, out in zip(self.heads, outputs):
            pooled = out.float().mean(dim=(2, 3)).reshape(len(motion), num_frames, -1).mean(1)
            total = total + F.cross_entropy(head(pooled)[keep], motion[keep])
        return total / len(self.heads)

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def sample_timesteps(n: int, num_train_timesteps: int, power: float, device: Any = "cpu") -> torch.Tensor:
    """`VideoTeacherConfig.timestep_power`'s draw: t = floor(T (1 - (1 - u)^b)) in [0, T - 1], u ~ U[0, 1)."""
    u = torch.rand(n, device=device)
    t = (num_train_timesteps * (1 - (1 - u) ** power)).long()
    return t.clamp(0, num_train_timesteps - 1)


def clip_config(config: VideoTeacherConfig) -> ClipConfig:
    """The `ClipConfig` of the teacher's training clips."""
    return ClipConfig(
        config.num_frames, config.resolution, turn_deg=config.turn_deg, bob_amplitude=config.bob_amplitude
    )


def train_video_teacher(config: VideoTeacherConfig, output: str | Path) -> Path:
    """Trains the motion modules on procedural clips and writes the AnimateDiffPipeline folder `output`."""
    from tqdm.auto import tqdm

    from sdtoolkit.models.loading import load_teacher_pipeline

    output = Path(output)
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    if config.motion_word_init not in ("mean", "spread"):
        raise ValueError(f"motion_word_init {config.motion_word_init!r}: valid: mean, spread")
    if config.motion_word_init == "spread" and config.init_from is not None:
        raise ValueError("motion_word_init 'spread' with init_from: the motion words' rows come from that folder")
    image = load_teacher_pipeline(config.image_teacher)
    if config.num_frames > config.motion_max_seq_length:
        raise ValueError(f"num_frames {config.num_frames} > motion_max_seq_length {config.motion_max_seq_length}")
    from sdtoolkit.data.clips import CLIP_VOCABULARY, MOTIONS, swap_direction

    if config.init_from is not None:
        from diffusers import AnimateDiffPipeline

        old_vocab = image.tokenizer.get_vocab()
        pipe = AnimateDiffPipeline.from_pretrained(config.init_from).to(config.device)
        new_rows = [i for token, i in pipe.tokenizer.get_vocab().items() if token not in old_vocab]
        if config.num_frames > max_frames(pipe):
            raise ValueError(f"num_frames {config.num_frames} > {config.init_from}'s motion_max_seq_length")
    else:
        new_rows = extend_vocabulary(image, CLIP_VOCABULARY)
        if config.motion_word_init == "spread":
            old_rows = sorted(set(image.tokenizer.get_vocab().values()) - set(new_rows))
            with torch.no_grad():
                spread_rows(image.text_encoder.get_input_embeddings().weight, new_rows, old_rows, config.seed)
        pipe = video_pipeline(image, motion_adapter_for(image.unet, config)).to(config.device)
    unet = pipe.unet
    unet.freeze_unet2d_params()
    if config.train_cross_attention:
        for name, p in unet.named_parameters():
            if ".attn2.to_k." in name or ".attn2.to_v." in name:
                p.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    heads = None
    if config.motion_aux_weight > 0:
        heads = MotionHeads(unet, len(MOTIONS)).to(config.device)
        params += list(heads.parameters())
    # the motion words' new embedding rows train too (the rest of the text encoder stays frozen)
    pipe.text_encoder.requires_grad_(False)
    token_embedding = pipe.text_encoder.get_input_embeddings().weight
    token_embedding.requires_grad_(True)
    keep = torch.ones(token_embedding.shape[0], 1, device=token_embedding.device)
    keep[new_rows] = 0.0
    token_embedding.register_hook(lambda grad: grad * (1 - keep))
    # no weight decay on the embedding matrix: AdamW's decoupled decay would shrink the frozen rows too
    embedding_lr = config.lr if config.embedding_lr is None else config.embedding_lr
    groups = [{"params": params}, {"params": [token_embedding], "weight_decay": 0.0, "lr": embedding_lr}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    print(f"rendering {config.num_clips} clips of {config.num_frames} frames at {config.resolution} px", flush=True)
    clips = ClipDataset(config.num_clips, config.seed, clip_config(config), device=config.device)
    chunk = 16 if str(config.device).startswith("cuda") else 1
    with torch.no_grad():
        encoded = [
            encode_clips(pipe, clips.frames[i : i + chunk].float() / 127.5 - 1.0)
            for i in tqdm(range(0, len(clips), chunk), desc=f"encode clips ({chunk} a call)", unit="call")
        ]
    latents = torch.cat(encoded).to(config.device)  # [N, C, F, h, w], on the training device
    captions = clips.captions
    unique = list(dict.fromkeys(captions))
    index = {c: i for i, c in enumerate(unique)}
    rows = torch.tensor([index[c] for c in captions])
    motions = clips.params["motion"].long()

    def encode(prompts: list[str]) -> torch.Tensor:
        ids = pipe.tokenizer(
            prompts,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(pipe.device)
        return pipe.text_encoder(ids)[0]

    scheduler = pipe.scheduler
    schedule = VPSchedule.from_config(scheduler.config)  # the toolkit's one VP schedule (alpha_t, sigma_t, SNR)
    probe = None
    if config.probe_clips > 0:
        generator = torch.Generator().manual_seed(config.seed + 1)
        n = min(config.probe_clips, len(rows))
        x0 = latents[:n]
        t = torch.full((n,), config.probe_timestep, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator)
        probe = (schedule.add_noise(x0, noise, t), t, x0, [unique[int(r)] for r in rows[:n]])

    @torch.no_grad()
    def motion_probe() -> dict:
        """The probe clips' motion probe and direction gain (`VideoTeacherConfig.probe_clips`)."""
        x_t, t, x0, prompts = probe

        def frame_change(captions: list[str]) -> torch.Tensor:
            states = encode(captions).repeat_interleave(x0.shape[2], dim=0)
            eps_hat = unet(x_t.to(config.device), t.to(config.device), encoder_hidden_states=states).sample.cpu()
            coefficients = Coefficients(*schedule.coefficients(t, x_t.ndim))
            return frame_differences(to_x0_eps(eps_hat, x_t, "epsilon", coefficients)[0])

        target = frame_differences(x0)
        change = frame_change(prompts)
        entry = {"motion_probe": float((change - target).pow(2).sum() / target.pow(2).sum())}
        turning = [i for i, c in enumerate(prompts) if swap_direction(c) != c]
        if turning:
            swapped = frame_change([swap_direction(c) for c in prompts])[turning]
            aim = target[turning]
            entry["direction_gain"] = direction_gain(change[turning], swapped, aim)
        return entry

    log, started = [], time.perf_counter()
    if probe is not None:  # fresh motion modules (zero-initialised): the per-frame image teacher's figure
        unet.eval()
        log.append({"step": 0, **motion_probe(), "seconds": 0.0})
    unet.train()
    bar = tqdm(total=config.steps, desc="motion modules", unit="step", smoothing=0.05)
    deadline = None if config.max_minutes is None else time.perf_counter() + 60 * config.max_minutes
    steps_done = 0
    for step in range(1, config.steps + 1):
        pick = torch.randint(len(rows), (config.batch_size,))
        x0 = latents[pick.to(latents.device)]
        drop = torch.rand(config.batch_size) < config.caption_dropout
        cond = encode(["" if d else unique[int(r)] for d, r in zip(drop.tolist(), rows[pick].tolist())])
        t = sample_timesteps(
            config.batch_size, scheduler.config.num_train_timesteps, config.timestep_power, config.device
        )
        noise = torch.randn_like(x0)
        x_t = schedule.add_noise(x0, noise, t)
        states = cond.repeat_interleave(x0.shape[2], dim=0)
        if heads is not None:
            heads.outputs.clear()
        pred = unet(x_t, t, encoder_hidden_states=states).sample
        eps_loss = F.mse_loss(pred.float(), noise)
        motion_loss, aux_loss = torch.zeros(()), torch.zeros(())
        if config.motion_loss_weight > 0:
            motion_loss = frame_difference_loss(pred, noise, append_dims(schedule.snr(t), x0.ndim))
        if heads is not None and not drop.all():
            aux_loss = heads.loss(motions[pick].to(config.device), x0.shape[2], ~drop.to(config.device))
        loss = eps_loss + config.motion_loss_weight * motion_loss + config.motion_aux_weight * aux_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update(1)
        steps_done = step
        out_of_time = deadline is not None and time.perf_counter() >= deadline
        if step % config.log_every == 0 or step == config.steps or out_of_time:
            entry = {"step": step, "loss": float(loss.detach()), "eps_loss": float(eps_loss.detach())}
            entry["motion_loss"] = float(motion_loss.detach())
            if heads is not None:
                entry["aux_loss"] = float(aux_loss.detach())
            if probe is not None:
                unet.eval()
                entry.update(motion_probe())
                unet.train()
            entry["seconds"] = time.perf_counter() - started
            log.append(entry)
            rate = bar.format_dict.get("rate") or 0.0  # steps/s (None before tqdm has a rate)
            probe_text = f"{entry['motion_probe']:.3f}" if probe is not None else "-"
            gain = f"{entry['direction_gain']:.3f}" if "direction_gain" in entry else "-"
            bar.set_postfix(
                loss=f"{entry['loss']:.4f}", probe=probe_text, gain=gain, clips_s=f"{config.batch_size * rate:.1f}"
            )
        if out_of_time:
            print(f"max_minutes {config.max_minutes:g} reached after {step} of {config.steps} steps", flush=True)
            break
    bar.close()
    if heads is not None:
        heads.remove()  # training-only: the exported UNet carries no hooks
    bad = [name for name, p in unet.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad or not torch.isfinite(token_embedding).all():
        from sdtoolkit.runs import RunDiverged

        raise RunDiverged(
            f"training diverged (non-finite weights in {', '.join(bad[:3]) or 'the token embeddings'}); no teacher "
            f"was written to {output}: lower --lr and rerun"
        )
    unet.eval()
    output.mkdir(parents=True, exist_ok=True)
    pipe.to("cpu").save_pretrained(output, safe_serialization=True)
    record = {"config": asdict(config), "steps_done": steps_done, "log": log}
    (output / "training_config.json").write_text(json.dumps(record, indent=2))
    return output
