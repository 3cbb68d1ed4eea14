"""The one training loop for every modality and both stages (autoencoder, latent diffusion)."""
