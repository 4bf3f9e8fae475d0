"""Train the joint classifier Q(y1, y2 | x_t) of three base models (MN1, MN2, MN3) on their trajectories
(docs/reference.md §6).

Reference defaults: 700 Adadelta steps (lr 1.0, constant), the first 100 on the terminal loss only, fresh
trajectories (128 per model, 500 PC steps) for every step, the bootstrap target refreshed every 5 steps,
a test and a checkpoint 3way_classifier_ckpt_{step}.pth every 50 steps. The reference averages the
terminal cross-entropy over the 3 one-hot label entries, hence TERMINAL_LOSS_SCALE = 1/3.

CPU-scale example: see train_classifier.py (the same pool and trunk flags).
"""
from sculpting.artefacts import REFERENCE_EPOCH, RUN_DIR, THREE_WAY_CLASSIFIER
from sculpting.classifier_training import parse_config, train_joint_classifier
from sculpting.cli import run_main
from models.classifier_model import ThreeWayJointYClassifier

GEN_IDX_1 = "MN1"
GEN_IDX_2 = "MN2"
GEN_IDX_3 = "MN3"
STEPS = 700
WARMUP_STEPS = 100  # terminal loss only for these first steps
STEP_FRACTION = 0.1  # share of the steps with t <= 0.7 the non-terminal loss trains on per optimizer step
BATCH_SIZE = 128  # trajectories per model in each optimizer step
POOL_SIZE = 128  # trajectories per model sampled at once (reference: = BATCH_SIZE)
POOL_REUSE = 1  # optimizer steps served by one pool before it is resampled (reference: 1)
TRAJECTORY_STEPS = 500  # sampler steps N (PC: grid times; heun*: noise levels)
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the trajectories' sampler (as the sample scripts' --sampler): "pc", "heun" or "heun-churn"
LR = 1.0
LR_DECAY = 1.0  # StepLR gamma per optimizer step; 1 = constant (reference)
TARGET_UPDATE_EVERY = 5  # copy the bootstrap target before every this many steps
TERMINAL_LOSS_SCALE = 1.0 / 3.0
CLASSIFIER_CHANNELS = [64, 96]
EMBED_DIM = 512
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
TEST_EVERY = 50
TEST_SAMPLES = 300  # test trajectories per model, sampled once at the start
TEST_STEP_STRIDE = 10  # the test scores every this many grid steps and the terminal state
CKPT_EVERY = 50
CKPT_DIR = RUN_DIR
CLASSIFIER_NAME = THREE_WAY_CLASSIFIER  # checkpoints are {CLASSIFIER_NAME}_ckpt_{step}.pth
DEVICE = "auto"
THREADS = 0
OVERWRITE = False


def main(argv=None):
    config = parse_config(globals(), argv)
    return train_joint_classifier(config, [config[f"GEN_IDX_{k}"] for k in (1, 2, 3)], ThreeWayJointYClassifier)


if __name__ == "__main__":
    run_main(main)
