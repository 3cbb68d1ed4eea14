"""3D shapes: point-cloud latents (LION-style) and SDF latents with mesh extraction."""
