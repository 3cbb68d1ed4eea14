"""What a denoiser is conditioned on: frozen text encoders, class labels, and classifier-free-guidance dropout."""
