"""A composite: a composition of two trained base models, used wherever a base model goes (docs/reference.md §9).

A composition is itself a score model, so it can be a base model of the next composition ("chaining"): a classifier
trained between base model a and the composite, then a composition of the two. A composite is named by its two
base models and an operator:
    MN2xMN3   the harmonic mean p_MN2 ⊗ p_MN3 (y = (1, 2) of the pair's joint classifier)
    MN2-MN3   the contrast p_MN2 ◑ p_MN3: MN2 without MN3 (y = (1, 1))
    MN3-MN2   the contrast the other way round (y = (2, 2))
guided by the pair's 2-model joint classifier (train_classifier.py on the two, in BASE_DATASETS' order) at the
composite's own guidance scale, 20 by default as in the reference. The pair's classifier is
<folder>/<pair_classifier_name>_ckpt_200.pth: the shipped names for M1/M2 and 1/2, classifier_<b>_<c> otherwise.
"""
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from custom_datasets import BASE_DATASETS, dataset_spec
from models.classifier_model import JointYClassifier
from models.compositions import BinaryDiffusionComposition
from sculpting.artefacts import (JOINT_CLASSIFIER, SUBDIGITS_CLASSIFIER, base_model_path,
                                 reference_classifier_checkpoint)
from sculpting.checkpoints import check_provenance, file_sha256, load_classifier, load_score_model
from sculpting.errors import UserError

COMPOSITE_GUIDANCE = 20.0  # the reference's composites are sampled with guidance 20
OPERATORS = {"x": "⊗", "-": "◑"}
_COMPOSITE_NAME = re.compile(r"(?P<first>[^x\-]+)(?P<operator>[x\-])(?P<second>[^x\-]+)")
# The pairs whose joint classifier ships under the reference's own names.
_REFERENCE_PAIR_CLASSIFIERS = {("M1", "M2"): JOINT_CLASSIFIER, ("1", "2"): SUBDIGITS_CLASSIFIER}


def _example() -> str:
    return "e.g. MN2xMN3 (harmonic mean), MN2-MN3 (MN2 without MN3)"


@dataclass(frozen=True)
class Composite:
    """What a composite's name says: its two base models as written and its operator ("x" or "-")."""
    name: str
    models: tuple
    operator: str

    @property
    def pair(self) -> tuple:
        """The two base models in BASE_DATASETS' order: the labels of the pair's joint classifier."""
        order = list(BASE_DATASETS)
        return tuple(sorted(self.models, key=order.index))

    @property
    def observations(self) -> tuple:
        """(y_1, y_2) of the pair's classifier that this composite composes."""
        if self.operator == "x":
            return 1, 2
        return (1, 1) if self.models == self.pair else (2, 2)

    @property
    def classifier_name(self) -> str:
        return pair_classifier_name(*self.pair)

    @property
    def identity(self) -> tuple:
        """What the composite samples, whichever way its name is spelt (MN3xMN2 is MN2xMN3)."""
        return self.pair, self.observations

    def describe(self) -> str:
        return f"{self.models[0]} {OPERATORS[self.operator]} {self.models[1]}"


def pair_classifier_name(first, second) -> str:
    """CLASSIFIER_NAME of the joint classifier of two base models (in BASE_DATASETS' order)."""
    return _REFERENCE_PAIR_CLASSIFIERS.get((first, second), f"classifier_{first}_{second}")


def parse_model(name):
    """None for a base model's name, its Composite for a composite's; a one-line UserError for anything else."""
    name = str(name)
    if name in BASE_DATASETS:
        return None
    match = _COMPOSITE_NAME.fullmatch(name)
    if match is None:
        raise UserError(f"unknown model {name!r}: name a base model ({', '.join(BASE_DATASETS)}) or a composite of "
                        f"two, {_example()}")
    first, second = match["first"], match["second"]
    unknown = [part for part in (first, second) if part not in BASE_DATASETS]
    if unknown:
        raise UserError(f"composite {name!r} names unknown model {unknown[0]!r}; its parts are base models: "
                        f"{', '.join(BASE_DATASETS)}")
    if first == second:
        raise UserError(f"composite {name!r} composes {first} with itself; name two different base models")
    if dataset_spec(first)[0] != dataset_spec(second)[0]:
        raise UserError(f"composite {name!r} mixes a grey and a coloured dataset; compose models of one kind")
    return Composite(name, (first, second), match["operator"])


def is_model_name(name) -> bool:
    """Whether `name` names a base model or a composite (True), else the UserError that says why."""
    parse_model(name)
    return True


def model_identity(name):
    """What a model samples: a base model's name, or a composite's identity (the same for MN2xMN3 and MN3xMN2)."""
    composite = parse_model(name)
    return composite.identity if composite else str(name)


def model_channels(name) -> int:
    """The image channels of a base model or a composite."""
    composite = parse_model(name)
    return dataset_spec(composite.models[0] if composite else name)[0]


@dataclass(frozen=True)
class CompositeSource:
    """A composite with the files it is built from: its pair's checkpoints, in the pair's order, and classifier."""
    composite: Composite
    checkpoints: tuple
    classifier: str
    guidance: float

    def __str__(self) -> str:
        parts = ", ".join(f"{name} = {path}" for name, path in zip(self.composite.pair, self.checkpoints))
        return f"{self.composite.name} ({parts}, classifier {self.classifier}, guidance {self.guidance:g})"

    def provenance_entry(self) -> dict:
        """What a record names this composite by: its parts and their SHA-256. "sha256" digests what the composite
        is (its labels, guidance, and its files' contents, not where they lie), so that a composite whose base
        models, classifier or guidance changed is another model, and a moved folder is the same one."""
        parts = {"observations": list(self.composite.observations), "guidance": self.guidance,
                 "base_models": [{"name": name, "checkpoint": str(path), "sha256": file_sha256(path)}
                                 for name, path in zip(self.composite.pair, self.checkpoints)],
                 "classifier": {"checkpoint": str(self.classifier), "sha256": file_sha256(self.classifier)}}
        identity = {**parts, "base_models": [entry["sha256"] for entry in parts["base_models"]],
                    "classifier": parts["classifier"]["sha256"]}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return {"name": self.composite.name, "checkpoint": str(self.classifier), "sha256": digest, "composite": parts}

    def sha256(self) -> str:
        return self.provenance_entry()["sha256"]

    def load(self, sde, device, force=False):
        """The composite as a score model: BinaryDiffusionComposition of its pair under its classifier. A classifier
        trained on other base models is refused (check_provenance) unless `force`."""
        composite, channels = self.composite, model_channels(self.composite.name)
        if not Path(self.classifier).is_file():
            first, second = composite.pair
            raise UserError(f"composite {composite.name} needs the joint classifier of {first} and {second}, "
                            f"{self.classifier}, which does not exist; train it with train_classifier.py "
                            f"--gen-idx-1 {first} --gen-idx-2 {second} --classifier-name {composite.classifier_name}, "
                            f"or pass --composite-classifier-dir")
        bases = [load_score_model(path, sde, device, input_channels=channels) for path in self.checkpoints]
        check_provenance(self.classifier, list(zip(composite.pair, self.checkpoints)), force=force)
        classifier = load_classifier(self.classifier, JointYClassifier, device, "train_classifier.py")
        return BinaryDiffusionComposition(bases, classifier, *composite.observations, guidance_scale=self.guidance)


def model_source(name, ckpt_dir, epoch, classifier_dir=None, guidance=COMPOSITE_GUIDANCE, checkpoint=None):
    """What model `name` is loaded from: a base model's checkpoint (`checkpoint` where given, else
    <ckpt_dir>/gen_<name>_ckpt_<epoch>.pth), or a composite's CompositeSource (its pair from `ckpt_dir`, its
    classifier from `classifier_dir`, by default `ckpt_dir`)."""
    composite = parse_model(name)
    if composite is None:
        return checkpoint or base_model_path(ckpt_dir, name, epoch)
    if checkpoint:
        raise UserError(f"{name} is a composite: it is built from its base models' checkpoints in the checkpoint "
                        f"folder, not from one file; leave its checkpoint path unset")
    classifier = reference_classifier_checkpoint(composite.classifier_name, classifier_dir or ckpt_dir)
    return CompositeSource(composite, tuple(base_model_path(ckpt_dir, part, epoch) for part in composite.pair),
                           classifier, float(guidance))


def load_model(source, sde, device, input_channels=None, force=False):
    """The score model of a model_source(): a base model's ScoreNet, or a composite's composition."""
    if isinstance(source, CompositeSource):
        return source.load(sde, device, force)
    return load_score_model(source, sde, device, input_channels=input_channels)


def source_record(source):
    """How an output's record names a model's source: a checkpoint path, or a composite's provenance entry."""
    return source.provenance_entry() if isinstance(source, CompositeSource) else str(source)
