"""Train one base score model on a coloured-MNIST dataset (docs/reference.md §6).

Edit the globals or override them from the command line (--gen-idx MN2 --epochs 20 ...).
Writes gen_{GEN_IDX}_ckpt_{epoch}.pth (plain state_dict, the reference's format) to CKPT_DIR (runs/;
the shipped checkpoints/ is never written) every SAVE_EVERY epochs and after the last one, plus a
training state beside them for --resume, and a loss-curve PNG at the end. Ctrl-C or SIGTERM saves the
state at the current step; --resume then continues to the weights an uninterrupted run ends with.
Sample a run with sample_individual_model.py --gen-ckpt-dir runs --gen-ckpt-epoch <its last epoch>.

CPU recipe (docs/results.md gives the runs and their wall times):
    python train_diffusion.py --preset cpu --gen-idx MN1         # 12 epochs, float32
    python train_diffusion.py --preset cpu-24 --gen-idx MN1   # 24 epochs, bfloat16 where native: reproduce.py's
    python train_diffusion.py --preset cpu --gen-idx M1 --energy   # score = -grad E, for MALA/HMC
"""
import math
from pathlib import Path

import torch

from sculpting.artefacts import (RUN_DIR, base_model_checkpoint, base_model_checkpoints_glob, energy_model_name, loss_plot,
                       numbered_files, train_state)
from sculpting.checkpoints import ensure_writable_dir
from sculpting.cli import BASE_ONLY, configure, run_main
from custom_datasets import ColouredMNIST
from sculpting.errors import UserError
from sculpting.losses import denoising_score_matching_loss
from models.fast_paths import PRECISIONS, AutocastScore, compile_in_place, resolve_precision
from models.energy_model import EnergyScoreNet
from models.score_model import ScoreNet
from sculpting.recipes import PRESETS
from sculpting.runtime import get_device, seed_everything
from sculpting.sde import VESDE
from sculpting.training import (make_scheduler, plot_losses, prepare_run, restore_run, run_epochs, save_training_state,
                      save_weights, saves_checkpoint)

PRESET = None
GEN_IDX = "MN1"
EPOCHS = 200
BATCH_SIZE = 32
LR = 1e-2
LR_END = 1e-4
LR_SCHEDULE = "exponential"  # reference: per-epoch decay LR -> LR_END; "onecycle" is per step
CHANNELS = [64, 128, 256, 256]
EMBED_DIM = 256
ENERGY = False  # energy-parameterised model (score = -grad_x E, for Metropolis-corrected MCMC); its checkpoints are
# gen_<GEN_IDX>_energy_ckpt_<epoch>.pth and do not load as a plain ScoreNet
TRAIN_SUBSET = 0  # train on this many randomly chosen images; 0 = the whole dataset
SEED = 0

# ---- engineering settings: how and where it runs, not what it samples ----
SAVE_EVERY = 5
COMPILE = "off"  # "on": torch.compile the network in place (state_dict keys unchanged)
PRECISION = "float32"  # or "bfloat16": forward passes under autocast, weights and optimizer in float32; "auto":
# bfloat16 only where the device computes it natively
CKPT_DIR = RUN_DIR  # folder this run's checkpoints, training state and loss plot are written to
DATA_ROOT = "data"
DEVICE = "auto"
THREADS = 0
RESUME = False
OVERWRITE = False  # remove this run's earlier files in CKPT_DIR (checkpoints, training state, loss plot), then train

# The settings a resume must share with the run it continues.
CONFIG_KEYS = ["GEN_IDX", "EPOCHS", "BATCH_SIZE", "LR", "LR_END", "LR_SCHEDULE", "CHANNELS", "EMBED_DIM",
               "ENERGY", "TRAIN_SUBSET", "PRECISION", "SEED"]
DEFAULTS_OF_LATER_KEYS = {"PRECISION": "float32", "ENERGY": False}  # what train states saved before a key existed used


def parse_args(argv=None):
    # first pass: find --preset
    preset = configure(globals(), argv, exclude=["CONFIG_KEYS"], choices=BASE_ONLY)["PRESET"]
    # Training has no auto: one timed step would not tell whether a whole run gains by compiling.
    config = configure(globals(), argv, exclude=["CONFIG_KEYS"], defaults=PRESETS[preset] if preset else None,
                       choices={"COMPILE": ("off", "on"), **BASE_ONLY})
    if len(config["CHANNELS"]) != 4 or any(c % 32 for c in config["CHANNELS"]):
        raise UserError(f"--channels needs 4 multiples of 32 (GroupNorm uses 32 groups); got {config['CHANNELS']}")
    if config["ENERGY"] and (config["COMPILE"] == "on" or config["PRECISION"] != "float32"):
        raise UserError("--energy trains in eager float32 (its loss differentiates the score, a gradient itself); "
                        "use --preset cpu or pass --compile off --precision float32")
    return config


def run_name(config):
    """GEN_IDX, or its energy model's name: what every file of this run is named after."""
    return energy_model_name(config["GEN_IDX"]) if config["ENERGY"] else config["GEN_IDX"]


def checkpoint_path(config, epoch):
    return Path(config["CKPT_DIR"]) / base_model_checkpoint(run_name(config), epoch)


def state_path(config):
    return Path(config["CKPT_DIR"]) / train_state(run_name(config))


def run_files(config):
    """This run's files in CKPT_DIR: those an earlier run left, which --overwrite removes, and those it writes;
    none may be shipped."""
    folder = Path(config["CKPT_DIR"])
    extras = [state_path(config), folder / loss_plot(run_name(config))]
    earlier = numbered_files(folder, base_model_checkpoints_glob(run_name(config)))
    planned = [checkpoint_path(config, epoch) for epoch in range(config["EPOCHS"]) if saves_checkpoint(config, epoch)]
    return [*earlier, *extras], [*planned, *extras]


def train(config):
    device = get_device(config["DEVICE"])
    # "auto" is resolved here, so that a training state records (and a resume checks) the precision used.
    config = {**config, "PRECISION": resolve_precision(config["PRECISION"], device)}
    ckpt_dir = ensure_writable_dir(config["CKPT_DIR"])
    resume_file = state_path(config)
    prepare_run(config, run_name(config), resume_file, *run_files(config))

    seed_everything(config["SEED"])
    sde = VESDE()
    dataset = ColouredMNIST(config["GEN_IDX"], root=config["DATA_ROOT"], train=True)
    indices = torch.randperm(len(dataset))[:config["TRAIN_SUBSET"]] if config["TRAIN_SUBSET"] else torch.arange(len(dataset))
    network = EnergyScoreNet if config["ENERGY"] else ScoreNet
    model = network(sde.marginal_prob_std, channels=config["CHANNELS"], embed_dim=config["EMBED_DIM"],
                    input_channels=dataset.channels).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config["LR"])
    steps_per_epoch = math.ceil(len(indices) / config["BATCH_SIZE"])
    scheduler, scheduler_unit = make_scheduler(optimizer, config, steps_per_epoch)
    start_epoch, losses, within_epoch = 0, [], None

    if config["RESUME"]:
        state, start_epoch, losses, within_epoch = restore_run(resume_file, "train_diffusion.py", config, CONFIG_KEYS,
                                                               DEFAULTS_OF_LATER_KEYS, model, optimizer, scheduler)
        indices = state["indices"]

    if config["COMPILE"] == "on":
        compile_in_place([model])
    dtype = PRECISIONS[config["PRECISION"]]
    score_model = model if dtype is None else AutocastScore(model, dtype)

    if start_epoch >= config["EPOCHS"]:
        print(f"{resume_file} is complete ({start_epoch} epochs); nothing to do")
        return model

    def batch_losses(batch):
        return denoising_score_matching_loss(score_model, dataset.batch(batch).to(device), sde).reshape(1)

    def end_epoch(epoch):
        if saves_checkpoint(config, epoch):
            save_weights(model, checkpoint_path(config, epoch))

    def save(epoch, losses, **within_epoch):
        save_training_state(resume_file, config, model, optimizer, scheduler, device, epoch, losses, indices=indices,
                            **within_epoch)

    model.train()
    run_epochs(optimizer, scheduler, scheduler_unit, epochs=config["EPOCHS"], steps_per_epoch=steps_per_epoch,
               start_epoch=start_epoch, losses=losses, within_epoch=within_epoch,
               new_order=lambda: indices[torch.randperm(len(indices))], batch_size=config["BATCH_SIZE"],
               batch_losses=batch_losses, end_epoch=end_epoch, save_state=save, state_file=resume_file,
               describe=f"train {run_name(config)}")
    plot_losses(losses, ckpt_dir / loss_plot(run_name(config)))
    print(f"saved {checkpoint_path(config, config['EPOCHS'] - 1)} (final loss {losses[-1]:.3f})")
    return model


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
