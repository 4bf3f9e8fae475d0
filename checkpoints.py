"""Checkpoint I/O: writing files safely, half-precision storage, and loading checkpoints into networks.

Every loader checks the checkpoint against the network it builds and returns the network frozen
(eval mode, no parameter gradients); a missing or mismatched file is a one-line UserError.
"""
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from artefacts import ORACLE_CHECKPOINT
from errors import UserError
from models import freeze
from models.classifier_model import classifier_config_from_state_dict
from models.energy_model import EnergyScoreNet, energy_config_from_state_dict, is_energy_state_dict
from models.oracle import OracleNet
from models.score_model import ScoreNet, scorenet_config_from_state_dict


def half_state_dict(state: dict) -> dict:
    """Floating tensors as float16, on the CPU: half the file size; load_state_dict_file restores float32."""
    return {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}


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


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint should not be
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_state_dict_file(path, made_by: str) -> dict:
    """Load a plain state_dict; floating tensors come back as float32 (half-precision storage is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; create it with {made_by} or pass its path")
    if path.stat().st_size == 0:
        raise UserError(f"cannot read checkpoint {path}: empty file; recreate it with {made_by}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or non-torch file
        raise UserError(f"cannot read checkpoint {path}: {error or type(error).__name__}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a state_dict")
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def load_into(model, state_dict, path) -> None:
    """load_state_dict(strict=True) with a one-line error naming the first mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in own.items():
        if value.shape != state_dict[key].shape:
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
