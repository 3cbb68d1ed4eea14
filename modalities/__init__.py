"""Per-modality packages (images, video, meshes, molecules, ...) built on the shared core."""
