"""Sample the composition p(x | y_1, y_2) of two trained base models (docs/reference.md §7).

The composite score is sum_i P(y1 = i | x_t) s_i(x_t) + GUIDANCE * grad log Q(y_1, y_2 | x_t),
with Q the joint classifier from train_classifier.py. Labels are 1-based:
(1, 2) is the harmonic mean p1 ⊗ p2, (1, 1) the contrast p1 ◑ p2, (2, 2) the
contrast the other way round. Edit the globals or override them, e.g.
    python sample_composition.py --y-1 1 --y-2 2
    python sample_composition.py --gen-idx-1 1 --gen-idx-2 2 --classifier-ckpt checkpoints/<1-vs-2 classifier>.pth
A model may be a composite of two base models (sculpting/composites.py), which chains compositions: MN1 with the
harmonic mean of MN2 and MN3, under the chain classifier train_classifier.py trains on MN1 against MN2xMN3:
    python sample_composition.py --gen-idx-1 MN1 --gen-idx-2 MN2xMN3 --y-1 1 --y-2 2 \
        --classifier-ckpt runs/chains/chain_MN1_MN2xMN3_ckpt_200.pth --composite-classifier-dir runs/chains
The composition is built in main(), in plain view: edit those lines to compose otherwise.
Writes <OUT_DIR>/composition_<GEN_IDX_1>_<GEN_IDX_2>_y1-<Y_1>_y2-<Y_2>_g<GUIDANCE>.png, .pt and .json
(..._s<SEED> for SEED > 0); samples of other settings under that name are replaced only with --overwrite.
"""
from sculpting.artefacts import JOINT_CLASSIFIER, REFERENCE_EPOCH, composition_stem, reference_classifier_checkpoint
from sculpting.checkpoints import check_composition_provenance, load_classifier
from sculpting.cli import configure, run_main
from models.classifier_model import JointYClassifier
from models.compositions import BinaryDiffusionComposition
from sculpting.sampling import base_model_paths, composition_record, sample_run
from sculpting.targets import validate_composition

GEN_IDX_1 = "M1"
GEN_IDX_2 = "M2"
CLASSIFIER_CKPT = reference_classifier_checkpoint(JOINT_CLASSIFIER)  # must be trained on GEN_IDX_1 vs GEN_IDX_2
Y_1 = 1
Y_2 = 1
GUIDANCE = 20.0  # 1 = the exact composition; the reference samples with 20
NUM_SAMPLES = 64
NUM_STEPS = 500
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the reference's predictor-corrector; "heun" (ODE) or "heun-churn" (stochastic) need far fewer steps
SEED = 0
COMPOSITE_GUIDANCE = 20.0  # the guidance inside a composite model (GEN_IDX_2 = MN2xMN3, MN2-MN3, ...)

# ---- engineering settings: how and where it runs, not what it samples ----
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = REFERENCE_EPOCH
GEN_CKPT_PATH_1 = None  # a full path overrides GEN_CKPT_DIR/gen_{GEN_IDX_1}_ckpt_{GEN_CKPT_EPOCH}.pth
GEN_CKPT_PATH_2 = None
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
    models, observations, scales = [s["GEN_IDX_1"], s["GEN_IDX_2"]], [s["Y_1"], s["Y_2"]], [s["GUIDANCE"]]
    validate_composition(models, observations)
    run = sample_run(s)

    # Load the base models and the joint classifier Q(y1, y2 | x_t) trained on their trajectories.
    checkpoints = base_model_paths(models, s["GEN_CKPT_DIR"], s["GEN_CKPT_EPOCH"],
                                   [s["GEN_CKPT_PATH_1"], s["GEN_CKPT_PATH_2"]], s)
    base_models = run.load_base_models(models, checkpoints, s["FORCE"])
    classifier = load_classifier(s["CLASSIFIER_CKPT"], JointYClassifier, run.device, "train_classifier.py")
    mismatch = check_composition_provenance([s["CLASSIFIER_CKPT"]], list(zip(models, checkpoints)), s["FORCE"])

    # The composition (edit here): the base scores weighted by P(y1 = i | x_t), plus GUIDANCE * grad log Q(y1, y2 | x_t).
    composition = BinaryDiffusionComposition(base_models, classifier, s["Y_1"], s["Y_2"], guidance_scale=s["GUIDANCE"])

    # Sample it and write the PNG, the samples (.pt) and what was sampled (.json).
    record = composition_record(models, observations, scales, checkpoints, [s["CLASSIFIER_CKPT"]], mismatch)
    return run.sample_to_disk(composition, base_models, composition_stem(models, observations, scales, run.seed),
                              record)


if __name__ == "__main__":
    run_main(main)
