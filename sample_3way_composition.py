"""Sample the composition p(x | y_1, y_2, y_3) of three trained base models (docs/reference.md §1, §7).

By the chain rule log Q(y1, y2, y3 | x_t) = log Q(y1, y2 | x_t) + log Q(y3 | x_t, y1, y2):
the binary composition of (Y_1, Y_2) guided by the joint classifier with
GUIDANCE, plus GUIDANCE_3 * grad log Q(Y_3 | x_t, Y_1, Y_2) from the conditional
classifier. Labels are 1-based. Edit the globals or override them, e.g.
    python sample_3way_composition.py --y-1 1 --y-2 1 --y-3 1
Writes <OUT_DIR>/composition_<models>_y1-<Y_1>_y2-<Y_2>_y3-<Y_3>_g<GUIDANCE>_g<GUIDANCE_3>.png, .pt and
.json (..._s<SEED> for SEED > 0); samples of other settings under that name are replaced only with --overwrite.
"""
from artefacts import (CONDITIONAL_CLASSIFIER, REFERENCE_EPOCH, THREE_WAY_CLASSIFIER,
                       reference_classifier_checkpoint)
from cli import configure, run_main
from models.classifier_model import ThreeWayConditionalYClassifier, ThreeWayJointYClassifier
from sampling_scripts import sample_composition_to_disk

GEN_IDX_1 = "MN1"
GEN_IDX_2 = "MN2"
GEN_IDX_3 = "MN3"
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = REFERENCE_EPOCH
GEN_CKPT_PATH_1 = None  # a full path overrides GEN_CKPT_DIR/gen_{GEN_IDX_1}_ckpt_{GEN_CKPT_EPOCH}.pth
GEN_CKPT_PATH_2 = None
GEN_CKPT_PATH_3 = None
CLASSIFIER_CKPT = reference_classifier_checkpoint(THREE_WAY_CLASSIFIER)
CONDITIONAL_CLASSIFIER_CKPT = reference_classifier_checkpoint(CONDITIONAL_CLASSIFIER)
Y_1 = 1
Y_2 = 2
GUIDANCE = 10.0  # joint classifier's scale (reference: 10)
Y_3 = 3
GUIDANCE_3 = 75.0  # conditional classifier's scale (reference: 75)
NUM_SAMPLES = 64
BATCH_SIZE = 64
NUM_STEPS = 500
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the reference's predictor-corrector; "heun" (ODE) or "heun-churn" (stochastic) need far fewer steps
SIGMA_MIN = 0.05  # heun, heun-churn: the last noise level of the grid (a denoising step follows with DENOISE_LAST_STEP)
CHURN = 40.0  # heun-churn: the noise each step adds back (EDM's S_churn; gamma = min(CHURN / NUM_STEPS, sqrt 2 - 1))
SEED = 0
PALETTE = "rgb"  # or "colorblind", the reference figures' palette
OUT_DIR = "outputs"
OVERWRITE = False
DEVICE = "auto"
THREADS = 0
COMPILE = False  # torch.compile the score networks (float32; pays off from a few hundred steps)
PRECISION = "float32"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively
DENOISE_LAST_STEP = False  # True: end with a denoising step, not the reference's last Euler step
# (cleaner backgrounds, fewer malformed digits; README, "The last step")
FORCE = False  # use classifiers trained on other base models than these (the .json records it)


def main(argv=None):
    config = configure(globals(), argv)
    labels = [1, 2, 3]
    return sample_composition_to_disk(
        config, [config[f"GEN_IDX_{k}"] for k in labels],
        [(config["CLASSIFIER_CKPT"], ThreeWayJointYClassifier, "train_3way_classifier.py"),
         (config["CONDITIONAL_CLASSIFIER_CKPT"], ThreeWayConditionalYClassifier,
          "train_3way_conditional_classifier.py")],
        [config[f"Y_{k}"] for k in labels], [config["GUIDANCE"], config["GUIDANCE_3"]])


if __name__ == "__main__":
    run_main(main)
