"""Train a joint diffusion model (Deja et al. 2023): a ScoreNet whose encoder features also classify the image, trained
on score loss + CLASSIFIER_LOSS_SCALING x cross-entropy; or, with --model classifier, the separately trained
time-dependent classifier of the same labels (the project's classifier trunk on noised images) it is compared with.

    python train_joint_diffusion.py --preset cpu --gen-idx MN2 --label cell        # MN2's (digit, colour) cells
    python train_joint_diffusion.py --preset cpu --gen-idx M1 M2 --label dataset  # the union of M1 and M2: which one
    python train_joint_diffusion.py --preset cpu --gen-idx MN2 --label cell --model classifier   # the baseline
Writes <CKPT_DIR>/<run>_ckpt_<epoch>.pth every SAVE_EVERY epochs and after the last (run: joint_<datasets>_<label>,
or classifier_<datasets>_<label>), a training state for --resume and a loss-curve PNG. A joint checkpoint is a
ScoreNet state_dict plus head.* entries: its score part loads into a plain ScoreNet (checkpoints.load_score_model).
"""
import math

import numpy as np
import torch

from sculpting.artefacts import RUN_DIR, numbered_files
from sculpting.checkpoints import atomic_save, ensure_writable_dir, half_state_dict, refuse_shipped
from sculpting.cli import BASE_ONLY, configure, run_main
from custom_datasets import LABELS, LabelledImages
from sculpting.errors import UserError
from sculpting.losses import joint_diffusion_loss, noised_classifier_loss
from models.fast_paths import PRECISIONS, resolve_precision
from models.joint_diffusion import HEAD_FEATURE_CHOICES, JointScoreNet, LabelClassifier
from sculpting.recipes import PRESETS
from sculpting.runtime import get_device, seed_everything
from sculpting.sde import VESDE
from sculpting.training import (make_scheduler, plot_losses, prepare_run, restore_run, run_epochs, save_training_state,
                      save_weights, saves_checkpoint)

PRESET = None
GEN_IDX = ["MN2"]  # one dataset, or several: the model learns their union, each dataset drawn equally often
LABEL = "cell"  # what the head predicts: digit, colour, cell (digit and colour), or dataset (which of GEN_IDX)
MODEL = "joint"  # joint: the ScoreNet with a head (Deja et al.); classifier: a separate time-dependent classifier
CLASSIFIER_LOSS_SCALING = 0.001  # the head's loss weight, per value of an image as in the published code's flag
TRAIN_NOISED_CLASSIFIER = True  # the head classifies the noised x_t of the score loss; False: the clean image only
MULTI_LABEL_CLASSIFIER = False  # one sigmoid per attribute (the cell's digit, its colour) instead of a softmax
HEAD_FEATURES = "all"  # the joint head reads the average-pooled bottleneck ("bottleneck") or every encoder level
EPOCHS = 200
BATCH_SIZE = 32
LR = 1e-2
LR_END = 1e-4
LR_SCHEDULE = "exponential"
CHANNELS = [64, 128, 256, 256]
EMBED_DIM = 256
CLASSIFIER_CHANNELS = [32, 64]  # --model classifier: its trunk's convolution widths (the reference classifiers')
TRAIN_SUBSET = 0  # train on this many randomly chosen images; 0 = the whole union
SEED = 0

# ---- engineering settings: how and where it runs, not what it samples ----
SAVE_EVERY = 5
PRECISION = "float32"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively
CKPT_DIR = RUN_DIR  # folder this run's checkpoints, training state and loss plot are written to
EXPORT_DIR = None  # a folder: the final checkpoint is also written there in half precision (a finished run exports
# with --resume --export-dir DIR)
DATA_ROOT = "data"
DEVICE = "auto"
THREADS = 0
RESUME = False
OVERWRITE = False  # remove this run's earlier files in CKPT_DIR (checkpoints, training state, loss plot), then train

# The settings a resume must share with the run it continues.
CONFIG_KEYS = ["GEN_IDX", "LABEL", "MODEL", "CLASSIFIER_LOSS_SCALING", "TRAIN_NOISED_CLASSIFIER",
               "MULTI_LABEL_CLASSIFIER", "HEAD_FEATURES", "EPOCHS", "BATCH_SIZE", "LR", "LR_END", "LR_SCHEDULE",
               "CHANNELS", "EMBED_DIM", "CLASSIFIER_CHANNELS", "TRAIN_SUBSET", "PRECISION", "SEED"]
# The presets whose settings this script has (cpu-24's also compiles, which the joint model does not).
CHOICES = {"LABEL": LABELS, "MODEL": ("joint", "classifier"), "HEAD_FEATURES": HEAD_FEATURE_CHOICES,
           "PRESET": ("cpu", "paper"), **BASE_ONLY}


def parse_args(argv=None):
    preset = configure(globals(), argv, exclude=["CONFIG_KEYS"], choices=CHOICES)["PRESET"]
    config = configure(globals(), argv, exclude=["CONFIG_KEYS"], choices=CHOICES,
                       defaults=PRESETS[preset] if preset else None)
    if len(config["CHANNELS"]) != 4 or any(c % 32 for c in config["CHANNELS"]):
        raise UserError(f"--channels needs 4 multiples of 32 (GroupNorm uses 32 groups); got {config['CHANNELS']}")
    if len(config["CLASSIFIER_CHANNELS"]) != 2:
        raise UserError(f"--classifier-channels needs 2 widths, got {config['CLASSIFIER_CHANNELS']}")
    return config


def run_name(config) -> str:
    """joint_<datasets>_<label> or classifier_<datasets>_<label> (+ _multilabel, _clean): every file of the run."""
    suffixes = ["multilabel"] * config["MULTI_LABEL_CLASSIFIER"] + ["clean"] * (not config["TRAIN_NOISED_CLASSIFIER"])
    return "_".join([config["MODEL"], "+".join(config["GEN_IDX"]), config["LABEL"], *suffixes])


def build_model(config, labels, channels, sde):
    if config["MODEL"] == "joint":
        return JointScoreNet(sde.marginal_prob_std, labels, config["HEAD_FEATURES"], config["CHANNELS"],
                             config["EMBED_DIM"], channels)
    return LabelClassifier(labels, channels, tuple(config["CLASSIFIER_CHANNELS"]))


def export_path(config, final_checkpoint):
    """Where EXPORT_DIR puts the final checkpoint's half-precision copy (None without one), checked before any
    work: not the checkpoint itself, and never a shipped file."""
    if not config["EXPORT_DIR"]:
        return None
    export = ensure_writable_dir(config["EXPORT_DIR"]) / final_checkpoint.name
    if export.resolve() == final_checkpoint.resolve():
        raise UserError(f"--export-dir {config['EXPORT_DIR']} is --ckpt-dir: the half-precision copy would replace "
                        f"the run's own checkpoint; export to another folder")
    refuse_shipped([export], "export to another folder")
    return export


def train(config):
    device = get_device(config["DEVICE"])
    config = {**config, "PRECISION": resolve_precision(config["PRECISION"], device)}
    ckpt_dir = ensure_writable_dir(config["CKPT_DIR"])
    name = run_name(config)
    state_file = ckpt_dir / f"{name}_train_state.pth"
    checkpoint = lambda epoch: ckpt_dir / f"{name}_ckpt_{epoch}.pth"
    extras = [state_file, ckpt_dir / f"{name}_loss.png"]
    prepare_run(config, name, state_file, [*numbered_files(ckpt_dir, f"{name}_ckpt_*.pth"), *extras],
                [checkpoint(epoch) for epoch in range(config["EPOCHS"]) if saves_checkpoint(config, epoch)] + extras)
    export = export_path(config, checkpoint(config["EPOCHS"] - 1))

    seed_everything(config["SEED"])
    sde = VESDE()
    data = LabelledImages(config["GEN_IDX"], config["LABEL"], config["MULTI_LABEL_CLASSIFIER"], config["DATA_ROOT"])
    if config["TRAIN_SUBSET"]:
        data.keep(torch.randperm(len(data))[:config["TRAIN_SUBSET"]])
    model = build_model(config, data.label_space(), data.channels, sde).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["LR"])
    steps_per_epoch = math.ceil(len(data) / config["BATCH_SIZE"])
    scheduler, scheduler_unit = make_scheduler(optimizer, config, steps_per_epoch)
    start_epoch, losses, within_epoch = 0, [], None
    if config["RESUME"]:
        _, start_epoch, losses, within_epoch = restore_run(state_file, "train_joint_diffusion.py", config, CONFIG_KEYS,
                                                           {}, model, optimizer, scheduler)

    dtype = PRECISIONS[config["PRECISION"]]

    def batch_losses(batch):
        x, classes = (tensor.to(device) for tensor in data.batch(batch))
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            if config["MODEL"] == "joint":
                return torch.stack(joint_diffusion_loss(model, x, classes, sde, config["CLASSIFIER_LOSS_SCALING"],
                                                        config["TRAIN_NOISED_CLASSIFIER"]))
            return noised_classifier_loss(model, x, classes, sde).reshape(1)

    def end_epoch(epoch):
        if saves_checkpoint(config, epoch):
            save_weights(model, checkpoint(epoch))

    def save_state(epoch, losses, **within_epoch):
        save_training_state(state_file, config, model, optimizer, scheduler, device, epoch, losses, **within_epoch)

    model.train()
    run_epochs(optimizer, scheduler, scheduler_unit, epochs=config["EPOCHS"], steps_per_epoch=steps_per_epoch,
               start_epoch=start_epoch, losses=losses, within_epoch=within_epoch, new_order=data.epoch_order,
               batch_size=config["BATCH_SIZE"], batch_losses=batch_losses, end_epoch=end_epoch, save_state=save_state,
               state_file=state_file, describe=f"train {name}",
               part_names=("total", "score", "head") if config["MODEL"] == "joint" else ("head",))
    if not losses:
        return model
    final = checkpoint(config["EPOCHS"] - 1)
    if export:
        atomic_save(half_state_dict(model.state_dict()), export)
        print(f"exported {export} (half precision)")
    totals = [loss[0] if isinstance(loss, list) else loss for loss in losses]
    plot_losses(totals, ckpt_dir / f"{name}_loss.png", "mean training loss" + " (total)" * (config["MODEL"] == "joint"))
    print(f"saved {final} (final loss{'es: total, score, head' if isinstance(losses[-1], list) else ''} = "
          f"{', '.join(f'{v:.3f}' for v in np.atleast_1d(losses[-1]))})")
    return model


def main(argv=None):
    return train(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
