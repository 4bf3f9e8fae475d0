"""Sample the composition p(x | y_1, y_2, y_3) of three trained base models (docs/reference.md §1, §7).

By the chain rule log Q(y1, y2, y3 | x_t) = log Q(y1, y2 | x_t) + log Q(y3 | x_t, y1, y2):
the binary composition of (Y_1, Y_2) guided by the joint classifier with
GUIDANCE, plus GUIDANCE_3 * grad log Q(Y_3 | x_t, Y_1, Y_2) from the conditional
classifier. Labels are 1-based. Edit the globals or override them, e.g.
    python sample_3way_composition.py --y-1 1 --y-2 1 --y-3 1
The composition is built in main(), in plain view: edit those lines to compose otherwise.
Writes <OUT_DIR>/composition_<models>_y1-<Y_1>_y2-<Y_2>_y3-<Y_3>_g<GUIDANCE>_g<GUIDANCE_3>.png, .pt and
.json (..._s<SEED> for SEED > 0); samples of other settings under that name are replaced only with --overwrite.
"""
from sculpting.artefacts import (CONDITIONAL_CLASSIFIER, REFERENCE_EPOCH, THREE_WAY_CLASSIFIER, composition_stem,
                       reference_classifier_checkpoint)
from sculpting.checkpoints import check_composition_provenance, load_classifier
from sculpting.cli import configure, run_main
from models.classifier_model import ThreeWayConditionalYClassifier, ThreeWayJointYClassifier
from models.compositions import BinaryDiffusionComposition, ConditionalDiffusionComposition
from sculpting.sampling import base_model_paths, composition_record, sample_run
from sculpting.targets import validate_composition

GEN_IDX_1 = "MN1"
GEN_IDX_2 = "MN2"
GEN_IDX_3 = "MN3"
CLASSIFIER_CKPT = reference_classifier_checkpoint(THREE_WAY_CLASSIFIER)
CONDITIONAL_CLASSIFIER_CKPT = reference_classifier_checkpoint(CONDITIONAL_CLASSIFIER)
Y_1 = 1
Y_2 = 2
GUIDANCE = 10.0  # joint classifier's scale (reference: 10)
Y_3 = 3
GUIDANCE_3 = 75.0  # conditional classifier's scale (reference: 75)
NUM_SAMPLES = 64
NUM_STEPS = 500
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the reference's predictor-corrector; "heun" (ODE) or "heun-churn" (stochastic) need far fewer steps
SEED = 0
COMPOSITE_GUIDANCE = 20.0  # the guidance inside a composite model (a GEN_IDX_k such as MN2xMN3)

# ---- engineering settings: how and where it runs, not what it samples ----
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = REFERENCE_EPOCH
GEN_CKPT_PATH_1 = None  # a full path overrides GEN_CKPT_DIR/gen_{GEN_IDX_1}_ckpt_{GEN_CKPT_EPOCH}.pth
GEN_CKPT_PATH_2 = None
GEN_CKPT_PATH_3 = None
COMPOSITE_CLASSIFIER_DIR = None  # a composite's pair classifier <name>_ckpt_200.pth is read here; None: GEN_CKPT_DIR
BATCH_SIZE = 64
SIGMA_MIN = 0.05  # heun, heun-churn: the last noise level of the grid (a denoising step follows with DENOISE_LAST_STEP)
CHURN = 40.0  # heun-churn: the noise each step adds back (EDM's S_churn; gamma = min(CHURN / NUM_STEPS, sqrt 2 - 1))
DENOISE_LAST_STEP = False  # True: end with a denoising step, not the reference's last Euler step (cleaner digits)
PRECISION = "float32"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively
COMPILE = "off"  # torch.compile the score networks: on, off, or auto (time both ways once, keep the faster)
DEVICE = "auto"
THREADS = 0
PALETTE = "rgb"  # or "colorblind", the reference figures' palette
OUT_DIR = "outputs"
OVERWRITE = False
FORCE = False  # use classifiers trained on other base models than these (the .json records it)


def main(argv=None):
    s = configure(globals(), argv)
    models = [s["GEN_IDX_1"], s["GEN_IDX_2"], s["GEN_IDX_3"]]
    observations, scales = [s["Y_1"], s["Y_2"], s["Y_3"]], [s["GUIDANCE"], s["GUIDANCE_3"]]
    validate_composition(models, observations)
    run = sample_run(s)

    # Load the base models, the joint classifier Q(y1, y2 | x_t) and the conditional one Q(y3 | x_t, y1, y2).
    checkpoints = base_model_paths(models, s["GEN_CKPT_DIR"], s["GEN_CKPT_EPOCH"],
                                   [s["GEN_CKPT_PATH_1"], s["GEN_CKPT_PATH_2"], s["GEN_CKPT_PATH_3"]], s)
    base_models = run.load_base_models(models, checkpoints, s["FORCE"])
    joint = load_classifier(s["CLASSIFIER_CKPT"], ThreeWayJointYClassifier, run.device, "train_3way_classifier.py")
    conditional = load_classifier(s["CONDITIONAL_CLASSIFIER_CKPT"], ThreeWayConditionalYClassifier, run.device,
                                  "train_3way_conditional_classifier.py")
    classifier_checkpoints = [s["CLASSIFIER_CKPT"], s["CONDITIONAL_CLASSIFIER_CKPT"]]
    mismatch = check_composition_provenance(classifier_checkpoints, list(zip(models, checkpoints)), s["FORCE"])

    # The composition (edit here), by the chain rule log Q(y1, y2, y3 | x_t) = log Q(y1, y2 | x_t) +
    # log Q(y3 | x_t, y1, y2): the binary composition of (Y_1, Y_2), then the conditional classifier's guidance.
    composition = BinaryDiffusionComposition(base_models, joint, s["Y_1"], s["Y_2"], guidance_scale=s["GUIDANCE"])
    composition = ConditionalDiffusionComposition(composition, conditional, s["Y_3"], guidance_scale=s["GUIDANCE_3"])

    # Sample it and write the PNG, the samples (.pt) and what was sampled (.json).
    record = composition_record(models, observations, scales, checkpoints, classifier_checkpoints, mismatch)
    return run.sample_to_disk(composition, base_models, composition_stem(models, observations, scales, run.seed),
                              record)


if __name__ == "__main__":
    run_main(main)
