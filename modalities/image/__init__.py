"""Image modality: shapes2d data, the image autoencoders, backbone, metrics and exporter.

``data`` (Shapes2D, ImageFolder, collate), ``metrics`` (the shapes2d judge), ``export`` (sample
directories), ``autoencoder`` and ``backbones``. Modules are imported where used, not here.
"""
