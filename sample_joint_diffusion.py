"""Sample a joint diffusion model (train_joint_diffusion.py) towards classes of its own head (Deja et al. 2023).

CLASSES names the classes (the head's: a cell such as "red 1", a digit, a colour, or a dataset such as M1); several
classes sample the product of their posteriors. SAMPLING_LR is the step size alpha of the guidance by the head
(GUIDANCE_VARIANT: "input" moves x_t, classic classifier guidance; "bottleneck" the encoder's representation, as
the paper; "features" every encoder feature map, as the published sampling script); alpha = 0 samples the model
unguided. With CLASSIFIER_CKPT, a separately trained classifier (train_joint_diffusion.py --model classifier)
guides the same score part instead, with scale SAMPLING_LR, at the same score evaluations.
    python sample_joint_diffusion.py --classes "red 1" --sampling-lr 5
    python sample_joint_diffusion.py --joint-ckpt runs/joint/joint_M1+M2_dataset_ckpt_23.pth --classes M1 M2
Writes <OUT_DIR>/joint_<checkpoint stem>_<classes>_<variant or classifier>_a<SAMPLING_LR>.png, .pt and .json (a
dataset-labelled model's .json names the models and 1-based observations, so evaluate_composition.py scores it).
"""

from sculpting.artefacts import joint_diffusion_stem
from sculpting.checkpoints import load_labelled_model
from sculpting.cli import configure, run_main
from sculpting.errors import UserError
from models.joint_diffusion import GUIDANCE_VARIANTS, JointScoreNet, LabelClassifier, guided_score
from sculpting.sampling import sample_run

JOINT_CKPT = "runs/joint/joint_MN2_cell_ckpt_23.pth"  # the joint model (train_joint_diffusion.py)
CLASSES = ["green 1"]  # the head's class names to sample towards; several: the product of their posteriors
SAMPLING_LR = 1.0  # alpha, the guidance step size (the published sampling_lr); 0 = unguided
GUIDANCE_VARIANT = "input"  # input: grad wrt x_t; bottleneck: moves the representation h4; features: h1..h4
CLASSIFIER_CKPT = None  # a separately trained classifier of the same labels guides instead of the model's head
NUM_SAMPLES = 64
SAMPLER = "heun-churn"
NUM_STEPS = 40
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SEED = 0

# ---- engineering settings: how and where it runs, not what it samples ----
BATCH_SIZE = 64
SIGMA_MIN = 0.05  # heun, heun-churn: the last noise level of the grid (a denoising step follows with DENOISE_LAST_STEP)
CHURN = 40.0  # heun-churn: the noise each step adds back (EDM's S_churn; gamma = min(CHURN / NUM_STEPS, sqrt 2 - 1))
DENOISE_LAST_STEP = True  # end with a denoising step
PALETTE = "rgb"  # or "colorblind", the reference figures' palette
OUT_DIR = "outputs"
OVERWRITE = False
DEVICE = "auto"
THREADS = 0
PRECISION = "auto"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively


def class_indices(labels: dict, names) -> list:
    """0-based indices of class names in a head's label space; a one-line error names the choices."""
    unknown = [name for name in names if name not in labels["classes"]]
    if unknown or not names:
        raise UserError(f"--classes {list(names)}: this model's head predicts {labels['label']}s "
                        f"{labels['classes']}; name one or more of them")
    return [labels["classes"].index(name) for name in names]


def load_guided_model(joint_ckpt, classifier_ckpt, sde, device):
    """(joint model, separate classifier or None), checked to predict the same labels."""
    joint_model = load_labelled_model(joint_ckpt, sde, device)
    if not isinstance(joint_model, JointScoreNet):
        raise UserError(f"{joint_ckpt} is a separate classifier; pass a joint model's checkpoint as --joint-ckpt "
                        f"and this one as --classifier-ckpt")
    classifier = None
    if classifier_ckpt is not None:
        classifier = load_labelled_model(classifier_ckpt, sde, device)
        if not isinstance(classifier, LabelClassifier) or classifier.head.labels != joint_model.head.labels \
                or classifier.input_channels != joint_model.input_channels:
            raise UserError(f"{classifier_ckpt} is not a classifier (train_joint_diffusion.py --model classifier) of "
                            f"the labels of {joint_ckpt} ({joint_model.head.labels['classes']})")
    return joint_model, classifier


def guidance_name(config) -> str:
    return "classifier" if config["CLASSIFIER_CKPT"] else config["GUIDANCE_VARIANT"]


def main(argv=None):
    s = configure(globals(), argv, choices={"GUIDANCE_VARIANT": GUIDANCE_VARIANTS})
    run = sample_run(s)

    # Load the joint model (and the separate classifier that guides instead of its head, if any).
    joint_model, classifier = load_guided_model(s["JOINT_CKPT"], s["CLASSIFIER_CKPT"], run.sde, run.device)
    labels = joint_model.head.labels
    observations = class_indices(labels, s["CLASSES"])

    # The guided score (edit here): the model's score part, moved towards CLASSES by steps of SAMPLING_LR.
    try:
        score = guided_score(joint_model, observations, s["SAMPLING_LR"], s["GUIDANCE_VARIANT"], classifier)
    except ValueError as error:
        raise UserError(str(error)) from None

    # Sample it and write the PNG, the samples (.pt) and what was sampled (.json).
    record = {"kind": "joint_diffusion", "joint_checkpoint": s["JOINT_CKPT"],
              "classifier_checkpoint": s["CLASSIFIER_CKPT"], "label": labels["label"],
              "classes": list(s["CLASSES"]), "guidance": guidance_name(s), "sampling_lr": s["SAMPLING_LR"],
              **({"models": labels["datasets"], "observations": [y + 1 for y in observations] if s["SAMPLING_LR"]
                  else []} if labels["label"] == "dataset" else {"target_cells": list(s["CLASSES"])}
                 if labels["label"] == "cell" else {})}
    stem = joint_diffusion_stem(s["JOINT_CKPT"], s["CLASSES"], guidance_name(s), s["SAMPLING_LR"], run.seed)
    return run.sample_to_disk(score, [], stem, record)


if __name__ == "__main__":
    run_main(main)
