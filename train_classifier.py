"""Train the joint classifier Q(y1, y2 | x_t) of two base models on their sampling trajectories (docs/reference.md §6).

Reference defaults (M1 vs M2): 200 Adadelta steps (lr 1.0, decayed 0.97 per step), the first 100 on the
terminal loss only, fresh trajectories (128 per model, 500 PC steps) for every step, the bootstrap
target copied before every step, a test and a checkpoint classifier_ckpt_{step}.pth every 25 steps.
Also trains the grey subdigits pair: --gen-idx-1 1 --gen-idx-2 2 --classifier-name subdigits_classifier, and, with
a composite of two base models as a model (sculpting/composites.py), a chain classifier (docs/chains.md):
    python train_classifier.py --gen-idx-1 MN1 --gen-idx-2 MN2xMN3 --classifier-name chain_MN1_MN2xMN3 \
        --composite-classifier-dir runs/chains

CPU-scale example (a pool of trajectories reused for 100 steps, 100 sampler steps, a narrower trunk):
    python train_classifier.py --gen-ckpt-dir runs/cpu --gen-ckpt-epoch 11 --trajectory-steps 100 \
        --pool-size 256 --pool-reuse 100 --batch-size 64 --classifier-channels 16 32 --test-samples 100 \
        --test-every 50 --ckpt-every 50
(its cost and test accuracy on CPU-recipe base models: docs/performance.md). Checkpoints go to CKPT_DIR (runs/;
the shipped checkpoints/ is never written), each with <checkpoint>.provenance.json beside it: the base models
(names and SHA-256 of their checkpoints) it was trained on, which the sample scripts check. Every test is also
written to <CKPT_DIR>/<CLASSIFIER_NAME>_tests.json. Ctrl-C or SIGTERM stops after the current step, saving it.
"""
from sculpting.artefacts import JOINT_CLASSIFIER, REFERENCE_EPOCH, RUN_DIR
from sculpting.classifier_training import parse_config, train_joint_classifier
from sculpting.cli import run_main
from models.classifier_model import JointYClassifier

GEN_IDX_1 = "M1"
GEN_IDX_2 = "M2"
STEPS = 200
WARMUP_STEPS = 100  # terminal loss only for these first steps
STEP_FRACTION = 0.1  # share of the steps with t <= 0.7 the non-terminal loss trains on per optimizer step
BATCH_SIZE = 128  # trajectories per model in each optimizer step
POOL_SIZE = 128  # trajectories per model sampled at once (reference: = BATCH_SIZE)
POOL_REUSE = 1  # optimizer steps served by one pool before it is resampled (reference: 1)
TRAJECTORY_STEPS = 500  # sampler steps N (PC: grid times; heun*: noise levels)
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the trajectories' sampler (as the sample scripts' --sampler): "pc", "heun" or "heun-churn"
LR = 1.0
LR_DECAY = 0.97  # StepLR gamma per optimizer step; 1 = constant
TARGET_UPDATE_EVERY = 1  # copy the bootstrap target before every this many steps
TERMINAL_LOSS_SCALE = 1.0
CLASSIFIER_CHANNELS = [32, 64]
EMBED_DIM = 256
T_EMBED_DIM = 128
SEED = 0
COMPOSITE_GUIDANCE = 20.0  # the guidance inside a composite model (a GEN_IDX_k such as MN2xMN3)

# ---- engineering settings: how and where it runs, not what it samples ----
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = REFERENCE_EPOCH  # loads GEN_CKPT_DIR/gen_{GEN_IDX}_ckpt_{GEN_CKPT_EPOCH}.pth
COMPOSITE_CLASSIFIER_DIR = None  # a composite's pair classifier <name>_ckpt_200.pth is read here; None: GEN_CKPT_DIR
SIGMA_MIN = 0.05  # heun, heun-churn: the last noise level (as the sample scripts' --sigma-min)
CHURN = 40.0  # heun-churn: the noise each step adds back (as the sample scripts' --churn)
COMPILE = "off"  # sample trajectories with compiled score networks: on, off or auto (as the sample scripts')
PRECISION = "float32"  # "bfloat16" or "auto": sample trajectories under autocast (as the sample scripts' --precision)
DENOISE_LAST_STEP = False  # end each trajectory with a denoising step (as the sample scripts' --denoise-last-step)
TEST_EVERY = 25
TEST_SAMPLES = 300  # test trajectories per model, sampled once at the start
TEST_STEP_STRIDE = 10  # the test scores every this many grid steps and the terminal state
CKPT_EVERY = 25
CKPT_DIR = RUN_DIR
CLASSIFIER_NAME = JOINT_CLASSIFIER  # checkpoints are {CLASSIFIER_NAME}_ckpt_{step}.pth
DEVICE = "auto"
THREADS = 0
OVERWRITE = False


def main(argv=None):
    config = parse_config(globals(), argv)
    return train_joint_classifier(config, [config["GEN_IDX_1"], config["GEN_IDX_2"]], JointYClassifier)


if __name__ == "__main__":
    run_main(main)
