"""Sample the composition p(x | y_1, y_2, y_3) of three trained base models (SPEC §1, §7).

By the chain rule log Q(y1, y2, y3 | x_t) = log Q(y1, y2 | x_t) + log Q(y3 | x_t, y1, y2):
the binary composition of (Y_1, Y_2) guided by the joint classifier with
GUIDANCE, plus GUIDANCE_3 * grad log Q(Y_3 | x_t, Y_1, Y_2) from the conditional
classifier. Labels are 1-based. Edit the globals or override them, e.g.
    python sample_3way_composition.py --y-1 1 --y-2 1 --y-3 1
Writes <OUT_DIR>/composition_<models>_y1-<Y_1>_y2-<Y_2>_y3-<Y_3>_g<GUIDANCE>_g<GUIDANCE_3>.png, .pt and .json.
"""
from cli import override_globals, run_main
from custom_datasets import BASE_DATASETS
from models.fast_paths import PRECISION_CHOICES
from models.classifier_model import ThreeWayConditionalYClassifier, ThreeWayJointYClassifier
from samplers import SAMPLERS
from utils import sample_composition_to_disk

GEN_IDX_1 = "MN1"
GEN_IDX_2 = "MN2"
GEN_IDX_3 = "MN3"
CKPT_DIR = "checkpoints"
CKPT_EPOCH = 195
CKPT_PATH_1 = None  # a full path overrides CKPT_DIR/gen_{GEN_IDX_1}_ckpt_{CKPT_EPOCH}.pth
CKPT_PATH_2 = None
CKPT_PATH_3 = None
CLASSIFIER_CKPT = "checkpoints/3way_classifier_ckpt_700.pth"
CONDITIONAL_CLASSIFIER_CKPT = "checkpoints/3way_conditional_classifier_ckpt_200.pth"
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
DEVICE = "auto"
COMPILE = False  # torch.compile the score networks (float32; pays off from a few hundred steps)
PRECISION = "float32"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively
DENOISE_LAST_STEP = False  # True: end with a denoising step, not the reference's last Euler step
# (cleaner backgrounds, fewer malformed digits; README, "The last step")

OVERRIDABLE = ["GEN_IDX_1", "GEN_IDX_2", "GEN_IDX_3", "CKPT_DIR", "CKPT_EPOCH", "CKPT_PATH_1", "CKPT_PATH_2",
               "CKPT_PATH_3", "CLASSIFIER_CKPT", "CONDITIONAL_CLASSIFIER_CKPT", "Y_1", "Y_2", "GUIDANCE", "Y_3",
               "GUIDANCE_3", "NUM_SAMPLES", "BATCH_SIZE", "NUM_STEPS", "SNR", "SAMPLER", "SIGMA_MIN", "CHURN", "SEED", "PALETTE", "OUT_DIR", "DEVICE",
               "COMPILE", "PRECISION", "DENOISE_LAST_STEP"]


def main(argv=None):
    config = dict(globals())
    labels = [1, 2, 3]
    override_globals(config, OVERRIDABLE, __doc__, argv,
                     positive=["CKPT_EPOCH", "NUM_SAMPLES", "BATCH_SIZE", "NUM_STEPS", "SNR"],
                     choices={**{f"GEN_IDX_{k}": list(BASE_DATASETS) for k in labels},
                              **{f"Y_{k}": labels for k in labels}, "PALETTE": ["rgb", "colorblind"],
                              "PRECISION": PRECISION_CHOICES, "SAMPLER": list(SAMPLERS)})
    return sample_composition_to_disk(
        config, [config[f"GEN_IDX_{k}"] for k in labels],
        [(config["CLASSIFIER_CKPT"], ThreeWayJointYClassifier, "train_3way_classifier.py"),
         (config["CONDITIONAL_CLASSIFIER_CKPT"], ThreeWayConditionalYClassifier,
          "train_3way_conditional_classifier.py")],
        [config[f"Y_{k}"] for k in labels], [config["GUIDANCE"], config["GUIDANCE_3"]])


if __name__ == "__main__":
    run_main(main)
