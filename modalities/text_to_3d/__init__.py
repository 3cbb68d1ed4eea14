"""Text-to-3D by score distillation (DreamFusion) with the image model as the prior.

``cameras`` (orbit cameras, rays, view-dependent prompt suffixes), ``fields`` (voxel grid, NeRF MLP),
``render`` (differentiable volume rendering with albedo / Lambertian / textureless shading), ``primitives``
and ``data`` (the primitive_views set the prior trains on, drawn by the same renderer), ``metrics`` (its
judge), ``distill`` (the SDS loop), ``export`` (meshes, field files, turntables).
"""
