"""Train one base score model on a coloured-MNIST dataset (docs/reference.md §6).

Edit the globals or override them from the command line (--gen-idx MN2 --epochs 20 ...).
Writes gen_{GEN_IDX}_ckpt_{epoch}.pth (plain state_dict, the reference's format)
every SAVE_EVERY epochs and after the last one, plus a training state beside
them for --resume, and a loss-curve PNG at the end.

CPU recipe (about 10 minutes on 2 cores, see README):
    python train_diffusion.py --preset cpu --gen-idx MN1         # 12 epochs, float32
    python train_diffusion.py --preset cpu-24 --gen-idx MN1   # 24 epochs, bfloat16 where native: reproduce.py's
    python train_diffusion.py --preset cpu --gen-idx M1 --energy   # score = -grad E, for MALA/HMC (issue 25)
"""
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from artefacts import energy_model_name, base_model_checkpoint, base_model_checkpoints_glob, loss_plot, train_state
from checkpoints import atomic_save, ensure_writable_dir, load_into
from cli import configure, run_main
from custom_datasets import ColouredMNIST
from errors import UserError
from losses import denoising_score_matching_loss
from models.fast_paths import PRECISIONS, AutocastScore, compile_in_place, resolve_precision
from models.energy_model import EnergyScoreNet
from models.score_model import ScoreNet
from recipes import PRESETS
from runtime import get_device, seed_everything
from sde import VESDE

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
SAVE_EVERY = 5
TRAIN_SUBSET = 0  # train on this many randomly chosen images; 0 = the whole dataset
COMPILE = False  # torch.compile the network in place (state_dict keys unchanged)
PRECISION = "float32"  # or "bfloat16": forward passes under autocast, weights and optimizer in float32; "auto":
# bfloat16 only where the device computes it natively
CKPT_DIR = "checkpoints"
DATA_ROOT = "data"
SEED = 0
DEVICE = "auto"
RESUME = False
OVERWRITE = False
PRESET = None

# The settings a resume must share with the run it continues.
CONFIG_KEYS = ["GEN_IDX", "EPOCHS", "BATCH_SIZE", "LR", "LR_END", "LR_SCHEDULE", "CHANNELS", "EMBED_DIM",
               "ENERGY", "TRAIN_SUBSET", "PRECISION", "SEED"]
DEFAULTS_OF_LATER_KEYS = {"PRECISION": "float32", "ENERGY": False}  # what train states saved before a key existed used


def parse_args(argv=None):
    preset = configure(globals(), argv, exclude=["CONFIG_KEYS"])["PRESET"]  # first pass: find --preset
    config = configure(globals(), argv, exclude=["CONFIG_KEYS"], defaults=PRESETS[preset] if preset else None)
    if len(config["CHANNELS"]) != 4 or any(c % 32 for c in config["CHANNELS"]):
        raise UserError(f"--channels needs 4 multiples of 32 (GroupNorm uses 32 groups); got {config['CHANNELS']}")
    if config["ENERGY"] and (config["COMPILE"] or config["PRECISION"] != "float32"):
        raise UserError("--energy trains in eager float32 (its loss differentiates the score, a gradient itself); "
                        "use --preset cpu or pass --no-compile --precision float32")
    return config


def run_name(config):
    """GEN_IDX, or its energy model's name: what every file of this run is named after."""
    return energy_model_name(config["GEN_IDX"]) if config["ENERGY"] else config["GEN_IDX"]


def checkpoint_path(config, epoch):
    return Path(config["CKPT_DIR"]) / base_model_checkpoint(run_name(config), epoch)


def state_path(config):
    return Path(config["CKPT_DIR"]) / train_state(run_name(config))


def existing_run(config):
    earlier_checkpoints = Path(config["CKPT_DIR"]).glob(base_model_checkpoints_glob(run_name(config)))
    return state_path(config).exists() or any(earlier_checkpoints)


def make_scheduler(optimizer, config, steps_per_epoch):
    """Per-epoch exponential decay (reference) or a per-step one-cycle schedule."""
    if config["LR_SCHEDULE"] == "exponential":
        gamma = (config["LR_END"] / config["LR"]) ** (1.0 / config["EPOCHS"])
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma), "epoch"
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["LR"], total_steps=config["EPOCHS"] * steps_per_epoch,
        final_div_factor=config["LR"] / config["LR_END"] / 25.0), "step"


def plot_losses(losses, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(losses)), losses, marker="o")
    ax.set(xlabel="epoch", ylabel="mean training loss", yscale="log", title=Path(path).stem)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(config):
    device = get_device(config["DEVICE"])
    # "auto" is resolved here, so that a training state records (and a resume checks) the precision used.
    config = {**config, "PRECISION": resolve_precision(config["PRECISION"], device)}
    ckpt_dir = ensure_writable_dir(config["CKPT_DIR"])
    resume_file = state_path(config)
    if config["RESUME"] and not resume_file.is_file():
        raise UserError(f"nothing to resume: {resume_file} does not exist; run without --resume to start")
    if not config["RESUME"] and not config["OVERWRITE"] and existing_run(config):
        raise UserError(f"{ckpt_dir} already holds a run of {run_name(config)}; pass --resume to continue it "
                        f"or --overwrite to start over")

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
    start_epoch, losses = 0, []

    if config["RESUME"]:
        state = torch.load(resume_file, map_location="cpu", weights_only=False)
        saved = {k: state["config"].get(k, DEFAULTS_OF_LATER_KEYS.get(k)) for k in CONFIG_KEYS}
        wanted = {k: config[k] for k in CONFIG_KEYS}
        if saved != wanted:
            diff = {k: (saved[k], wanted[k]) for k in CONFIG_KEYS if saved[k] != wanted[k]}
            raise UserError(f"{resume_file} was made with other settings (saved, asked): {diff}")
        load_into(model, state["model"], resume_file)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, losses, indices = state["epoch"], state["losses"], state["indices"]
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])

    if config["COMPILE"]:
        compile_in_place([model])
    dtype = PRECISIONS[config["PRECISION"]]
    score_model = model if dtype is None else AutocastScore(model, dtype)

    if start_epoch >= config["EPOCHS"]:
        print(f"{resume_file} is complete ({start_epoch} epochs); nothing to do")
        return model
    progress = tqdm(total=(config["EPOCHS"] - start_epoch) * steps_per_epoch, desc=f"train {run_name(config)}")
    for epoch in range(start_epoch, config["EPOCHS"]):
        model.train()
        order = indices[torch.randperm(len(indices))]
        total, count = 0.0, 0
        for batch in order.split(config["BATCH_SIZE"]):
            x = dataset.batch(batch).to(device)
            loss = denoising_score_matching_loss(score_model, x, sde)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler_unit == "step":
                scheduler.step()
            total += loss.item() * len(batch)
            count += len(batch)
            progress.update()
            progress.set_postfix(epoch=epoch, loss=f"{total / count:.2f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if scheduler_unit == "epoch":
            scheduler.step()
        losses.append(total / count)
        last = epoch == config["EPOCHS"] - 1
        if (epoch > 0 and epoch % config["SAVE_EVERY"] == 0) or last:
            atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, checkpoint_path(config, epoch))
        atomic_save({"config": config, "epoch": epoch + 1, "losses": losses, "indices": indices,
                     "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else None}, resume_file)
    progress.close()
    plot_losses(losses, ckpt_dir / loss_plot(run_name(config)))
    print(f"saved {checkpoint_path(config, config['EPOCHS'] - 1)} (final loss {losses[-1]:.3f})")
    return model


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    run_main(main)
