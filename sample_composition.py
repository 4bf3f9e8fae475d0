"""Sample the composition p(x | y_1, y_2) of two trained base models (docs/reference.md §7).

The composite score is sum_i P(y1 = i | x_t) s_i(x_t) + GUIDANCE * grad log Q(y_1, y_2 | x_t),
with Q the joint classifier from train_classifier.py. Labels are 1-based:
(1, 2) is the harmonic mean p1 ⊗ p2, (1, 1) the contrast p1 ◑ p2, (2, 2) the
contrast the other way round. Edit the globals or override them, e.g.
    python sample_composition.py --y-1 1 --y-2 2
    python sample_composition.py --gen-idx-1 1 --gen-idx-2 2 --classifier-ckpt checkpoints/<1-vs-2 classifier>.pth
Writes <OUT_DIR>/composition_<GEN_IDX_1>_<GEN_IDX_2>_y1-<Y_1>_y2-<Y_2>_g<GUIDANCE>.png, .pt and .json
(..._s<SEED> for SEED > 0); samples of other settings under that name are replaced only with --overwrite.
"""
from artefacts import JOINT_CLASSIFIER, REFERENCE_EPOCH, reference_classifier_checkpoint
from cli import configure, run_main
from models.classifier_model import JointYClassifier
from sampling_scripts import sample_composition_to_disk

GEN_IDX_1 = "M1"
GEN_IDX_2 = "M2"
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = REFERENCE_EPOCH
GEN_CKPT_PATH_1 = None  # a full path overrides GEN_CKPT_DIR/gen_{GEN_IDX_1}_ckpt_{GEN_CKPT_EPOCH}.pth
GEN_CKPT_PATH_2 = None
CLASSIFIER_CKPT = reference_classifier_checkpoint(JOINT_CLASSIFIER)  # must be trained on GEN_IDX_1 vs GEN_IDX_2
Y_1 = 1
Y_2 = 1
GUIDANCE = 20.0  # 1 = the exact composition; the reference samples with 20
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
    return sample_composition_to_disk(config, [config["GEN_IDX_1"], config["GEN_IDX_2"]],
                                      [(config["CLASSIFIER_CKPT"], JointYClassifier, "train_classifier.py")],
                                      [config["Y_1"], config["Y_2"]], [config["GUIDANCE"]])


if __name__ == "__main__":
    run_main(main)
