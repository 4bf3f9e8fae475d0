"""Classifier training (docs/reference.md §6): the losses, the trajectory pool, convergence to the exact posterior
on analytic 2-D base models, and the three training scripts on tiny networks."""
import json
import math
import signal

import pytest
import torch
import torch.nn as nn

import train_3way_conditional_classifier
import train_classifier
from sculpting.classifier_training import (Trajectories, TrajectoryPool, every_nth_step, frozen_copy, joint_training_loss,
                                 load_base_models, sample_trajectories, trainable_steps, trajectory_sampler)
from sculpting.cli import flag_name, setting_help
from sculpting.errors import UserError
from sculpting.losses import (conditional_classifier_loss, conditional_keep_prob, joint_non_terminal_loss, joint_soft_targets,
                    joint_terminal_loss, select_steps)
from models.classifier_model import (JointYClassifier, ThreeWayConditionalYClassifier, ThreeWayJointYClassifier,
                                     two_way_joint_log_probs)
from models.score_model import ScoreNet
from samplers import Sampler, pc_trajectory_sampler, time_grid
from sculpting.sde import VESDE
from tests.analytic import GaussianMixtureBases, assert_within_standard_errors, frequency_standard_error
from sculpting.checkpoints import classifier_provenance, file_sha256, load_classifier, write_provenance
from sculpting.stopping import TrainingStopped

SDE = VESDE()
COMPONENT_STD = 0.5
EPS = 1e-3


@pytest.fixture(scope="module")
def bases():
    """Two models on three components; they share the middle one, so p(y | x_0) there is not 0 or 1."""
    return GaussianMixtureBases([[-4.0, 0.0], [0.0, 0.0], [4.0, 0.0]], [[0.6, 0.4, 0.0], [0.0, 0.3, 0.7]],
                                COMPONENT_STD, SDE)


def sample_2d(bases, count, num_steps, keep, generator):
    models = [bases.score_model(i) for i in range(bases.num_models)]
    return sample_trajectories(models, count, Sampler("pc", num_steps), keep, SDE, "cpu", generator, progress=False,
                               shape=(2,))


# ---- losses ----

def test_terminal_loss_is_the_cross_entropy_of_the_marginal():
    joint = torch.tensor([[[0.5, 0.1], [0.1, 0.3]], [[0.1, 0.2], [0.2, 0.5]]]).log()  # marginals .6/.4, .3/.7
    loss = joint_terminal_loss(joint, torch.tensor([0, 1]))
    assert math.isclose(float(loss), -(math.log(0.6) + math.log(0.7)) / 2, rel_tol=1e-6)


def test_soft_targets_put_the_source_on_y1_and_the_target_posterior_on_y2():
    w = joint_soft_targets(torch.tensor([0, 1]), torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    assert torch.allclose(w, torch.tensor([[[0.8, 0.2], [0.0, 0.0]], [[0.0, 0.0], [0.3, 0.7]]]))


def test_non_terminal_loss_is_a_cell_mean_per_step_with_the_reference_weight():
    steps, batch, num_steps = 3, 5, 200
    log_probs = torch.full((steps * batch, 2, 2), math.log(0.25))
    targets = joint_soft_targets(torch.randint(0, 2, (steps * batch,)), torch.softmax(torch.randn(steps * batch, 2), 1))
    loss = joint_non_terminal_loss(log_probs, targets, batch, num_steps)
    # each step: -mean over batch x 4 cells of w log(1/4) = log(4) / 4; weight 1 / (N * 0.3 * 0.1)
    assert math.isclose(float(loss), steps * math.log(4) / 4 / (num_steps * 0.3 * 0.1), rel_tol=1e-5)
    # a smaller share of the steps (--step-fraction) is weighted up, so the expected loss stays the same
    fewer = joint_non_terminal_loss(log_probs, targets, batch, num_steps, step_fraction=0.04)
    assert math.isclose(float(fewer), float(loss) * 0.1 / 0.04, rel_tol=1e-5)


def test_conditional_loss_is_a_sum_with_the_reference_weight_and_divisor():
    selected, per_pair, pairs, num_steps = 7, 4, 6, 500
    log_probs = torch.full((selected * per_pair * pairs, 3), math.log(1 / 3))
    targets = torch.softmax(torch.randn(len(log_probs), 3), 1)
    loss = conditional_classifier_loss(log_probs, targets, per_pair, pairs, num_steps)
    expected = len(log_probs) * math.log(3) / (0.3 * 50 / num_steps) / (num_steps * per_pair * pairs)
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert conditional_keep_prob(500) == 0.1 and conditional_keep_prob(20) == 1.0


def test_step_selection_fractions():
    grid, _ = time_grid(2000)
    times = grid[grid <= 0.7]  # the steps a pool stores; the terminal one last
    candidates = len(times) - 1
    generator = torch.Generator().manual_seed(0)
    joint = [select_steps(times, 0.1, include_last=False, generator=generator) for _ in range(50)]
    assert all(len(s) == 0 or int(s.max()) < len(times) - 1 for s in joint)  # the terminal step: never
    # Each candidate is kept independently: the kept share is a frequency of 50 * candidates trials.
    trials = 50 * candidates
    kept = sum(map(len, joint)) / trials
    assert_within_standard_errors(kept, 0.1, frequency_standard_error(kept, trials), what="joint kept share")
    conditional = [select_steps(times, conditional_keep_prob(2000), include_last=True, generator=generator)
                   for _ in range(50)]
    assert all(int(s[-1]) == len(times) - 1 for s in conditional)  # the terminal step: always
    kept = sum(len(s) - 1 for s in conditional) / trials
    assert_within_standard_errors(kept, 50 / 2000, frequency_standard_error(kept, trials),
                                  what="conditional kept share")
    whole_grid = select_steps(grid, 1.0, include_last=True)  # t > 0.7 is never selected
    assert (grid[whole_grid] <= 0.7).all() and len(whole_grid) == int((grid <= 0.7).sum())


# ---- trajectories and the pool ----

def test_stored_steps_are_the_trainable_ones_of_the_sampled_trajectories(bases):
    stored = sample_2d(bases, 3, 20, trainable_steps, torch.Generator().manual_seed(5))
    models = [bases.score_model(i) for i in range(2)]
    generator = torch.Generator().manual_seed(5)
    full = [pc_trajectory_sampler(m, SDE, 3, 20, shape=(2,), generator=generator, progress=False) for m in models]
    grid = full[0][2]
    kept = grid <= 0.7
    assert torch.equal(stored.times, grid[kept]) and math.isclose(stored.terminal_time, EPS, rel_tol=1e-5)
    assert torch.equal(stored.states, torch.cat([trajectory[kept] for _, trajectory, _ in full], dim=1))
    assert torch.equal(stored.states[-1], torch.cat([x0 for x0, _, _ in full]))  # the terminal state is x_0
    assert stored.sources.tolist() == [0, 0, 0, 1, 1, 1] and stored.num_steps == 20
    test_steps = every_nth_step(10)(torch.linspace(1, EPS, 25))
    assert torch.nonzero(test_steps).flatten().tolist() == [0, 10, 20, 24]


def test_compiled_trajectory_sampler_gives_the_eager_trajectories(tiny_base_checkpoints):
    config = {"SEED": 0, "TRAJECTORY_STEPS": 4, "SNR": 0.16, "COMPILE": "off", "PRECISION": "float32",
              "DENOISE_LAST_STEP": False, "SAMPLER": "pc", "SIGMA_MIN": 0.05, "CHURN": 40.0,
              "GEN_CKPT_DIR": str(tiny_base_checkpoints), "GEN_CKPT_EPOCH": 195}
    models = load_base_models(config, ["M1", "M2"], SDE, "cpu")
    eager = trajectory_sampler(models, config, SDE, "cpu")(3, trainable_steps)
    # DENOISE_LAST_STEP changes the first source's terminal state only (the second source's trajectories
    # follow from the shared generator, which the denoising step draws no noise from).
    denoised = trajectory_sampler(models, {**config, "DENOISE_LAST_STEP": True}, SDE, "cpu")(3, trainable_steps)
    assert torch.equal(denoised.states[:-1, :3], eager.states[:-1, :3])
    assert not torch.allclose(denoised.states[-1, :3], eager.states[-1, :3])
    compiled = trajectory_sampler(models, {**config, "COMPILE": "on"}, SDE, "cpu")(3, trainable_steps)
    assert all(getattr(model, "_compiled_call_impl", None) is not None for model in models)
    torch.testing.assert_close(compiled.states, eager.states, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(compiled.times, eager.times)
    # The pools take the other samplers too: their trajectories' times are SDE times of the noise levels.
    heun = trajectory_sampler(models, {**config, "SAMPLER": "heun-churn", "TRAJECTORY_STEPS": 6}, SDE, "cpu")(
        3, trainable_steps)
    assert heun.num_steps == 6 and heun.states.shape[1] == 6 and float(heun.times.max()) <= 0.7
    assert heun.terminal_time == pytest.approx(float(SDE.time_of_std(0.05)), rel=1e-5)


def test_pool_reuses_its_trajectories_then_resamples():
    calls = []

    def fake_sample(count):
        calls.append(count)
        states = torch.randn(4, 2 * count, 2)
        return Trajectories(states, torch.tensor([0.7, 0.5, 0.2, EPS]), torch.arange(2).repeat_interleave(count), 9)

    pool = TrajectoryPool(fake_sample, size=6, reuse=3)
    generator = torch.Generator().manual_seed(0)
    pools = []
    for _ in range(7):
        samples = pool.draw(4, generator)
        pools.append(pool.trajectories)
        assert len(set(samples.tolist())) == 8  # without replacement
        assert pool.trajectories.sources[samples].tolist() == [0] * 4 + [1] * 4
    assert calls == [6, 6, 6] and pool.refreshes == 3
    assert pools[0] is pools[2] and pools[3] is not pools[2] and pools[6] is not pools[5]


# ---- convergence to the exact posterior ----

class MLPJointClassifier(nn.Module):
    """A tiny trunk for 2-D points with the image classifiers' output parametrisation."""

    num_models = 2
    input_channels = 2

    def __init__(self, hidden=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, x, t):
        std = SDE.marginal_prob_std(t).to(x)[:, None]
        features = torch.cat([x / torch.sqrt(1 + std ** 2), std, torch.log(std)], dim=1)
        return two_way_joint_log_probs(self.net(features))


def forward_marginal_samples(bases, count, t, generator):
    """x_t of the forward process from the uniform mixture of the base models."""
    source = torch.randint(0, bases.num_models, (count,), generator=generator)
    component = torch.multinomial(bases.weights[source], 1, generator=generator).flatten()
    x_0 = bases.means[component] + COMPONENT_STD * torch.randn(count, 2, generator=generator)
    return x_0 + float(SDE.marginal_prob_std(t)) * torch.randn(count, 2, generator=generator)


def test_joint_classifier_converges_to_the_exact_posterior(bases):
    """The project's losses on a pool of trajectories (50 PC steps) learn Q(y1, y2 | x_t) for t <= 0.7.

    Mean absolute errors over forward-process samples: a classifier trained on the terminal loss alone is
    off by 0.04-0.3 at t >= 0.3; this one is within 0.03 (0.05 at the edge t = 0.7), the floor being optimisation
    noise and the sampler's bias. The error that matters is the training's, which one run cannot measure (the
    evaluation's own standard error is below 0.0007): over seeds 0-7 each error's mean + 5 standard deviations
    stays below its bound (largest: 0.021 against 0.03, 0.043 against 0.05 at t = 0.7), so another CPU's
    rounding, a different training path as much as another seed is, leaves the verdict alone."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    pool = TrajectoryPool(lambda count: sample_2d(bases, count, 50, trainable_steps, generator), size=512, reuse=10)
    classifier = MLPJointClassifier()
    steps, warmup = 1200, 100
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for step in range(1, steps + 1):
        samples = pool.draw(256, generator)
        loss, _ = joint_training_loss(classifier, frozen_copy(classifier), pool.trajectories, samples,
                                      non_terminal=step > warmup, generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    exact = bases.joint_classifier()
    classifier.eval()
    with torch.no_grad():
        for t, tolerance in [(EPS, 0.03), (0.1, 0.03), (0.3, 0.03), (0.5, 0.03), (0.7, 0.05)]:
            x_t = forward_marginal_samples(bases, 4000, torch.tensor(t), torch.Generator().manual_seed(1))
            t_batch = torch.full((len(x_t),), t)
            learned, target = classifier(x_t, t_batch).exp(), exact(x_t, t_batch).exp()
            marginal_error = (learned.sum(2) - target.sum(2)).abs()[:, 0].mean()
            assert marginal_error < tolerance, (t, float(marginal_error))
            if t > EPS:  # at t = eps only the marginal is trained (terminal loss); the joint is extrapolated
                joint_error = (learned - target).abs().mean()
                assert joint_error < tolerance, (t, float(joint_error))


# ---- the scripts ----

TINY = ["--trajectory-steps", "3", "--steps", "2", "--pool-size", "2", "--batch-size", "2", "--test-samples", "2",
        "--test-every", "1", "--ckpt-every", "1", "--classifier-channels", "4", "4", "--embed-dim", "8",
        "--t-embed-dim", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny_base_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    for gen_idx in ("M1", "M2", "MN1", "MN2", "MN3"):
        model = ScoreNet(SDE.marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=16, input_channels=3)
        torch.save(model.state_dict(), folder / f"gen_{gen_idx}_ckpt_195.pth")
    return folder


def test_help_lists_every_global(capsys):
    with pytest.raises(SystemExit):
        train_classifier.main(["--help"])
    out = capsys.readouterr().out
    assert all(flag_name(name) in out for name in setting_help(vars(train_classifier)))


def test_train_classifier_writes_loadable_checkpoints_and_plot(tiny_base_checkpoints, tmp_path):
    history = train_classifier.main(TINY + ["--gen-ckpt-dir", str(tiny_base_checkpoints), "--ckpt-dir",
                                            str(tmp_path), "--warmup-steps", "1", "--pool-reuse", "2"])
    # The history the training benchmark reads: a test before training and after each step, with costs.
    assert [entry["step"] for entry in history] == [0, 1, 2]
    assert history[0]["train_seconds"] == 0.0 < history[1]["train_seconds"] <= history[2]["train_seconds"]
    assert [entry["pool_refreshes"] for entry in history] == [0, 1, 1]
    assert history[-1]["result"].accuracy.shape[1] == 2
    assert {p.name for p in tmp_path.iterdir()} == {"classifier_ckpt_1.pth", "classifier_ckpt_2.pth",
                                                    "classifier_ckpt_1.pth.provenance.json",
                                                    "classifier_ckpt_2.pth.provenance.json",
                                                    "classifier_accuracy.png", "classifier_tests.json"}
    # Each checkpoint records the base models it was trained on, by name and content.
    provenance = json.loads((tmp_path / "classifier_ckpt_2.pth.provenance.json").read_text())
    assert [(entry["name"], entry["sha256"]) for entry in provenance["base_models"]] == [
        (g, file_sha256(tiny_base_checkpoints / f"gen_{g}_ckpt_195.pth")) for g in ("M1", "M2")]
    # The same history on disk, for a run in another process.
    written = json.loads((tmp_path / "classifier_tests.json").read_text())
    assert [(entry["step"], entry["pool_refreshes"]) for entry in written] == [(0, 0), (1, 1), (2, 1)]
    assert written[-1]["accuracy"] == history[-1]["result"].accuracy.tolist()
    classifier = load_classifier(tmp_path / "classifier_ckpt_2.pth", JointYClassifier, "cpu", "train_classifier.py")
    assert classifier.trunk.conv1.weight.shape == (4, 3, 3, 3)
    with pytest.raises(UserError, match="--overwrite"):
        train_classifier.main(TINY + ["--gen-ckpt-dir", str(tiny_base_checkpoints), "--ckpt-dir", str(tmp_path)])


def test_overwrite_removes_the_earlier_runs_files_and_only_those(tiny_base_checkpoints, tmp_path):
    args = TINY + ["--gen-ckpt-dir", str(tiny_base_checkpoints), "--ckpt-dir", str(tmp_path)]
    train_classifier.main(args)  # checkpoints 1 and 2
    others = ["subdigits_classifier_ckpt_1.pth", "classifier_ckpt_best.pth", "notes.txt"]
    for name in others:
        (tmp_path / name).write_text("another run's, or the user's")
    train_classifier.main(args + ["--steps", "1", "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["classifier_ckpt_1.pth", "classifier_ckpt_1.pth.provenance.json", "classifier_accuracy.png",
         "classifier_tests.json", *others])


def test_a_signal_stops_classifier_training_after_the_step_saving_it(tiny_base_checkpoints, tmp_path, monkeypatch):
    from sculpting import classifier_training

    real_loss = classifier_training.joint_training_loss

    def loss_then_signal(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return real_loss(*args, **kwargs)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(classifier_training, "joint_training_loss", loss_then_signal)
    with pytest.raises(TrainingStopped) as caught:
        train_classifier.main(TINY + ["--gen-ckpt-dir", str(tiny_base_checkpoints), "--ckpt-dir", str(tmp_path),
                                      "--ckpt-every", "5"])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    saved = tmp_path / "classifier_ckpt_1.pth"
    assert str(caught.value) == (
        f"stopped at step 1 of 2 (SIGTERM); the classifier so far is saved to {saved}; classifier training cannot "
        f"resume (its optimizer state and trajectory pool are not saved): rerun with --overwrite to start over")
    load_classifier(saved, JointYClassifier, "cpu", "train_classifier.py")
    assert (tmp_path / "classifier_ckpt_1.pth.provenance.json").is_file()


@pytest.mark.parametrize("fast_path", [[], ["--compile", "--precision", "bfloat16"]])
def test_train_conditional_classifier_on_compositions(fast_path, tiny_base_checkpoints, tmp_path):
    joint_path = tmp_path / "3way_classifier_ckpt_700.pth"
    torch.save(ThreeWayJointYClassifier(embed_dim=8, t_embed_dim=8, input_channels=3, channels=(4, 4)).state_dict(),
               joint_path)
    train_3way_conditional_classifier.main(TINY + fast_path + ["--gen-ckpt-dir", str(tiny_base_checkpoints),
                                                               "--ckpt-dir", str(tmp_path),
                                                               "--classifier-ckpt", str(joint_path)])
    load_classifier(tmp_path / "3way_conditional_classifier_ckpt_2.pth", ThreeWayConditionalYClassifier, "cpu",
                    "train_3way_conditional_classifier.py")
    provenance = json.loads((tmp_path / "3way_conditional_classifier_ckpt_2.pth.provenance.json").read_text())
    assert provenance["joint_classifier"]["sha256"] == file_sha256(joint_path)
    assert [entry["name"] for entry in provenance["base_models"]] == ["MN1", "MN2", "MN3"]


def test_conditional_training_refuses_a_joint_classifier_of_other_base_models(tiny_base_checkpoints, tmp_path):
    joint_path = tmp_path / "3way_classifier_ckpt_700.pth"
    torch.save(ThreeWayJointYClassifier(embed_dim=8, t_embed_dim=8, input_channels=3, channels=(4, 4)).state_dict(),
               joint_path)
    write_provenance(joint_path, classifier_provenance(
        [(g, tiny_base_checkpoints / f"gen_{g}_ckpt_195.pth") for g in ("M1", "M2", "MN3")]))
    args = TINY + ["--steps", "1", "--gen-ckpt-dir", str(tiny_base_checkpoints), "--ckpt-dir", str(tmp_path / "run"),
                   "--classifier-ckpt", str(joint_path)]
    with pytest.raises(UserError, match=f"{joint_path} was trained on M1, M2, MN3, not MN1, MN2, MN3; .*--force"):
        train_3way_conditional_classifier.main(args)
    train_3way_conditional_classifier.main(args + ["--force"])
    provenance = json.loads((tmp_path / "run" / "3way_conditional_classifier_ckpt_1.pth.provenance.json").read_text())
    assert "not MN1, MN2, MN3" in provenance["forced"]


@pytest.mark.parametrize("script,args,message", [
    (train_classifier, ["--gen-ckpt-dir", "/nonexistent"], "gen_M1_ckpt_195.pth not found; create it with "
                                                           "train_diffusion.py"),
    (train_3way_conditional_classifier, ["--classifier-ckpt", "/nonexistent/j.pth"],
     "j.pth not found; create it with train_3way_classifier.py"),
    (train_classifier, ["--batch-size", "4", "--pool-size", "2"], "--batch-size 4 is larger than --pool-size 2"),
    (train_classifier, ["--pool-reuse", "0"], "--pool-reuse must be positive"),
    (train_classifier, ["--step-fraction", "1.5"], "--step-fraction must be in"),
    (train_classifier, ["--gen-idx-2", "1"], "mix grey and coloured"),
])
def test_bad_input_is_one_user_error(script, args, message, tiny_base_checkpoints, tmp_path):
    defaults = ["--gen-ckpt-dir", str(tiny_base_checkpoints), "--ckpt-dir", str(tmp_path)]
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        script.main(TINY + defaults + args)
