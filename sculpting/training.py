"""What the training scripts share: the learning-rate schedules, the epoch loop (resumable, stopped cleanly by
SIGINT/SIGTERM) and the loss-curve plot."""
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sculpting.checkpoints import atomic_save, load_into, read_training_state, refuse_shipped, remove_files
from sculpting.errors import UserError
from sculpting.stopping import StopRequests, TrainingStopped


def prepare_run(config, run_name, state_file, earlier, planned):
    """Check a training run's folder before any work: nothing shipped among the files it would write (`planned`) or
    remove (`earlier`: what an earlier run of it left); --resume needs `state_file`; without --resume an earlier run
    is refused unless --overwrite, which removes its files."""
    refuse_shipped([*earlier, *planned], "choose another --ckpt-dir")
    if config["RESUME"] and not Path(state_file).is_file():
        raise UserError(f"nothing to resume: {state_file} does not exist; run without --resume to start")
    if not config["RESUME"]:
        if not config["OVERWRITE"] and any(Path(path).exists() for path in earlier):
            raise UserError(f"{config['CKPT_DIR']} already holds a run of {run_name}; pass --resume to continue it "
                            f"or --overwrite to start over")
        remove_files(earlier, "choose another --ckpt-dir")


def saves_checkpoint(config, epoch) -> bool:
    """Whether an epoch ends with a checkpoint: every SAVE_EVERY epochs (not the first) and the last, as the
    reference."""
    return (epoch > 0 and epoch % config["SAVE_EVERY"] == 0) or epoch == config["EPOCHS"] - 1


def save_weights(model, path) -> None:
    """A model's state_dict on the CPU, atomically (the checkpoint format every loader reads)."""
    atomic_save({k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in model.state_dict().items()}, path)


def save_training_state(path, config, model, optimizer, scheduler, device, epoch, losses, **extra) -> None:
    """What --resume continues from (restore_run reads it): after `epoch` epochs or, with run_epochs' position,
    order, total and count in `extra`, that far into the next one; `extra` also holds a script's own entries."""
    atomic_save({"config": config, "epoch": epoch, "losses": losses, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state() if torch.device(device).type == "cuda" else None, **extra}, path)


def restore_run(state_file, made_by, config, config_keys, later_key_defaults, model, optimizer, scheduler):
    """--resume: (the training state, its epoch, its losses, its position within a stopped epoch or None), after
    checking that it was made with the same `config_keys` settings (`later_key_defaults`: what states saved before
    a key existed used) and loading the model, optimizer, scheduler and random generators from it."""
    state = read_training_state(state_file, made_by)
    saved = {k: state["config"].get(k, later_key_defaults.get(k)) for k in config_keys}
    wanted = {k: config[k] for k in config_keys}
    if saved != wanted:
        diff = {k: (saved[k], wanted[k]) for k in config_keys if saved[k] != wanted[k]}
        raise UserError(f"{state_file} was made with other settings (saved, asked): {diff}")
    load_into(model, state["model"], state_file)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    within_epoch = {key: state[key] for key in ("position", "order", "total", "count")} if "position" in state else None
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_rng"])
    return state, state["epoch"], state["losses"], within_epoch


def make_scheduler(optimizer, config, steps_per_epoch):
    """(scheduler, "epoch" or "step"): per-epoch exponential decay LR -> LR_END (reference) or a per-step one-cycle
    schedule peaking at LR, from the config's LR, LR_END, LR_SCHEDULE and EPOCHS."""
    if config["LR_SCHEDULE"] == "exponential":
        gamma = (config["LR_END"] / config["LR"]) ** (1.0 / config["EPOCHS"])
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma), "epoch"
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["LR"], total_steps=config["EPOCHS"] * steps_per_epoch,
        final_div_factor=config["LR"] / config["LR_END"] / 25.0), "step"


def plot_losses(losses, path, ylabel="mean training loss"):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(len(losses)), losses, marker="o")
    ax.set(xlabel="epoch", ylabel=ylabel, yscale="log", title=Path(path).stem)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)



def run_epochs(optimizer, scheduler, scheduler_unit, *, epochs, steps_per_epoch, start_epoch, losses, within_epoch,
               new_order, batch_size, batch_losses, end_epoch, save_state, state_file, describe,
               part_names=("loss",)):
    """The epoch loop every training script shares, from `start_epoch` (and `within_epoch`: a stopped epoch's
    position, order, total and count) to `epochs`.

    new_order() -> the next epoch's image indices; batch_losses(indices) -> a 1-D tensor of the batch's losses, the
    first one optimised, the others reported (`part_names` names them all); end_epoch(epoch) writes the epoch's
    checkpoint; save_state(epoch, losses, **within_epoch) writes `state_file`, which --resume continues from, after
    `epoch` epochs or that far into the next. `losses` gets each epoch's mean (a float, or a list with several
    parts). SIGINT or SIGTERM stops the run at the next step boundary with its state saved
    (stopping.TrainingStopped: one line saying how to resume).
    """
    done = start_epoch * steps_per_epoch + (within_epoch["position"] if within_epoch else 0)
    # Closed on the way out, also by an exception, so that the bar is not drawn again below the error line.
    with StopRequests() as stop, tqdm(total=epochs * steps_per_epoch - done, desc=describe) as progress:
        for epoch in range(start_epoch, epochs):
            if within_epoch is None:
                within_epoch = {"position": 0, "order": new_order(), "total": 0.0, "count": 0}
            order, count = within_epoch["order"], within_epoch["count"]
            total = torch.as_tensor(within_epoch["total"], dtype=torch.float64)
            batches = order.split(batch_size)
            for step in range(within_epoch["position"], len(batches)):
                parts = batch_losses(batches[step])
                if not bool(torch.isfinite(parts).all()):  # checked before the step: the state is still finite
                    save_state(epoch, losses, position=step, order=order, total=total, count=count)
                    raise NonFiniteLoss(f"the loss became {parts.tolist()} at epoch {epoch} step {step + 1} of "
                                        f"{len(batches)}; the state before it is saved to {state_file} (--resume "
                                        f"continues from it); try --compile off, --precision float32 or a lower --lr")
                optimizer.zero_grad(set_to_none=True)
                parts[0].backward()
                optimizer.step()
                if scheduler_unit == "step":
                    scheduler.step()
                total = total + parts.detach().double().cpu() * len(batches[step])
                count += len(batches[step])
                progress.update()
                progress.set_postfix(epoch=epoch, lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                                     **{name: f"{value / count:.3f}" for name, value in zip(part_names, total.tolist())})
                if stop.requested and step + 1 < len(batches):
                    save_state(epoch, losses, position=step + 1, order=order, total=total, count=count)
                    raise _stopped(stop, f"epoch {epoch} step {step + 1} of {len(batches)}", state_file)
            within_epoch = None
            if scheduler_unit == "epoch":
                scheduler.step()
            mean = (total / count).tolist()
            losses.append(mean if len(mean) > 1 else mean[0])
            end_epoch(epoch)
            save_state(epoch + 1, losses)
            if stop.requested and epoch + 1 < epochs:
                raise _stopped(stop, f"epoch {epoch} step {len(batches)} of {len(batches)}", state_file)
    return losses


class NonFiniteLoss(UserError):
    """A training loss that is NaN or infinite: one line, the last finite state kept."""


def _stopped(stop, where, state_file):
    return TrainingStopped(f"stopped at {where} ({stop.requested}); state saved to {state_file}; continue with "
                           f"the same command plus --resume")
