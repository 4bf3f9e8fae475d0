"""Shared machinery of the classifier-training scripts (docs/reference.md §6): trajectory pools, the training losses
on them, the optimizer loop, evaluation by noise level and the accuracy plot.

Used by train_classifier.py (2 models), train_3way_classifier.py (3 models) and
train_3way_conditional_classifier.py (y3 given a label pair).

Trajectory pool: the reference samples fresh trajectories for every optimizer
step (pool size = batch, reuse 1), which on a CPU is infeasible. A pool of K
trajectories per source, reused for R minibatch draws before resampling,
samples the same distribution at a fraction of the cost. The pool stores only
the steps the losses can use (t <= 0.7, the terminal state among them).

Differences from the reference, on purpose: frozen networks (the bootstrap
target copy, the base models, the joint classifier of the conditional script)
run in eval mode, so dropout is off in the targets (the reference leaves it
on); tests use one fixed set of trajectories sampled at the start (the
reference resamples them at every test) and run the classifier in eval mode.
"""
import copy
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sculpting.artefacts import (accuracy_plot, classifier_checkpoint, classifier_checkpoints_glob,
                       numbered_files, provenance_sidecar, test_history)
from sculpting.checkpoints import (atomic_write_text, classifier_provenance, ensure_writable_dir,
                         refuse_shipped, remove_files, write_provenance)
from sculpting.cli import configure, flag_name
from sculpting.composites import COMPOSITE_GUIDANCE, load_model, model_channels, model_identity, model_source
from sculpting.errors import UserError
from sculpting.losses import (JOINT_STEP_FRACTION, NON_TERMINAL_MAX_TIME, conditional_classifier_loss, conditional_keep_prob,
                    joint_non_terminal_loss, joint_soft_targets, joint_terminal_loss, select_steps)
from models import freeze
from models.classifier_model import marginal_log_probs
from models.fast_paths import fast_score_models, resolve_precision
from models.score_model import ScoreNet
from sculpting.runtime import get_device, seed_everything
from samplers import Sampler
from sculpting.sampling import sampler_from_settings
from sculpting.sde import VESDE
from sculpting.stopping import StopRequests, TrainingStopped
from sculpting.training import NonFiniteLoss, save_weights

# Test metrics are averaged over these bands of t; the last band includes t = 1.
TIME_BANDS = (0.0, 0.1, 0.3, 0.5, 0.7, 1.0)
EVAL_CHUNK = 256  # images per classifier call when testing


# ---- configuration ----

def parse_config(namespace, argv=None):
    """The script's settings (`namespace` is its globals()) overridden from argv and checked together."""
    config = configure(namespace, argv)
    sampler_from_settings(config, "TRAJECTORY_STEPS")  # its settings checked before anything runs
    if config["BATCH_SIZE"] > config["POOL_SIZE"]:
        raise UserError(f"--batch-size {config['BATCH_SIZE']} is larger than --pool-size {config['POOL_SIZE']}; "
                        f"a minibatch is drawn from the pool, so pass a batch size <= the pool size")
    if len(config["CLASSIFIER_CHANNELS"]) != 2:
        raise UserError(f"--classifier-channels needs 2 values, got {config['CLASSIFIER_CHANNELS']}")
    refuse_repeated_base_models(config)
    return config


def refuse_repeated_base_models(config):
    """A classifier learns which base model drew a sample: a model named twice gives two labels of one distribution,
    which no classifier can tell apart (training would run for hours towards a meaningless one). A composite is
    the same model however its name is spelt (MN2xMN3, MN3xMN2)."""
    first_flag_of = {}
    for name, model in config.items():
        if not re.fullmatch(r"GEN_IDX_\d+", name):
            continue
        identity = model_identity(model)
        if identity in first_flag_of:
            raise UserError(f"{first_flag_of[identity]} and {flag_name(name)} name the same model {model}; a "
                            f"classifier separates different models")
        first_flag_of[identity] = flag_name(name)


def checkpoint_path(config, step):
    return Path(config["CKPT_DIR"]) / classifier_checkpoint(config["CLASSIFIER_NAME"], step)


def saves_checkpoint(config, step):
    return step % config["CKPT_EVERY"] == 0 or step == config["STEPS"]


def run_files(config):
    """This run's files in CKPT_DIR: those an earlier run of CLASSIFIER_NAME left, which --overwrite removes, and
    those it writes; none may be shipped."""
    folder, name = Path(config["CKPT_DIR"]), config["CLASSIFIER_NAME"]
    extras = [folder / test_history(name), folder / accuracy_plot(name)]
    earlier = numbered_files(folder, classifier_checkpoints_glob(name))
    planned = [checkpoint_path(config, step) for step in range(1, config["STEPS"] + 1)
               if saves_checkpoint(config, step)]
    return [*with_sidecars(earlier), *extras], [*with_sidecars(planned), *extras]


def with_sidecars(checkpoints):
    return [path for checkpoint in checkpoints for path in (checkpoint, provenance_sidecar(checkpoint))]


def start_run(config):
    """Check that CKPT_DIR is writable and holds no earlier run of this name (--overwrite: remove its files), seed;
    the device."""
    ckpt_dir = ensure_writable_dir(config["CKPT_DIR"])
    earlier, planned = run_files(config)
    refuse_shipped([*earlier, *planned], "choose another --ckpt-dir")
    if not config["OVERWRITE"] and any(path.exists() for path in earlier):
        raise UserError(f"{ckpt_dir} already holds a run of {config['CLASSIFIER_NAME']}; pass --overwrite to "
                        f"replace it or --classifier-name to train another classifier beside it")
    remove_files(earlier, "choose another --ckpt-dir")
    seed_everything(config["SEED"])
    return get_device(config["DEVICE"])


def base_model_files(config, gen_idxs):
    """[(GEN_IDX, its checkpoint GEN_CKPT_DIR/gen_{g}_ckpt_{GEN_CKPT_EPOCH}.pth, or, for a composite, its
    composites.CompositeSource)]: what the classifier trains on."""
    return [(g, model_source(g, config["GEN_CKPT_DIR"], config["GEN_CKPT_EPOCH"],
                             config.get("COMPOSITE_CLASSIFIER_DIR"),
                             config.get("COMPOSITE_GUIDANCE", COMPOSITE_GUIDANCE))) for g in gen_idxs]


def load_base_models(config, gen_idxs, sde, device):
    """The frozen score models the classifier separates: base models gen_{g}_ckpt_{GEN_CKPT_EPOCH}.pth from
    GEN_CKPT_DIR, or composites of two; they must agree on channels."""
    channels = {model_channels(g) for g in gen_idxs}
    if len(channels) > 1:
        raise UserError(f"base models {', '.join(gen_idxs)} mix grey and coloured datasets; compose models of one kind")
    return [load_model(source, sde, device, input_channels=model_channels(g), force=config.get("FORCE", False))
            for g, source in base_model_files(config, gen_idxs)]


def build_classifier(classifier_class, config, input_channels, device):
    return classifier_class(embed_dim=config["EMBED_DIM"], t_embed_dim=config["T_EMBED_DIM"],
                            input_channels=input_channels, channels=tuple(config["CLASSIFIER_CHANNELS"])).to(device)


def frozen_copy(network):
    """A detached copy in eval mode: the bootstrap target of the non-terminal loss."""
    return freeze(copy.deepcopy(network))


# ---- trajectories ----

@dataclass
class Trajectories:
    """Stored steps of n sampled trajectories, grouped by the source (score model) that sampled them."""
    states: torch.Tensor   # [S, n, *shape]
    times: torch.Tensor    # [S] grid time of each stored step, descending; the terminal state is last
    sources: torch.Tensor  # [n] index of each trajectory's source
    num_steps: int         # N, the length of the sampling grid (the loss weights depend on it)

    def gather(self, steps, samples):
        """States [len(steps), len(samples), *shape] of the given stored steps and trajectories."""
        device = self.states.device
        return self.states[steps.to(device)[:, None], samples.to(device)[None, :]]

    @property
    def terminal_time(self):
        return float(self.times[-1])


def trainable_steps(grid):
    """Steps a loss can use: t <= 0.7 (the terminal state, at t = eps, is one of them)."""
    return grid <= NON_TERMINAL_MAX_TIME


def every_nth_step(stride):
    """Every `stride`-th grid step from t = 1 plus the terminal state: the test keeps the whole t range."""
    def keep(grid):
        index = torch.arange(len(grid), device=grid.device)
        return (index % stride == 0) | (index == len(grid) - 1)
    return keep


def sample_trajectories(sources, count, sampler: Sampler, keep, sde, device, generator=None, progress=True,
                        shape=None):
    """`count` trajectories of each source drawn by `sampler`, storing only the steps whose time t satisfies
    keep(times). `shape` of one sample defaults to an image with the source's input_channels."""
    kept_states, times = [], None
    for source in sources:
        _, trajectory, grid = sampler.trajectory(source, sde, count, shape=shape, device=device, generator=generator,
                                                 progress=progress)
        kept = torch.nonzero(keep(grid)).flatten()
        kept_states.append(trajectory[kept])  # a copy, so the full trajectory is freed
        times = grid[kept]
        del trajectory
    sources_index = torch.arange(len(sources), device=device).repeat_interleave(count)
    return Trajectories(torch.cat(kept_states, dim=1), times, sources_index, sampler.num_steps)


class TrajectoryPool:
    """`size` trajectories per source, resampled after every `reuse` minibatch draws.

    `sample(count)` returns Trajectories of `count` per source. size = batch and
    reuse = 1 is the reference's fresh sampling for every optimizer step.
    """

    def __init__(self, sample, size, reuse):
        self.sample, self.size, self.reuse = sample, size, reuse
        self.trajectories = None
        self.refreshes = 0
        self._draws_left = 0

    def draw(self, batch_size, generator=None):
        """Indices of `batch_size` trajectories of each source, drawn without replacement from the pool."""
        if self._draws_left == 0:
            self.trajectories = None  # free the old pool before sampling the new one
            self.trajectories = self.sample(self.size)
            self.refreshes += 1
            self._draws_left = self.reuse
        self._draws_left -= 1
        sources = self.trajectories.sources.cpu()
        picks = []
        for source in range(int(sources.max()) + 1):
            members = torch.nonzero(sources == source).flatten()
            picks.append(members[torch.randperm(len(members), generator=generator)[:batch_size]])
        return torch.cat(picks)


# ---- training losses on trajectories ----

def _times_like(time, count, device):
    return torch.full((count,), float(time), device=device)


def joint_training_loss(classifier, target, trajectories, samples, non_terminal, terminal_scale=1.0,
                        step_fraction=JOINT_STEP_FRACTION, generator=None):
    """Loss of a joint classifier on trajectories (labels = source index): terminal cross-entropy, plus the
    bootstrapped non-terminal loss on a random `step_fraction` of the steps with t <= 0.7 (the reference: 10%)
    when `non_terminal`.
    Returns (loss, {"terminal": ..., "non_terminal": ...}) with float parts for logging."""
    device = trajectories.states.device
    labels = trajectories.sources[samples.to(device)]
    last = torch.tensor([len(trajectories.times) - 1])
    x_0 = trajectories.gather(last, samples)[0]
    t_0 = _times_like(trajectories.terminal_time, len(samples), device)
    terminal = joint_terminal_loss(classifier(x_0, t_0), labels) * terminal_scale
    parts = {"terminal": terminal.item()}
    if not non_terminal:
        return terminal, parts
    steps = select_steps(trajectories.times, step_fraction, include_last=False, generator=generator)
    if len(steps) == 0:
        parts["non_terminal"] = 0.0
        return terminal, parts
    with torch.no_grad():
        soft_targets = joint_soft_targets(labels, marginal_log_probs(target(x_0, t_0)).exp())
    x_t = trajectories.gather(steps, samples).flatten(0, 1)  # step-major: step k's minibatch is block k
    t = trajectories.times[steps.to(device)].repeat_interleave(len(samples))
    non_terminal_loss = joint_non_terminal_loss(classifier(x_t, t), soft_targets.repeat(len(steps), 1, 1),
                                                len(samples), trajectories.num_steps, step_fraction=step_fraction)
    parts["non_terminal"] = non_terminal_loss.item()
    return terminal + non_terminal_loss, parts


def conditional_training_loss(classifier, joint_classifier, trajectories, samples, pairs, generator=None):
    """Loss of the conditional classifier Q3(y3 | x_t, y1, y2) on trajectories of compositions p(x | y1, y2)
    (source k sampled pairs[k], 1-based): soft targets are the frozen joint classifier's marginal
    Q(y | x_0) at the terminal state; steps with t <= 0.7 are each kept with probability 50/N, the last
    always. Returns (loss, {"conditional": float})."""
    device = trajectories.states.device
    pair_labels = torch.tensor(pairs, device=device)[trajectories.sources[samples.to(device)]]  # [b, 2]
    last = torch.tensor([len(trajectories.times) - 1])
    x_0 = trajectories.gather(last, samples)[0]
    with torch.no_grad():
        soft_targets = marginal_log_probs(
            joint_classifier(x_0, _times_like(trajectories.terminal_time, len(samples), device))).exp()
    steps = select_steps(trajectories.times, conditional_keep_prob(trajectories.num_steps), include_last=True,
                         generator=generator)
    x_t = trajectories.gather(steps, samples).flatten(0, 1)  # step-major: step k's minibatch is block k
    t = trajectories.times[steps.to(device)].repeat_interleave(len(samples))
    y_1, y_2 = (pair_labels[:, k].repeat(len(steps)) for k in (0, 1))
    loss = conditional_classifier_loss(classifier(x_t, t, y_1, y_2), soft_targets.repeat(len(steps), 1),
                                       len(samples) // len(pairs), len(pairs), trajectories.num_steps)
    return loss, {"conditional": loss.item()}


# ---- testing ----

@dataclass
class TestResult:
    times: torch.Tensor           # [S]
    loss: torch.Tensor            # [S] mean of -sum_y target(y) log Q(y | x_t)
    accuracy: torch.Tensor        # [S, G] per source: argmax Q == argmax target
    terminal_probs: torch.Tensor  # [G, m] mean Q(y | x_0) per source
    terminal_targets: torch.Tensor  # [G, m] mean target per source


@torch.no_grad()
def evaluate(predict, test, targets):
    """Score `predict(x, t, sample_indices) -> log Q [b, m]` on every stored step of the test trajectories
    against `targets` [n, m] (one-hot source labels, or soft targets)."""
    device = test.states.device
    targets = targets.to(device)
    num_sources = int(test.sources.max()) + 1
    source_one_hot = F.one_hot(test.sources, num_sources).float()  # [n, G], for per-source means
    losses, accuracies, terminal_probs = [], [], None
    for step, grid_time in enumerate(test.times):
        log_probs = torch.cat([predict(test.states[step, chunk], _times_like(grid_time, len(chunk), device), chunk)
                               for chunk in torch.arange(len(test.sources), device=device).split(EVAL_CHUNK)])
        losses.append(-(targets * log_probs).sum(dim=1).mean())
        correct = (log_probs.argmax(dim=1) == targets.argmax(dim=1)).float()
        accuracies.append(correct @ source_one_hot / source_one_hot.sum(dim=0))
        terminal_probs = log_probs.exp()
    per_source = source_one_hot.T / source_one_hot.sum(dim=0)[:, None]
    return TestResult(test.times.cpu(), torch.stack(losses).cpu(), torch.stack(accuracies).cpu(),
                      (per_source @ terminal_probs).cpu(), (per_source @ targets).cpu())


def band_summary(result):
    """[(band label, mean loss, mean accuracy)] over the stored steps in each band of t."""
    rows = []
    for low, high in zip(TIME_BANDS[:-1], TIME_BANDS[1:]):
        last_band = high == TIME_BANDS[-1]
        in_band = (result.times >= low) & ((result.times <= high) if last_band else (result.times < high))
        if in_band.any():
            label = f"[{low:.1f},{high:.1f}{']' if last_band else ')'}"
            rows.append((label, float(result.loss[in_band].mean()), float(result.accuracy[in_band].mean())))
    return rows


def format_result(result, source_names, step):
    def vector(values):
        return "[" + " ".join(f"{v:.2f}" for v in values) + "]"

    lines = [f"test after step {step}: terminal accuracy "
             + ", ".join(f"{name} {float(acc):.3f}" for name, acc in zip(source_names, result.accuracy[-1]))]
    lines += [f"  {name}: mean Q(y|x_0) {vector(probs)}, mean target {vector(target)}"
              for name, probs, target in zip(source_names, result.terminal_probs, result.terminal_targets)]
    lines.append("  by t: " + "; ".join(f"{label} loss {loss:.3f} acc {acc:.3f}"
                                       for label, loss, acc in band_summary(result)))
    return "\n".join(lines)


def plot_accuracy(result, source_names, path, title):
    """Accuracy versus t per source and overall (the t <= 0.7 region is the trained one)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, accuracy in zip(source_names, result.accuracy.T):
        ax.plot(result.times, accuracy, marker=".", label=name)
    ax.plot(result.times, result.accuracy.mean(dim=1), color="black", linewidth=2, label="all")
    ax.axvspan(NON_TERMINAL_MAX_TIME, 1.0, color="grey", alpha=0.15, label="not trained")
    ax.set(xlabel="t", ylabel="test accuracy", ylim=(-0.02, 1.02), xlim=(0.0, 1.0), title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def make_tester(config, classifier, predict, test, targets, source_names):
    """run_test(step): evaluate in eval mode, print a summary, rewrite <CLASSIFIER_NAME>_accuracy.png."""
    plot_path = Path(config["CKPT_DIR"]) / accuracy_plot(config["CLASSIFIER_NAME"])

    def run_test(step):
        classifier.eval()
        result = evaluate(predict, test, targets)
        classifier.train()
        tqdm.write(format_result(result, source_names, step))
        plot_accuracy(result, source_names, plot_path, f"{config['CLASSIFIER_NAME']} after step {step}")
        return result

    return run_test


# ---- the optimizer loop ----

def fit(config, classifier, training_loss, run_test, provenance, counters=None):
    """Adadelta (with a per-step StepLR when LR_DECAY < 1) for STEPS steps; a test before training and every
    TEST_EVERY steps; a checkpoint (plain state_dict, with `provenance` in its sidecar) every CKPT_EVERY steps and
    after the last. `training_loss(step)` (1-based) returns (loss, {name: float}). SIGINT or SIGTERM stops at the
    end of the step, saving a checkpoint of it (training does not resume: optimizer and pool are not saved).

    Returns the history of tests: [{"step", "train_seconds" (wall time of the training steps so far, tests
    excluded), "result", **counters()}], also written after every test to <CKPT_DIR>/<CLASSIFIER_NAME>_tests.json
    (each result as its "times" and "accuracy" [time, source])."""
    history, train_seconds = [], 0.0
    history_path = Path(config["CKPT_DIR"]) / test_history(config["CLASSIFIER_NAME"])

    def record(step, result):
        history.append({"step": step, "train_seconds": train_seconds, "result": result,
                        **(counters() if counters else {})})
        atomic_write_text(history_path, json.dumps([
            {**{k: v for k, v in entry.items() if k != "result"}, "times": entry["result"].times.tolist(),
             "accuracy": entry["result"].accuracy.tolist()} for entry in history]) + "\n")

    def save(step):
        path = checkpoint_path(config, step)
        save_weights(classifier, path)
        write_provenance(path, provenance)
        return path

    optimizer = torch.optim.Adadelta(classifier.parameters(), lr=config["LR"])
    scheduler = (torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=config["LR_DECAY"])
                 if config["LR_DECAY"] < 1.0 else None)
    record(0, run_test(0))
    with StopRequests() as stop, tqdm(range(1, config["STEPS"] + 1), desc=f"train {config['CLASSIFIER_NAME']}") \
            as progress:  # closed also by an exception: the bar is not drawn again below the error line
        for step in progress:
            started = time.perf_counter()
            classifier.train()
            loss, parts = training_loss(step)
            if not bool(torch.isfinite(loss)):  # before the step: the classifier is still the last finite one
                kept = f"the classifier after step {step - 1} is saved to {save(step - 1)}" if step > 1 else \
                    "nothing was saved"
                raise NonFiniteLoss(f"the loss became {loss.item()} at step {step}; {kept}; try --compile off, "
                                    f"--precision float32 or a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            train_seconds += time.perf_counter() - started
            progress.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.4f}" for k, v in parts.items()})
            last = step == config["STEPS"]
            if step % config["TEST_EVERY"] == 0 or last:
                record(step, run_test(step))
            if saves_checkpoint(config, step) or (stop.requested and not last):
                saved = save(step)
            if stop.requested and not last:
                raise TrainingStopped(
                    f"stopped at step {step} of {config['STEPS']} ({stop.requested}); the classifier so far is saved "
                    f"to {saved}; classifier training cannot resume (its optimizer state and trajectory pool are "
                    f"not saved): rerun with --overwrite to start over")
    print(f"saved {checkpoint_path(config, config['STEPS'])}")
    return history


def trajectory_sampler(sources, config, sde, device):
    """sample(count, keep): `count` trajectories of each source score model, from one seeded generator, drawn
    by the sampler the globals describe (SAMPLER, TRAJECTORY_STEPS, ...: sampler_from_settings), on the sample
    scripts' fast path when COMPILE or PRECISION ask for it (the base score networks compiled; autocast)."""
    generator = torch.Generator(device=device).manual_seed(config["SEED"])
    sampler = sampler_from_settings(config, "TRAJECTORY_STEPS")
    precision = resolve_precision(config["PRECISION"], device)
    networks = [m for source in sources for m in source.modules() if isinstance(m, ScoreNet)]
    sources = fast_score_models(sources, networks, config["COMPILE"], precision)

    def sample(count, keep):
        return sample_trajectories(sources, count, sampler, keep, sde, device, generator)

    return sample


# ---- the joint classifiers (2 or 3 base models) ----

def train_joint_classifier(config, gen_idxs, classifier_class):
    """Train a joint classifier Q(y1, y2 | x_t) on trajectories of the base models `gen_idxs`."""
    device = start_run(config)
    sde = VESDE()
    score_models = load_base_models(config, gen_idxs, sde, device)
    provenance = classifier_provenance(base_model_files(config, gen_idxs))
    classifier = build_classifier(classifier_class, config, score_models[0].input_channels, device)
    draw_generator = torch.Generator().manual_seed(config["SEED"])
    sample = trajectory_sampler(score_models, config, sde, device)

    test = sample(config["TEST_SAMPLES"], every_nth_step(config["TEST_STEP_STRIDE"]))
    pool = TrajectoryPool(lambda count: sample(count, trainable_steps), config["POOL_SIZE"], config["POOL_REUSE"])
    target = None

    def training_loss(step):
        nonlocal target
        if (step - 1) % config["TARGET_UPDATE_EVERY"] == 0:
            target = frozen_copy(classifier)
        samples = pool.draw(config["BATCH_SIZE"], draw_generator)
        return joint_training_loss(classifier, target, pool.trajectories, samples,
                                   non_terminal=step > config["WARMUP_STEPS"],
                                   terminal_scale=config["TERMINAL_LOSS_SCALE"],
                                   step_fraction=config["STEP_FRACTION"], generator=draw_generator)

    run_test = make_tester(config, classifier, lambda x, t, _: marginal_log_probs(classifier(x, t)), test,
                           F.one_hot(test.sources, len(gen_idxs)).float(), list(gen_idxs))
    return fit(config, classifier, training_loss, run_test, provenance,
               counters=lambda: {"pool_refreshes": pool.refreshes})
