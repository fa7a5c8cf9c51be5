"""The core every trainer and 3D optimizer shares: the `Denoiser` (any diffusers UNet/transformer behind one
adapter per model family), noise schedules and their time grids, prediction types, classifier-free guidance
(`cfg`), attention kernels, EMA, LoRA adapter switching and teacher offload, consistency-model maths
(`consistency`), the one multistep student sampler (`sampling`), feature hooks (`features`) and the registry
pattern for pluggable kinds (`registry`)."""
