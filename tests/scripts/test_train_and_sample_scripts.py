"""train_diffusion.py and sample_individual_model.py: CLI, resume, bad input."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import train_diffusion
from sculpting import training
import sample_individual_model
from sculpting.cli import flag_name, setting_help
from sculpting.errors import UserError
from sculpting.stopping import TrainingStopped

TINY = ["--gen-idx", "M1", "--channels", "32", "32", "32", "32", "--embed-dim", "16", "--train-subset", "64",
        "--batch-size", "32", "--epochs", "2", "--save-every", "1"]


def run_script(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_global():
    out = run_script("train_diffusion.py", "--help").stdout
    for name in setting_help(vars(train_diffusion), exclude=["CONFIG_KEYS"]):
        assert flag_name(name) in out


def test_cli_overrides_and_preset(data_root):
    config = train_diffusion.parse_args(["--gen-idx", "MN2", "--epochs", "20", "--channels", "32", "64", "96", "128"])
    assert (config["GEN_IDX"], config["EPOCHS"], config["CHANNELS"]) == ("MN2", 20, [32, 64, 96, 128])
    assert config["BATCH_SIZE"] == 32 and config["LR_SCHEDULE"] == "exponential"  # reference defaults
    preset = train_diffusion.parse_args(["--preset", "cpu", "--epochs", "3"])
    assert preset["EPOCHS"] == 3  # an explicit flag wins over the preset
    assert preset["LR_SCHEDULE"] == "onecycle" and preset["CHANNELS"] == [32, 64, 128, 128]
    assert preset["PRECISION"] == "float32" and preset["COMPILE"] == "off"
    longer = train_diffusion.parse_args(["--preset", "cpu-24", "--gen-idx", "1"])
    assert (longer["EPOCHS"], longer["PRECISION"], longer["COMPILE"]) == (24, "auto", "on")
    assert longer["CHANNELS"] == preset["CHANNELS"] and longer["LR_SCHEDULE"] == "onecycle"


def test_resume_equals_uninterrupted_run(data_root, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    train_diffusion.main(TINY + ["--ckpt-dir", str(whole), "--data-root", str(data_root)])

    interrupted = tmp_path / "interrupted"
    real_save = training.atomic_save  # what writes the training state

    def save_then_crash(obj, path):
        real_save(obj, path)
        if str(path).endswith("train_state.pth") and obj["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "atomic_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_diffusion.main(TINY + ["--ckpt-dir", str(interrupted), "--data-root", str(data_root)])
    monkeypatch.undo()
    assert not (interrupted / "gen_M1_ckpt_1.pth").exists()
    train_diffusion.main(TINY + ["--ckpt-dir", str(interrupted), "--data-root", str(data_root), "--resume"])

    a = torch.load(whole / "gen_M1_ckpt_1.pth")
    b = torch.load(interrupted / "gen_M1_ckpt_1.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "gen_M1_loss.png").stat().st_size > 0

    # SIGINT in the middle of an epoch (the first step of 2 in epoch 0): the state at that step is saved, the run
    # stops with one line, the signal handlers are put back, and --resume ends bit-identical.
    stopped = tmp_path / "stopped"
    real_loss, calls = train_diffusion.denoising_score_matching_loss, []

    def loss_then_signal(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return real_loss(*args, **kwargs)

    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(train_diffusion, "denoising_score_matching_loss", loss_then_signal)
    with pytest.raises(TrainingStopped) as caught:
        train_diffusion.main(TINY + ["--ckpt-dir", str(stopped), "--data-root", str(data_root)])
    monkeypatch.undo()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert str(caught.value) == (f"stopped at epoch 0 step 1 of 2 (SIGINT); state saved to "
                                 f"{stopped / 'gen_M1_train_state.pth'}; continue with the same command plus --resume")
    assert torch.load(stopped / "gen_M1_train_state.pth", weights_only=False)["position"] == 1
    train_diffusion.main(TINY + ["--ckpt-dir", str(stopped), "--data-root", str(data_root), "--resume"])
    assert len(calls) == 1
    a = torch.load(whole / "gen_M1_ckpt_1.pth")
    b = torch.load(stopped / "gen_M1_ckpt_1.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    states = [torch.load(folder / "gen_M1_train_state.pth", weights_only=False) for folder in (whole, stopped)]
    assert states[0]["losses"] == states[1]["losses"]


def test_sigterm_saves_the_state_and_says_how_to_resume(tmp_path):
    """A real SIGTERM to a running training process: exit 2, the last line says where the state is."""
    args = [sys.executable, "train_diffusion.py", *TINY, "--epochs", "1000", "--ckpt-dir", str(tmp_path), "--device",
            "cpu"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "gen_M1_train_state.pth"
    deadline = time.time() + 120
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train_diffusion.py: error: stopped at epoch ") and "(SIGTERM); state saved to " in last
    assert last.endswith(f"{state}; continue with the same command plus --resume")


def test_overwrite_removes_the_earlier_runs_files_and_only_those(data_root, tmp_path):
    args = TINY + ["--ckpt-dir", str(tmp_path), "--data-root", str(data_root)]
    train_diffusion.main(args + ["--epochs", "3"])  # checkpoints 0, 1, 2
    others = ["gen_M2_ckpt_0.pth", "gen_M1_energy_ckpt_0.pth", "gen_M1_ckpt_best.pth", "notes.txt"]
    for name in others:
        (tmp_path / name).write_text("another run's, or the user's")
    train_diffusion.main(args + ["--epochs", "1", "--overwrite"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["gen_M1_ckpt_0.pth", "gen_M1_train_state.pth", "gen_M1_loss.png", *others])


def test_bfloat16_compiled_training_keeps_the_checkpoint_format(data_root, tmp_path):
    """--compile --precision bfloat16 (the cpu-24 preset's; the cpu preset stays float32) trains float32 weights
    with the reference's keys, and a resume must keep the precision it started with."""
    train_diffusion.main(TINY + ["--ckpt-dir", str(tmp_path), "--data-root", str(data_root), "--epochs", "1",
                                 "--compile", "on", "--precision", "bfloat16"])
    state = torch.load(tmp_path / "gen_M1_ckpt_0.pth")
    reference = train_diffusion.ScoreNet(lambda t: t, channels=[32, 32, 32, 32], embed_dim=16, input_channels=3)
    assert state.keys() == reference.state_dict().keys()
    assert all(value.dtype == torch.float32 for value in state.values())
    with pytest.raises(UserError, match="PRECISION"):
        train_diffusion.main(TINY + ["--ckpt-dir", str(tmp_path), "--data-root", str(data_root), "--epochs", "1",
                                     "--resume"])


def test_existing_run_is_not_overwritten(data_root, tmp_path):
    args = TINY + ["--ckpt-dir", str(tmp_path), "--data-root", str(data_root), "--epochs", "1"]
    train_diffusion.main(args)
    before = (tmp_path / "gen_M1_ckpt_0.pth").read_bytes()
    with pytest.raises(UserError, match="--resume.*--overwrite"):
        train_diffusion.main(args)
    assert (tmp_path / "gen_M1_ckpt_0.pth").read_bytes() == before
    with pytest.raises(UserError, match="other settings"):
        train_diffusion.main(args[:-1] + ["3", "--resume"])  # --epochs 3 changes the schedule
    with pytest.raises(UserError, match="nothing to resume"):
        train_diffusion.main(TINY + ["--ckpt-dir", str(tmp_path / "empty"), "--resume"])


def test_energy_training_writes_its_own_checkpoints_that_a_plain_loader_refuses(data_root, tmp_path):
    """--energy: files named gen_M1_energy_*, beside (not over) a plain run of M1; the score loader refuses them
    with the loader to use, and the energy loader refuses a plain checkpoint."""
    from sculpting.checkpoints import load_energy_model, load_score_model
    from models.energy_model import EnergyScoreNet
    from sculpting.sde import VESDE

    args = TINY + ["--ckpt-dir", str(tmp_path), "--data-root", str(data_root), "--epochs", "1"]
    train_diffusion.main(args)
    train_diffusion.main(args + ["--energy"])
    assert (tmp_path / "gen_M1_energy_ckpt_0.pth").is_file() and (tmp_path / "gen_M1_ckpt_0.pth").is_file()
    model = load_energy_model(tmp_path / "gen_M1_energy_ckpt_0.pth", VESDE(), input_channels=3)
    assert isinstance(model, EnergyScoreNet) and model.channels == (32, 32, 32, 32)
    with pytest.raises(UserError, match="load_energy_model"):
        load_score_model(tmp_path / "gen_M1_energy_ckpt_0.pth", VESDE())
    with pytest.raises(UserError, match="train_diffusion.py --energy"):
        load_energy_model(tmp_path / "gen_M1_ckpt_0.pth", VESDE())
    with pytest.raises(UserError, match="eager float32"):
        train_diffusion.main(args + ["--energy", "--compile"])  # alone: on


@pytest.mark.parametrize("args,message", [
    (["--gen-idx", "M7"], "invalid choice: 'M7'"),
    (["--epochs", "0"], "--epochs must be positive"),
    (["--batch-size", "-4"], "--batch-size must be positive"),
    (["--channels", "30", "64"], "--channels needs 4 multiples of 32"),
])
def test_bad_training_input_is_one_line_and_nonzero(args, message):
    result = run_script("train_diffusion.py", *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_script("train_diffusion.py", "--ckpt-dir", str(blocker / "sub"))
    assert result.returncode == 2 and "cannot write to output folder" in result.stderr


def test_sample_script_writes_grid_tensor_and_settings(tmp_path):
    from models.score_model import ScoreNet
    from sculpting.sde import VESDE

    ckpt = tmp_path / "gen_M2_ckpt_195.pth"
    torch.save(ScoreNet(VESDE().marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=16,
                        input_channels=3).state_dict(), ckpt)
    sample_individual_model.main(["--gen-idx", "M2", "--gen-ckpt-dir", str(tmp_path), "--num-samples", "5",
                                  "--batch-size", "3", "--num-steps", "3", "--out-dir", str(tmp_path / "out"),
                                  "--palette", "colorblind"])
    samples = torch.load(tmp_path / "out" / "individual_M2.pt")
    assert samples.shape == (5, 3, 28, 28) and 0 <= float(samples.min()) and float(samples.max()) <= 1
    meta = json.loads((tmp_path / "out" / "individual_M2.json").read_text())
    assert meta["models"] == ["M2"] and meta["num_steps"] == 3
    assert meta["sampler"] == "pc" and meta["score_evaluations_per_sample"] == 6
    assert (tmp_path / "out" / "individual_M2.png").stat().st_size > 0
    # Impossible sampler settings stop with one line before anything is sampled or written.
    for flags, message in ((["--num-steps", "1"], "at least 2 steps"), (["--sampler", "heun", "--sigma-min", "-1"],
                                                                        "sigma_min")):
        with pytest.raises(UserError, match=message):
            sample_individual_model.main(["--gen-idx", "M2", "--gen-ckpt-dir", str(tmp_path), "--out-dir",
                                          str(tmp_path / "refused"), *flags])
        assert not (tmp_path / "refused" / "individual_M2.pt").exists()


def test_sample_script_bad_checkpoints(tmp_path):
    missing = run_script("sample_individual_model.py", "--gen-ckpt-dir", str(tmp_path))
    assert missing.returncode == 2 and "train_diffusion.py" in missing.stderr
    from models.score_model import ScoreNet
    from sculpting.sde import VESDE

    torch.save(ScoreNet(VESDE().marginal_prob_std, channels=(32, 32, 32, 32), embed_dim=16,
                        input_channels=1).state_dict(), tmp_path / "gen_MN1_ckpt_195.pth")
    mismatch = run_script("sample_individual_model.py", "--gen-ckpt-dir", str(tmp_path))
    assert mismatch.returncode == 2 and "input_channels 1, expected 3" in mismatch.stderr


@pytest.mark.parametrize("device, message", [("cuda", "no CUDA device"), ("tpu9", "unknown device"),
                                             ("mps", "MPS is not available")])
def test_a_device_this_machine_lacks_is_one_line(device, message, monkeypatch):
    from sculpting.runtime import get_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("sculpting.runtime.mps_available", lambda: False)
    with pytest.raises(UserError, match=message):
        get_device(device)
    assert get_device("auto").type == "cpu" and get_device("cpu").type == "cpu"
