"""Checkpoint I/O: atomic writes, half-precision storage, architecture checks."""
import os

import pytest
import torch

from sculpting import checkpoints
from sculpting.errors import UserError
from models.score_model import ScoreNet
from sculpting.sde import VESDE
from sculpting.checkpoints import atomic_save, load_score_model, load_state_dict_file

SMALL = (32, 32, 32, 32)


def small_model(in_ch=3):
    return ScoreNet(VESDE().marginal_prob_std, channels=SMALL, embed_dim=32, input_channels=in_ch)


def test_round_trip_half_precision_restores_float32(tmp_path):
    model = small_model()
    path = tmp_path / "gen_M1_ckpt_5.pth"
    atomic_save({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded = load_score_model(path, VESDE())
    for key, value in loaded.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, model.state_dict()[key], atol=2e-3, rtol=1e-3)
    assert loaded.channels == SMALL and loaded.input_channels == 3
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    atomic_save({"a": torch.ones(2)}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain torch.save would leave it

    def broken_save(obj, f):
        open(f, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temp file left behind


def test_missing_checkpoint_names_the_script_that_makes_it(tmp_path):
    with pytest.raises(UserError, match="not found.*train_diffusion.py"):
        load_state_dict_file(tmp_path / "nope.pth", made_by="train_diffusion.py")


@pytest.mark.parametrize("content, reason", [(b"", "empty file"), (b"not a checkpoint", "cannot read")])
def test_unreadable_checkpoint_says_why(tmp_path, content, reason):
    path = tmp_path / "gen_M1_ckpt_195.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=reason) as caught:
        load_score_model(path, VESDE())
    assert not str(caught.value).endswith(": ")


def test_other_architecture_says_expected_and_found(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(small_model(in_ch=1).state_dict(), path)
    with pytest.raises(UserError, match=r"input_channels 1, expected 3"):
        load_score_model(path, VESDE(), input_channels=3)
    with pytest.raises(UserError, match=r"channels \(32, 32, 32, 32\), expected \(64, 128, 256, 256\)"):
        load_score_model(path, VESDE(), channels=(64, 128, 256, 256))
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(UserError, match="not a ScoreNet"):
        load_score_model(path, VESDE())


def test_atomic_save_removes_what_a_killed_writer_of_the_same_target_left(tmp_path):
    """A SIGKILL during atomic_save leaves its hidden temporary; the next save of that target removes it, and only
    temporaries of that target."""
    stale = tmp_path / ".ckpt.pth.x1y2z3.tmp"
    other = tmp_path / ".other.pth.a1b2c3.tmp"
    lookalike = tmp_path / ".ckpt.pth.bak"
    for path in (stale, other, lookalike):
        path.write_bytes(b"partial")
    atomic_save({"a": torch.ones(2)}, tmp_path / "ckpt.pth")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt.pth", other.name, lookalike.name])


def test_an_empty_training_state_says_so(tmp_path):
    path = tmp_path / "gen_M1_train_state.pth"
    path.write_bytes(b"")
    with pytest.raises(UserError, match=r"cannot read checkpoint .*: empty file; recreate it with train_diffusion.py"):
        checkpoints.read_training_state(path)
    torch.save({"a": 1}, path)
    with pytest.raises(UserError, match="not a training state"):
        checkpoints.read_training_state(path)


def test_file_hash_is_of_the_content_and_follows_a_rewrite(tmp_path):
    import hashlib

    path = tmp_path / "file.bin"
    path.write_bytes(b"first")
    assert checkpoints.file_sha256(path) == hashlib.sha256(b"first").hexdigest()
    path.write_bytes(b"other")  # the same size: the cache must still see the new content
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert checkpoints.file_sha256(path) == hashlib.sha256(b"other").hexdigest()
    copy = tmp_path / "copy.bin"
    copy.write_bytes(b"other")
    assert checkpoints.file_sha256(copy) == checkpoints.file_sha256(path)  # by content, not by name
