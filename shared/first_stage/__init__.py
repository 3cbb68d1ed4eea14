"""The first stage of a latent diffusion model: the autoencoder contract and its adversarial training."""
