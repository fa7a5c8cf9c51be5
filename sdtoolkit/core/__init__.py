"""The core every trainer and 3D optimizer shares: the `Denoiser` (any diffusers UNet/transformer behind one
adapter per model family), noise schedules and their time grids, prediction types, classifier-free guidance
(`cfg`), attention kernels, EMA, LoRA adapter switching and teacher offload."""
