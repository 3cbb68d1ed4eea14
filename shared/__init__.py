"""mldm core: modality-agnostic diffusion math, contracts, training loop and CLI.

Nothing in this package knows about images, videos, shapes or molecules.
"""
