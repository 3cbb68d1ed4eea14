"""3D molecules: E(3)-equivariant latent diffusion (GeoLDM-style) on QM9."""
