"""Compositional sculpting at a glance: the paper figure's three compositions of the shipped base models, in one PNG.

M1 draws red and green 0s, M2 green 0s and 1s. Their harmonic mean M1 ⊗ M2 (y = 1, 2) keeps what both draw, the
contrast M1 ◑ M2 (y = 1, 1) what only M1 draws. MN1 draws green 0-3, MN2 red and green 0-1, MN3 red and green 0 and
2: the 3-way composition y = (1, 2, 3) keeps the one cell all three share, green 0.
    python example.py      # writes outputs/example.png
"""
from pathlib import Path

import matplotlib
import torch
from torchvision.utils import make_grid

from models.classifier_model import JointYClassifier, ThreeWayConditionalYClassifier, ThreeWayJointYClassifier
from models.compositions import BinaryDiffusionComposition, ConditionalDiffusionComposition
from samplers import Sampler, sample_in_batches
from sculpting.checkpoints import load_classifier, load_score_model
from sculpting.runtime import get_device
from sculpting.sde import VESDE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

SAMPLES = 16  # per composition
# The fast sampler: stochastic Heun on 40 noise levels, ending with a denoising step (79 score evaluations).
SAMPLER = Sampler("heun-churn", 40, denoise_last_step=True, sigma_min=0.05, churn=40.0)


def main():
    device, sde = get_device("auto"), VESDE()

    def base(name):
        return load_score_model(f"checkpoints/gen_{name}_ckpt_195.pth", sde, device, input_channels=3)

    def classifier(name, kind, trained_by):
        return load_classifier(f"checkpoints/{name}.pth", kind, device, trained_by)

    # Two base models and the joint classifier Q(y1, y2 | x_t) trained on their trajectories.
    m1, m2 = base("M1"), base("M2")
    pair = classifier("classifier_ckpt_200", JointYClassifier, "train_classifier.py")
    # Three base models, their joint classifier and the conditional one Q(y3 | x_t, y1, y2).
    mn = [base("MN1"), base("MN2"), base("MN3")]
    joint = classifier("3way_classifier_ckpt_700", ThreeWayJointYClassifier, "train_3way_classifier.py")
    conditional = classifier("3way_conditional_classifier_ckpt_200", ThreeWayConditionalYClassifier,
                             "train_3way_conditional_classifier.py")

    # The compositions, at the reference's guidance scales.
    compositions = {
        "M1 ⊗ M2, y = (1, 2): green 0": BinaryDiffusionComposition([m1, m2], pair, 1, 2, guidance_scale=20.0),
        "M1 ◑ M2, y = (1, 1): red 0": BinaryDiffusionComposition([m1, m2], pair, 1, 1, guidance_scale=20.0),
        "MN1 ⊗ MN2 ⊗ MN3, y = (1, 2, 3): green 0": ConditionalDiffusionComposition(
            BinaryDiffusionComposition(mn, joint, 1, 2, guidance_scale=10.0), conditional, 3, guidance_scale=75.0),
    }

    # Sample each (seed 0) and draw the samples side by side.
    figure, axes = plt.subplots(1, len(compositions), figsize=(4 * len(compositions), 1.4))
    for axis, (title, composition) in zip(axes, compositions.items()):
        samples = sample_in_batches(composition, sde, SAMPLER, SAMPLES, SAMPLES, device, seed=0, progress=False)
        axis.imshow(make_grid(samples.cpu(), nrow=8, pad_value=1.0).permute(1, 2, 0).numpy())
        axis.set_title(title, fontsize=10)
        axis.axis("off")
    out = Path("outputs") / "example.png"
    out.parent.mkdir(exist_ok=True)
    figure.tight_layout()
    figure.savefig(out, dpi=120, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
