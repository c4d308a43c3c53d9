r"""Networks called as ``net(x, t)``: the Fourier-feature MLP of DiffFlow's 2D experiments, a
DDPM-style U-Net and the lucidrains-style U-Net (linear attention) for images, and the time
features/embeddings they share.

``t`` has shape ``()`` or ``(1,)`` (one time for the whole batch, evaluated once and broadcast)
or ``(B,)`` (one time per sample). :data:`NETS` names them for recipes
(:mod:`sdeflow.nets.registry`). The conditional MLPs (:class:`ConditionalFourierMLP`,
:class:`ConditionalTimeMLP`) are called ``net(x, t, condition)`` (:mod:`sdeflow.conditioning`).
"""

from .conditional import ConditionalFourierMLP, ConditionalTimeMLP, ConditionEmbedding
from .lucid_unet import LinearAttention, LucidUNet
from .mlp import ACTIVATIONS, FourierMLP, TimeMLP
from .registry import NETS
from .time import (
    FourierTimeFeatures,
    GaussianFourierFeatures,
    SinusoidalTimeEmbedding,
    time_batch,
)
from .unet import AttnBlock, ResBlock, UNet

__all__ = [
    "ACTIVATIONS",
    "AttnBlock",
    "ConditionEmbedding",
    "ConditionalFourierMLP",
    "ConditionalTimeMLP",
    "FourierMLP",
    "TimeMLP",
    "FourierTimeFeatures",
    "GaussianFourierFeatures",
    "LinearAttention",
    "LucidUNet",
    "NETS",
    "ResBlock",
    "SinusoidalTimeEmbedding",
    "UNet",
    "time_batch",
]
