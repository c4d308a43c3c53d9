"""The picture of docs/howto/conditional_generation.md: a conditional flow-matching model on the
checkerboard's two halves (class 0: x1 < 0, class 1: x1 >= 0), trained with condition dropout,
sampled per class at guidance scales 0, 1 and 3.

    taskset -c 1 python docs/howto/conditional_generation.py   # about three minutes on one core
"""

from pathlib import Path

import torch
from matplotlib.figure import Figure

from sdeflow import LinearPath, TimeGrid
from sdeflow.data import load_toy_labeled
from sdeflow.nets import ConditionalTimeMLP
from sdeflow.training import Logging, Optimization, PathMatchingModel, TensorBatches, Trainer

OUT = Path(__file__).resolve().parents[1] / "images" / "conditional_generation.png"
torch.manual_seed(0)
torch.set_num_threads(1)

(x, y), _, pre = load_toy_labeled("checkerboard", 200_000, 0, seed=0)
model = PathMatchingModel(ConditionalTimeMLP(2, width=128, depth=3, num_classes=2),
                          LinearPath(), TimeGrid.uniform(50, 0.0, 1.0), (2,), p_uncond=0.2)
trainer = Trainer(model, TensorBatches(x, 2048, labels=y), steps=12_000,
                  optimization=Optimization(lr=2e-3), logging=Logging(progress=True))
trainer.fit()
ema = trainer.eval_model.eval()

grid, n, scales = TimeGrid.uniform(100, 0.0, 1.0), 20_000, (0.0, 1.0, 3.0)
fig = Figure(figsize=(3.0 * len(scales), 6.0))
for row, cls in enumerate((0, 1)):
    for col, w in enumerate(scales):
        torch.manual_seed(1)
        s = pre.inverse(ema.sample(n, condition=torch.tensor(cls), guidance=w, grid=grid))
        in_class = float(((s[:, 0] >= 0).long() == cls).float().mean())
        ax = fig.add_subplot(2, len(scales), row * len(scales) + col + 1)
        ax.hist2d(s[:, 0].numpy(), s[:, 1].numpy(), bins=120, range=[[-4.5, 4.5]] * 2,
                  cmap="magma")
        ax.set_xticks([])
        ax.set_yticks([])
        label = "unconditional" if w == 0 else f"{100 * in_class:.1f}% in class"
        ax.set_title(f"y = {cls}, w = {w:g}: {label}", fontsize=9)
fig.suptitle("conditional flow matching on the checkerboard's halves, guidance scale w",
             fontsize=10)
fig.tight_layout()
fig.savefig(OUT, dpi=110)
print(f"wrote {OUT}")
