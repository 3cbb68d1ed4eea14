"""From a trained run's config to samples, for every modality: the configured sampler with its guidance and a
progress bar (``sampler.guided_sampler``)."""
