"""Checkpoint I/O: writing files safely, half-precision storage, loading checkpoints into networks, the files shipped
with the repository, and what a classifier was trained on.

Every loader checks the checkpoint against the network it builds and returns the network frozen
(eval mode, no parameter gradients); a missing or mismatched file is a one-line UserError. A file that
checkpoints/MANIFEST.sha256 lists is shipped: a load checks its content against the manifest, and no
script writes or removes it.
"""
import glob
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from sculpting.artefacts import ORACLE_CHECKPOINT, SHIPPED_MANIFEST, provenance_sidecar
from sculpting.errors import UserError, unreadable_torch_file
from models import freeze
from models.classifier_model import classifier_config_from_state_dict
from models.joint_diffusion import JointScoreNet, LabelClassifier, labels_of_state_dict, score_part
from models.energy_model import EnergyScoreNet, energy_config_from_state_dict, is_energy_state_dict
from models.oracle import OracleNet
from models.score_model import ScoreNet, scorenet_config_from_state_dict

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / SHIPPED_MANIFEST  # its paths are relative to the folder above its own (the repository's root)
_hashes = {}  # (resolved path, size, mtime) -> SHA-256
_manifest_cache = {}  # (manifest, size, mtime) -> {resolved path: (SHA-256, path as listed)}


def half_state_dict(state: dict) -> dict:
    """Floating tensors as float16, on the CPU: half the file size; load_state_dict_file restores float32. Entries that
    are no tensors (a module's extra state) stay as they are."""
    return {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()) if torch.is_tensor(v) else v
            for k, v in state.items()}


def ensure_writable_dir(path) -> Path:
    """Create `path` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"cannot write to output folder {path}: {error.strerror}; choose another folder") from None
    return path


def atomic_save(obj, path, replace_shipped=False) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file.
    A shipped file is never replaced, unless `replace_shipped` (reproduce.py --replace-shipped)."""
    _atomic_write(path, lambda tmp: torch.save(obj, tmp), replace_shipped)


def atomic_write_text(path, text, replace_shipped=False) -> None:
    """atomic_save for a text file."""
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text), replace_shipped)


def _atomic_write(path, write, replace_shipped):
    path = Path(path)
    if not replace_shipped:
        refuse_shipped([path], "choose another folder")
    # The temporaries a killed writer of this target left behind (a concurrent writer of one target is a bug).
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint should not be
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ---- the files shipped with the repository ----

def file_sha256(path) -> str:
    """The SHA-256 of a file's content (hex), computed once per file while its size and modification time hold."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        with open(path, "rb") as f:
            _hashes[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _hashes[key]


def shipped_files() -> dict:
    """{resolved path: (SHA-256, path as listed)} of the files MANIFEST lists (sha256sum's format); {} without one."""
    manifest = Path(MANIFEST)
    try:
        stat = manifest.stat()
    except FileNotFoundError:
        return {}
    key = (manifest.resolve(), stat.st_size, stat.st_mtime_ns)
    if key not in _manifest_cache:
        root, listed = manifest.resolve().parent.parent, {}
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            fields = line.split(maxsplit=1)
            if len(fields) == 1 or (fields and len(fields[0]) != 64):
                raise UserError(f"{manifest} line {number} is not '<SHA-256>  <path>'; restore it with "
                                f"`git checkout -- {manifest}`")
            if fields:
                digest, name = fields[0], fields[1].lstrip("*")  # sha256sum --binary marks names with *
                listed[(root / name).resolve()] = (digest, name)
        _manifest_cache.clear()
        _manifest_cache[key] = listed
    return _manifest_cache[key]


def manifest_name() -> str:
    """MANIFEST as the user knows it: from the repository's root (checkpoints/MANIFEST.sha256)."""
    manifest = Path(MANIFEST).resolve()
    return str(manifest.relative_to(manifest.parent.parent))


def is_shipped(path) -> bool:
    return Path(path).resolve() in shipped_files()


def refuse_shipped(paths, instead) -> None:
    """A one-line UserError if any of `paths` (files a script would write or remove) is shipped; `instead` says
    what to do instead, e.g. "choose another --ckpt-dir"."""
    for path in paths:
        if is_shipped(path):
            raise UserError(f"{path} is shipped with the repository (listed in {manifest_name()}) and is never "
                            f"replaced or removed; {instead}")


def remove_files(paths, instead) -> None:
    """Remove an earlier run's files (--overwrite): none of them if any is shipped (refuse_shipped)."""
    paths = list(paths)
    refuse_shipped(paths, instead)
    for path in paths:
        Path(path).unlink(missing_ok=True)


def verify_shipped(path) -> None:
    """A shipped file must have the content the manifest lists: a missing or damaged one (truncated, edited) is a
    one-line UserError with the git command that restores it. Other files pass unchecked."""
    entry = shipped_files().get(Path(path).resolve())
    if entry is None:
        return
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} is missing; restore it with `git checkout -- {path}`")
    if file_sha256(path) != entry[0]:
        raise UserError(f"checkpoint {path} is damaged (SHA-256 differs from {manifest_name()}); restore it with "
                        f"`git checkout -- {path}`")


def record_shipped(paths) -> None:
    """Write the manifest's lines of `paths` (reproduce.py --replace-shipped): the SHA-256 of each, a line added
    for one not listed yet; a listed file that no longer exists loses its line."""
    root = Path(MANIFEST).resolve().parent.parent
    listed = {name: digest for digest, name in shipped_files().values()}
    for path in map(lambda p: Path(p).resolve(), paths):
        name = str(path.relative_to(root))
        if path.is_file():
            listed[name] = file_sha256(path)
        else:
            listed.pop(name, None)
    atomic_write_text(MANIFEST, "".join(f"{listed[name]}  {name}\n" for name in sorted(listed)),
                      replace_shipped=True)


# ---- what a classifier was trained on ----

def short_hash(digest) -> str:
    return digest[:12]


def source_sha256(source) -> str:
    """The SHA-256 of a model's source: its checkpoint file's, or what a composite (composites.CompositeSource)
    digests its parts to."""
    return source.sha256() if hasattr(source, "sha256") else file_sha256(source)


def provenance_entry(name, source) -> dict:
    """A model as a provenance record names it: a base model by its checkpoint, a composite by its parts."""
    if hasattr(source, "provenance_entry"):
        return source.provenance_entry()
    return {"name": name, "checkpoint": str(source), "sha256": file_sha256(source)}


def classifier_provenance(base_models, joint_classifier=None) -> dict:
    """What a classifier is trained on, as its sidecar records it: the base models [(GEN_IDX, checkpoint or
    composite source)] in the order of its labels and, for a conditional classifier, the joint classifier that
    guides its compositions; each file by its SHA-256 (a composite by its parts')."""
    record = {"base_models": [provenance_entry(name, source) for name, source in base_models]}
    if joint_classifier is not None:
        record["joint_classifier"] = {"checkpoint": str(joint_classifier), "sha256": file_sha256(joint_classifier)}
    return record


def write_provenance(checkpoint, provenance, replace_shipped=False) -> None:
    atomic_write_text(provenance_sidecar(checkpoint), json.dumps(provenance, indent=2) + "\n", replace_shipped)


def read_provenance(checkpoint):
    """The provenance a classifier checkpoint's sidecar records, or None where it has none (trained before
    provenance was recorded, or elsewhere)."""
    sidecar = provenance_sidecar(checkpoint)
    if not sidecar.is_file():
        return None
    verify_shipped(sidecar)
    try:
        provenance = json.loads(sidecar.read_text())
        [(entry["name"], entry["checkpoint"], entry["sha256"]) for entry in provenance["base_models"]]
        joint = provenance.get("joint_classifier")
        if joint is not None:
            joint["checkpoint"], joint["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read {sidecar}: {error or type(error).__name__}; restore it or remove it") from None
    return provenance


def check_provenance(classifier, base_models, joint_classifier=None, force=False):
    """Refuse to pair a classifier with base models other than those it was trained on: `base_models` is
    [(GEN_IDX, checkpoint or None)] in label order (None: compare the names alone); for a conditional
    classifier, `joint_classifier` the joint one it is used with. A difference is a one-line UserError naming
    it, unless `force`: then it is printed as a warning and returned, for the output to record. A classifier
    without provenance is used with a one-line warning. Returns None when nothing differs."""
    provenance = read_provenance(classifier)
    if provenance is None:
        print(f"warning: {classifier} records no provenance ({provenance_sidecar(classifier).name}); cannot check "
              f"that it was trained on {', '.join(name for name, _ in base_models)}", file=sys.stderr)
        return None
    trained = provenance["base_models"]
    names, trained_names = [name for name, _ in base_models], [entry["name"] for entry in trained]
    if names != trained_names:
        mismatch = f"{classifier} was trained on {', '.join(trained_names)}, not {', '.join(names)}"
    else:
        mismatch = next((f"{classifier} was trained on {name} = {entry['checkpoint']} (SHA-256 "
                         f"{short_hash(entry['sha256'])}), not {path} (SHA-256 {short_hash(source_sha256(path))})"
                         for (name, path), entry in zip(base_models, trained)
                         if path is not None and source_sha256(path) != entry["sha256"]), None)
    joint = provenance.get("joint_classifier")
    if mismatch is None and joint_classifier is not None and joint is not None \
            and file_sha256(joint_classifier) != joint["sha256"]:
        mismatch = (f"{classifier} was trained with the joint classifier {joint['checkpoint']} (SHA-256 "
                    f"{short_hash(joint['sha256'])}), not {joint_classifier} (SHA-256 "
                    f"{short_hash(file_sha256(joint_classifier))})")
    if mismatch is None:
        return None
    if not force:
        raise UserError(f"{mismatch}; pass the classifier trained on them, or --force to use it anyway")
    print(f"warning: {mismatch}; used anyway (--force)", file=sys.stderr)
    return mismatch


def check_composition_provenance(classifiers, base_models, force=False):
    """check_provenance of a composition's classifiers: the joint one, then (three models) the conditional one,
    which must also have been trained with that joint one. The differences, if forced, in one line; else None."""
    mismatches = [check_provenance(path, base_models, None if k == 0 else classifiers[0], force)
                  for k, path in enumerate(classifiers)]
    return "; ".join(text for text in mismatches if text) or None


# ---- loading ----

def read_checkpoint_file(path, made_by: str, weights_only=True):
    """torch.load a file onto the CPU; a damaged shipped, missing, empty or unreadable file is a one-line UserError
    (`made_by` is the script that makes it)."""
    path = Path(path)
    verify_shipped(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; create it with {made_by} or pass its path")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: empty file; recreate it with {made_by}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # corrupt or non-torch file
        raise UserError(f"cannot read checkpoint {path}: {unreadable_torch_file(error)}") from None


def load_state_dict_file(path, made_by: str) -> dict:
    """Load a plain state_dict; floating tensors come back as float32 (half-precision storage is allowed)."""
    state = read_checkpoint_file(path, made_by)
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a state_dict")
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def read_training_state(path, made_by="train_diffusion.py") -> dict:
    """A training script's training state (its own file: not only tensors, so not loaded weights-only)."""
    state = read_checkpoint_file(path, made_by=f"{made_by} --overwrite", weights_only=False)
    if not isinstance(state, dict) or "config" not in state:
        raise UserError(f"{path} is not a training state of {made_by}")
    return state


def load_into(model, state_dict, path) -> None:
    """load_state_dict(strict=True) with a one-line error naming the first mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in own.items():
        if torch.is_tensor(value) and value.shape != state_dict[key].shape:
            raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: {key} has shape "
                            f"{list(state_dict[key].shape)}, expected {list(value.shape)}")
    model.load_state_dict(state_dict, strict=True)


def load_score_model(path, sde, device="cpu", channels=None, input_channels=None):
    """Build a ScoreNet with the architecture stored in a checkpoint and load it, frozen, in eval mode.

    `channels`/`input_channels`, when given, are what the caller expects; a
    checkpoint of another architecture is then an error naming both.
    """
    return _load_base_model(path, sde, device, channels, input_channels, energy=False)


def load_energy_model(path, sde, device="cpu", channels=None, input_channels=None):
    """load_score_model for an energy-parameterised checkpoint (train_diffusion.py --energy): an EnergyScoreNet."""
    return _load_base_model(path, sde, device, channels, input_channels, energy=True)


def _load_base_model(path, sde, device, channels, input_channels, energy):
    state = load_state_dict_file(path, made_by="train_diffusion.py" + (" --energy" if energy else ""))
    state = score_part(state)  # a joint diffusion model's (train_joint_diffusion.py) loads as its ScoreNet
    if is_energy_state_dict(state) != energy:
        raise UserError(f"checkpoint {path} is an energy-parameterised model (train_diffusion.py --energy): load it "
                        f"with checkpoints.load_energy_model" if not energy else
                        f"checkpoint {path} is a plain ScoreNet, not an energy model: train one with "
                        f"train_diffusion.py --energy")
    try:
        config = (energy_config_from_state_dict if energy else scorenet_config_from_state_dict)(state)
    except ValueError as error:
        raise UserError(f"checkpoint {path}: {error}") from None
    for name, expected in (("channels", channels), ("input_channels", input_channels)):
        if expected is not None and tuple(np.atleast_1d(expected)) != tuple(np.atleast_1d(config[name])):
            raise UserError(f"checkpoint {path} has {name} {config[name]}, expected {expected}")
    model = (EnergyScoreNet if energy else ScoreNet)(sde.marginal_prob_std, **config)
    load_into(model, state, path)
    return freeze(model.to(device))


def load_classifier(path, classifier_class, device, made_by):
    """Build `classifier_class` with the architecture stored in a checkpoint and load it, frozen, in eval mode."""
    state = load_state_dict_file(path, made_by=made_by)
    try:
        config = classifier_config_from_state_dict(state)
    except ValueError as error:
        raise UserError(f"checkpoint {path}: {error}") from None
    model = classifier_class(**config)
    load_into(model, state, path)
    return freeze(model.to(device))


def load_oracle(path=ORACLE_CHECKPOINT, device="cpu") -> OracleNet:
    """The trained oracle, frozen and in eval mode (half-precision storage comes back as float32)."""
    oracle = OracleNet()
    load_into(oracle, load_state_dict_file(path, made_by="train_oracle.py"), path)
    return freeze(oracle.to(device))


def load_labelled_model(path, sde, device="cpu"):
    """A JointScoreNet or a LabelClassifier (train_joint_diffusion.py), whichever the checkpoint holds, with the
    architecture and label space stored in it; frozen, in eval mode."""
    state = load_state_dict_file(path, made_by="train_joint_diffusion.py")
    try:
        labels = labels_of_state_dict(state)
        if "conv1.weight" in state:
            config = scorenet_config_from_state_dict(state)
            reads_all = state["head.fc1.weight"].shape[1] == sum(config["channels"]) + config["embed_dim"]
            model = JointScoreNet(sde.marginal_prob_std, labels, "all" if reads_all else "bottleneck", **config)
        else:
            config = classifier_config_from_state_dict(state)
            model = LabelClassifier(labels, config["input_channels"], config["channels"], config["embed_dim"],
                                    config["t_embed_dim"])
    except ValueError as error:
        raise UserError(f"checkpoint {path}: {error}; train one with train_joint_diffusion.py") from None
    load_into(model, state, path)
    return freeze(model.to(device))


def holds_label_head(path, made_by) -> bool:
    """Whether a checkpoint is a JointScoreNet's or LabelClassifier's (train_joint_diffusion.py); `made_by` names
    what makes the file that is expected, for the error if it is missing."""
    return isinstance(load_state_dict_file(path, made_by=made_by).get("head._extra_state"), dict)
