"""The names of the files the scripts write and read, built in one place.

Checkpoints keep the reference's names: a base model's gen_<GEN_IDX>_ckpt_<epoch>.pth, a classifier's
<CLASSIFIER_NAME>_ckpt_<step>.pth. Downstream scripts load the reference's epoch and steps
(reference_classifier_checkpoint); a shorter run is exported under those names by reproduce.py.
"""
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"
ORACLE_CHECKPOINT = f"{CHECKPOINT_DIR}/oracle.pth"
REFERENCE_EPOCH = 195  # the base-model checkpoint the reference's downstream scripts load

# The classifiers, by CLASSIFIER_NAME, with the step of the checkpoint the reference loads.
JOINT_CLASSIFIER = "classifier"  # M1 against M2
SUBDIGITS_CLASSIFIER = "subdigits_classifier"  # grey 1 against 2
THREE_WAY_CLASSIFIER = "3way_classifier"
CONDITIONAL_CLASSIFIER = "3way_conditional_classifier"
REFERENCE_STEPS = {JOINT_CLASSIFIER: 200, SUBDIGITS_CLASSIFIER: 200, THREE_WAY_CLASSIFIER: 700,
                   CONDITIONAL_CLASSIFIER: 200}


def energy_model_name(gen_idx) -> str:
    """What an energy-parameterised model of `gen_idx` (train_diffusion.py --energy) is filed under, in place of
    GEN_IDX in every name below: its checkpoints are not in the reference's format."""
    return f"{gen_idx}_energy"


def base_model_checkpoint(gen_idx, epoch=REFERENCE_EPOCH) -> str:
    return f"gen_{gen_idx}_ckpt_{epoch}.pth"


def base_model_path(folder, gen_idx, epoch) -> str:
    """<folder>/gen_<gen_idx>_ckpt_<epoch>.pth: where the scripts read a base model from."""
    return str(Path(folder) / base_model_checkpoint(gen_idx, epoch))


def base_model_checkpoints_glob(gen_idx) -> str:
    return f"gen_{gen_idx}_ckpt_*.pth"


def train_state(gen_idx) -> str:
    """What train_diffusion.py --resume continues from."""
    return f"gen_{gen_idx}_train_state.pth"


def loss_plot(gen_idx) -> str:
    return f"gen_{gen_idx}_loss.png"


def classifier_checkpoint(classifier_name, step) -> str:
    return f"{classifier_name}_ckpt_{step}.pth"


def classifier_checkpoints_glob(classifier_name) -> str:
    return f"{classifier_name}_ckpt_*.pth"


def reference_classifier_checkpoint(classifier_name, folder=CHECKPOINT_DIR) -> str:
    """<folder>/<classifier_name>_ckpt_<the reference's step>.pth."""
    return str(Path(folder) / classifier_checkpoint(classifier_name, REFERENCE_STEPS[classifier_name]))


def accuracy_plot(classifier_name) -> str:
    return f"{classifier_name}_accuracy.png"


def test_history(classifier_name) -> str:
    """A classifier training's tests: each one's step, cost and accuracy by time and source."""
    return f"{classifier_name}_tests.json"


def individual_stem(gen_idx) -> str:
    """File stem of one base model's samples."""
    return f"individual_{gen_idx}"


def composition_stem(models, observations, scales) -> str:
    """File stem of a composition's samples, e.g. composition_M1_M2_y1-1_y2-1_g20."""
    labels = [f"y{k}-{y}" for k, y in enumerate(observations, start=1)]
    return "_".join(["composition", *models, *labels, *(f"g{s:g}" for s in scales)])


def evaluation_report(stem) -> str:
    """evaluate_composition.py's report on the samples <stem>.pt."""
    return f"{stem}_eval.json"


def evaluation_plot(stem) -> str:
    return f"{stem}_eval.png"
