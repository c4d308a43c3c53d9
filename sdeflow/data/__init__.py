r"""Data: DiffFlow's 2D toy sets with their preprocessing, CIFAR-10 from the standard
python-format archive, and scikit-learn's 8x8 digits, with the bits/dim conventions of
quantized images; labelled 2D sets for conditional models.
"""

from .cifar10 import CIFAR10, CIFAR10_MD5, CIFAR10_URL, load_cifar10, write_tiny_cifar10_archive
from .digits import Digits, dequantize
from .labeled import TOY_LABELS, load_toy_labeled, toy_labels, two_gaussians
from .mnist import MNIST_MD5, MNIST_URL, load_mnist, write_tiny_mnist_archives
from .toy import TOY_DATASETS, ToyPreprocessor, load_toy, sample_toy

__all__ = [
    "CIFAR10",
    "CIFAR10_MD5",
    "CIFAR10_URL",
    "Digits",
    "MNIST_MD5",
    "MNIST_URL",
    "TOY_DATASETS",
    "TOY_LABELS",
    "ToyPreprocessor",
    "dequantize",
    "load_cifar10",
    "load_mnist",
    "load_toy",
    "load_toy_labeled",
    "sample_toy",
    "toy_labels",
    "two_gaussians",
    "write_tiny_cifar10_archive",
    "write_tiny_mnist_archives",
]
