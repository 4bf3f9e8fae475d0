"""The names of the files the scripts write and read, built in one place.

Checkpoints keep the reference's names: a base model's gen_<GEN_IDX>_ckpt_<epoch>.pth, a classifier's
<CLASSIFIER_NAME>_ckpt_<step>.pth. Downstream scripts load the reference's epoch and steps
(reference_classifier_checkpoint); a shorter run is exported under those names by reproduce.py.
"""
from pathlib import Path

CHECKPOINT_DIR = "checkpoints"  # the checkpoints shipped with the repository; the scripts read them by default
RUN_DIR = "runs"  # where the training scripts write new runs by default, never over a shipped file
SHIPPED_MANIFEST = f"{CHECKPOINT_DIR}/MANIFEST.sha256"  # SHA-256 of every shipped file, paths from the repo root
ORACLE_FILE = "oracle.pth"
ORACLE_CHECKPOINT = f"{CHECKPOINT_DIR}/{ORACLE_FILE}"
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


def numbered_files(folder, pattern) -> list:
    """The files in `folder` matching a *_glob() pattern whose * is a number: a run's checkpoints, not a file
    the user named alike (gen_M1_ckpt_best.pth)."""
    prefix, suffix = pattern.split("*")
    return sorted(path for path in Path(folder).glob(pattern)
                  if path.name[len(prefix):len(path.name) - len(suffix)].isdigit())


def train_state(gen_idx) -> str:
    """What train_diffusion.py --resume continues from."""
    return f"gen_{gen_idx}_train_state.pth"


def loss_plot(gen_idx) -> str:
    return f"gen_{gen_idx}_loss.png"


def classifier_checkpoint(classifier_name, step) -> str:
    return f"{classifier_name}_ckpt_{step}.pth"


def classifier_checkpoints_glob(classifier_name) -> str:
    return f"{classifier_name}_ckpt_*.pth"


def provenance_sidecar(checkpoint) -> Path:
    """<checkpoint>.provenance.json: what a classifier checkpoint was trained on (checkpoints.classifier_provenance)."""
    return Path(f"{checkpoint}.provenance.json")


def reference_classifier_checkpoint(classifier_name, folder=CHECKPOINT_DIR) -> str:
    """<folder>/<classifier_name>_ckpt_<the reference's step>.pth; a classifier of other pairs (a composite's, a
    chain's) is a 2-model joint classifier, read at the joint classifier's step."""
    step = REFERENCE_STEPS.get(classifier_name, REFERENCE_STEPS[JOINT_CLASSIFIER])
    return str(Path(folder) / classifier_checkpoint(classifier_name, step))


def accuracy_plot(classifier_name) -> str:
    return f"{classifier_name}_accuracy.png"


def test_history(classifier_name) -> str:
    """A classifier training's tests: each one's step, cost and accuracy by time and source."""
    return f"{classifier_name}_tests.json"


# A sample file's stem names what was sampled and, where SEED is not 0, the seed: samples of another seed are
# another file. The sampler's settings stay out of the name (they would rename every results row); the .json
# beside the samples records them, and a sample script refuses to replace samples of other settings
# (images.refuse_other_samples).
def _seed_suffix(seed) -> str:
    return f"_s{seed}" if seed else ""


def individual_stem(gen_idx, seed=0) -> str:
    """File stem of one base model's samples, e.g. individual_M1, or individual_M1_s3 for seed 3."""
    return f"individual_{gen_idx}{_seed_suffix(seed)}"


def composition_stem(models, observations, scales, seed=0) -> str:
    """File stem of a composition's samples, e.g. composition_M1_M2_y1-1_y2-1_g20 (seed 3: ..._g20_s3)."""
    labels = [f"y{k}-{y}" for k, y in enumerate(observations, start=1)]
    return "_".join(["composition", *models, *labels, *(f"g{s:g}" for s in scales)]) + _seed_suffix(seed)


def joint_diffusion_stem(checkpoint, classes, guidance, alpha, seed=0) -> str:
    """File stem of a joint diffusion model's guided samples, e.g. joint_joint_MN2_cell_ckpt_23_red-1_input_a1."""
    return "_".join(["joint", Path(checkpoint).stem, *(c.replace(" ", "-") for c in classes), guidance,
                     f"a{alpha:g}"]) + _seed_suffix(seed)


def evaluation_report(stem) -> str:
    """evaluate_composition.py's report on the samples <stem>.pt."""
    return f"{stem}_eval.json"


def evaluation_plot(stem) -> str:
    return f"{stem}_eval.png"
