"""Train the conditional classifier Q3(y3 | x_t, y1, y2) of three base models (docs/reference.md §6).

For every unordered label pair {y1, y2} in {11, 12, 13, 22, 23, 33}, trajectories are sampled from the
composition p(x | y1, y2) (BinaryDiffusionComposition with the trained 3-way joint classifier, guidance
scale 10); the soft target of y3 is the joint classifier's marginal Q(y | x_0) at each trajectory's end.
Reference defaults: 200 Adadelta steps (lr 0.1), 128 fresh trajectories per pair (500 PC steps) for
every step, a test every 10 steps (300 trajectories per pair) and a checkpoint
3way_conditional_classifier_ckpt_{step}.pth every 20 steps.

CPU-scale example: see train_classifier.py (the same pool and trunk flags), plus --classifier-ckpt. The joint
classifier must have been trained on the base models given (its provenance sidecar says so; --force overrides).
"""
import copy

import torch

from sculpting.artefacts import (CONDITIONAL_CLASSIFIER, REFERENCE_EPOCH, RUN_DIR, THREE_WAY_CLASSIFIER,
                       reference_classifier_checkpoint)
from sculpting.checkpoints import check_provenance, classifier_provenance, load_classifier
from sculpting.classifier_training import (TrajectoryPool, base_model_files, build_classifier, conditional_training_loss,
                                 every_nth_step, fit, load_base_models, make_tester, parse_config, start_run,
                                 trainable_steps, trajectory_sampler)
from sculpting.cli import run_main
from sculpting.errors import UserError
from models.classifier_model import (ThreeWayConditionalYClassifier, ThreeWayJointYClassifier, marginal_log_probs,
                                     unordered_pairs)
from models.compositions import compose
from sculpting.sde import VESDE

GEN_IDX_1 = "MN1"
GEN_IDX_2 = "MN2"
GEN_IDX_3 = "MN3"
CLASSIFIER_CKPT = reference_classifier_checkpoint(THREE_WAY_CLASSIFIER)  # the 3-way joint classifier: it guides
# the compositions and gives the soft targets
GUIDANCE = 10.0  # the joint classifier's scale in the compositions whose trajectories are trained on
STEPS = 200
BATCH_SIZE = 128  # trajectories per label pair in each optimizer step
POOL_SIZE = 128  # trajectories per label pair sampled at once (reference: = BATCH_SIZE)
POOL_REUSE = 1  # optimizer steps served by one pool before it is resampled (reference: 1)
TRAJECTORY_STEPS = 500  # sampler steps N (PC: grid times; heun*: noise levels)
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the trajectories' sampler (as the sample scripts' --sampler): "pc", "heun" or "heun-churn"
LR = 0.1
LR_DECAY = 1.0  # StepLR gamma per optimizer step; 1 = constant (reference)
CLASSIFIER_CHANNELS = [64, 64]
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
TEST_EVERY = 10
TEST_SAMPLES = 300  # test trajectories per label pair, sampled once at the start
TEST_STEP_STRIDE = 10  # the test scores every this many grid steps and the terminal state
CKPT_EVERY = 20
CKPT_DIR = RUN_DIR
CLASSIFIER_NAME = CONDITIONAL_CLASSIFIER  # checkpoints are {CLASSIFIER_NAME}_ckpt_{step}.pth
DEVICE = "auto"
THREADS = 0
OVERWRITE = False
FORCE = False  # use a CLASSIFIER_CKPT trained on other base models than these (the sidecar written records it)

PAIRS = sorted(unordered_pairs(3))  # (1,1), (1,2), (1,3), (2,2), (2,3), (3,3), the reference's order


def train(config):
    device = start_run(config)
    sde = VESDE()
    gen_idxs = [config[f"GEN_IDX_{k}"] for k in (1, 2, 3)]
    score_models = load_base_models(config, gen_idxs, sde, device)
    joint = load_classifier(config["CLASSIFIER_CKPT"], ThreeWayJointYClassifier, device,
                            made_by="train_3way_classifier.py")
    bases = base_model_files(config, gen_idxs)
    mismatch = check_provenance(config["CLASSIFIER_CKPT"], bases, force=config["FORCE"])
    provenance = {**classifier_provenance(bases, joint_classifier=config["CLASSIFIER_CKPT"]),
                  **({"forced": mismatch} if mismatch else {})}
    try:
        # The compositions guide with their own copy of the joint classifier: the sampler's fast path casts its
        # networks' weights in place, and `joint` also computes the float32 soft targets.
        guide = copy.deepcopy(joint)
        compositions = [compose(score_models, [guide], [y_1, y_2], [config["GUIDANCE"]]) for y_1, y_2 in PAIRS]
    except ValueError as error:
        raise UserError(f"{config['CLASSIFIER_CKPT']}: {error}") from None
    classifier = build_classifier(ThreeWayConditionalYClassifier, config, score_models[0].input_channels, device)
    draw_generator = torch.Generator().manual_seed(config["SEED"])
    sample = trajectory_sampler(compositions, config, sde, device)

    test = sample(config["TEST_SAMPLES"], every_nth_step(config["TEST_STEP_STRIDE"]))
    with torch.no_grad():
        test_targets = marginal_log_probs(
            joint(test.states[-1], torch.full((len(test.sources),), test.terminal_time, device=device))).exp()
    test_pairs = torch.tensor(PAIRS, device=device)[test.sources]
    pool = TrajectoryPool(lambda count: sample(count, trainable_steps), config["POOL_SIZE"], config["POOL_REUSE"])

    def training_loss(step):
        samples = pool.draw(config["BATCH_SIZE"], draw_generator)
        return conditional_training_loss(classifier, joint, pool.trajectories, samples, PAIRS, draw_generator)

    def predict(x, t, samples):
        return classifier(x, t, test_pairs[samples, 0], test_pairs[samples, 1])

    run_test = make_tester(config, classifier, predict, test, test_targets, [f"y=({a},{b})" for a, b in PAIRS])
    return fit(config, classifier, training_loss, run_test, provenance,
               counters=lambda: {"pool_refreshes": pool.refreshes})


def main(argv=None):
    train(parse_config(globals(), argv))


if __name__ == "__main__":
    run_main(main)
