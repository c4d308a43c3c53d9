"""DiffFlow on CIFAR-10 from the parts: the official configuration "B", written out.

    python examples/diffflow_cifar.py --data-dir data/ --out runs/example-cifar
    python examples/diffflow_cifar.py --smoke          # tiny nets, generated images, seconds

The parts below are those of the official recipe (DESIGN §4, "B"): DDPM U-Nets for the drift
(128 channels) and the score (64), g = 1, the S-curve grid on [1e-3, 0.05] drawn at random
every step with N stepped 5 -> 75, Adam 2e-4, clipping 1.0, EMA 0.999 after 10 updates, the
memory-saving stochastic adjoint. To reproduce the paper, run the recipe itself, which also
follows the official details this page leaves out (fp16 with a gradient scaler, the clipped
time input of the networks, torchrun, evaluation):

    sdeflow train --preset cifar-b --data-dir data/ --out runs/cifar-b
    sdeflow evaluate runs/cifar-b
"""

import argparse
import functools
from pathlib import Path

import torch

from sdeflow import StandardNormal, StochasticAdjoint, TimeGrid
from sdeflow.data import load_cifar10, write_tiny_cifar10_archive
from sdeflow.nets import UNet
from sdeflow.plotting import save_image_grid
from sdeflow.runs import ImageBatches
from sdeflow.training import (
    Checkpointing,
    DiffFlowModel,
    EMAConfig,
    Optimization,
    SteppedSteps,
    TensorBatches,
    Trainer,
)

parser = argparse.ArgumentParser()
parser.add_argument("--data-dir", type=Path, default=None)
parser.add_argument("--out", type=Path, default=Path("runs/example-cifar"))
parser.add_argument("--steps", type=int, default=50_000)
parser.add_argument("--smoke", action="store_true")
args = parser.parse_args()
torch.manual_seed(0)

# Data: raw uint8 images; batches map them to [-1, 1] (x = 2k/255 - 1) with random flips.
if args.smoke and args.data_dir is None:  # a tiny archive in the real format
    args.data_dir = args.out / "data"
    args.data_dir.mkdir(parents=True, exist_ok=True)
    write_tiny_cifar10_archive(args.data_dir, n_train=32, n_test=8)
images, _ = load_cifar10(args.data_dir, train=True, verify=not args.smoke, download=False)
batch = 4 if args.smoke else 100
data = ImageBatches(TensorBatches(images, batch, seed=1), dequantize=False, random_flip=True)

# The parts: two U-Nets (drift f and score s), the S-curve grid of N steps, N stepped during
# training, the forward SDE dx = f dt + g dw with g = 1, the reverse SDE, a standard normal
# prior, and the trajectory KL differentiated by the stochastic adjoint.
unet = (dict(ch_mult=(1, 2), num_res_blocks=1) if args.smoke else
        dict(ch_mult=(1, 2, 2, 2), num_res_blocks=2))
drift = UNet(3, ch=8 if args.smoke else 128, attn_resolutions=(16,), dropout=0.1,
             time_scale=1.0, **unet)
score = UNet(3, ch=8 if args.smoke else 64, attn_resolutions=(16,), dropout=0.1,
             time_scale=1.0, **unet)
grids = functools.partial(TimeGrid.s_curve, t0=1e-3, t1=0.05)  # n -> the S-curve grid
steps_of_n = (SteppedSteps([2, 3], [2]) if args.smoke else
              SteppedSteps([5, 10, 20, 30, 50, 75], [5000, 15000, 20000, 25000, 30000]))
model = DiffFlowModel(
    drift, score, 1.0, grids, StandardNormal((3, 32, 32)), progressive=steps_of_n,
    jitter=functools.partial(TimeGrid.s_curve_random, t0=1e-3, t1=0.05),
    gradient=StochasticAdjoint(), sample_grid=grids(4 if args.smoke else 100))

trainer = Trainer(
    model, data, steps=4 if args.smoke else args.steps,
    optimization=Optimization(lr=2e-4, grad_clip=1.0),
    ema=EMAConfig(0.999, warmup=False, start=10),
    checkpointing=Checkpointing(every=5000), out_dir=args.out, device="cpu" if args.smoke
    else None)
trainer.fit(resume=True)  # a re-run continues from the checkpoint

samples = trainer.eval_model.eval().sample(16 if args.smoke else 64)
save_image_grid(samples, args.out / "samples.png")
print(f"trained {trainer.step} steps; wrote {args.out}/samples.png")
