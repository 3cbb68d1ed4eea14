"""The diffusion math, modality-agnostic: noise schedules, parameterizations, the denoiser, spaces, the forward
process, denoising score matching, the ELBO, samplers and guidance. Nothing here trains, reads files or knows a
modality."""
