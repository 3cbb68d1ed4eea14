"""mldm core: modality-agnostic diffusion math, contracts, training loop and CLI.

Nothing in this package knows about images, videos, shapes or molecules. Sub-packages: ``diffusion`` (the
math), ``first_stage`` (autoencoders), ``conditioning``, ``training`` (the engine and its stages), ``io``
(atomic files) and ``cli`` (the `mldm` command and its config layer).
"""
