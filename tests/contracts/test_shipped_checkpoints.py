"""The files shipped in checkpoints/: the manifest matches them, a damaged one is named with how to restore it, and
no script writes or removes one."""
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sculpting import checkpoints
import train_classifier
import train_diffusion
from sculpting.artefacts import SHIPPED_MANIFEST
from sculpting.checkpoints import (atomic_save, check_composition_provenance, load_score_model, read_provenance,
                         shipped_files)
from sculpting.errors import UserError
from sculpting.sde import VESDE

REPO = Path(__file__).resolve().parents[2]


def listed():
    """[(SHA-256, path from the repository's root)] of the real manifest."""
    lines = (REPO / SHIPPED_MANIFEST).read_text().splitlines()
    return [tuple(line.split(maxsplit=1)) for line in lines if line.strip()]


def test_every_listed_file_exists_and_matches():
    entries = listed()
    assert len(entries) >= 20
    for digest, name in entries:
        path = REPO / name
        assert path.is_file(), f"{name} is listed in {SHIPPED_MANIFEST} but missing"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, f"{name} differs from {SHIPPED_MANIFEST}"


def test_every_tracked_file_in_checkpoints_is_listed():
    try:
        tracked = subprocess.run(["git", "ls-files", "checkpoints"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = {name for _, name in listed()}
    assert set(tracked) - {SHIPPED_MANIFEST} <= names


@pytest.mark.parametrize("classifiers, models", [
    (["classifier_ckpt_200.pth"], ["M1", "M2"]),
    (["subdigits_classifier_ckpt_200.pth"], ["1", "2"]),
    (["3way_classifier_ckpt_700.pth", "3way_conditional_classifier_ckpt_200.pth"], ["MN1", "MN2", "MN3"]),
])
def test_shipped_classifiers_record_the_shipped_base_models(classifiers, models):
    paths = [f"checkpoints/{name}" for name in classifiers]
    bases = [(g, f"checkpoints/gen_{g}_ckpt_195.pth") for g in models]
    assert check_composition_provenance(paths, bases) is None
    assert all(read_provenance(path) is not None for path in paths)


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A repository in tmp_path whose manifest ships a copy of gen_M1_ckpt_195.pth: the real files stay untouched."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    copy = folder / "gen_M1_ckpt_195.pth"
    shutil.copyfile(REPO / "checkpoints" / "gen_M1_ckpt_195.pth", copy)
    (folder / "MANIFEST.sha256").write_text(f"{hashlib.sha256(copy.read_bytes()).hexdigest()}  "
                                             f"checkpoints/gen_M1_ckpt_195.pth\n")
    monkeypatch.setattr(checkpoints, "MANIFEST", folder / "MANIFEST.sha256")
    assert list(shipped_files()) == [copy.resolve()]
    return copy


@pytest.mark.parametrize("damage", ["truncate", "empty", "flip"])
def test_a_damaged_shipped_checkpoint_is_named_with_how_to_restore_it(shipped_copy, damage):
    assert load_score_model(shipped_copy, VESDE()).input_channels == 3
    content = shipped_copy.read_bytes()
    shipped_copy.write_bytes({"truncate": content[:len(content) // 2], "empty": b"",
                              "flip": content[:-1] + bytes([content[-1] ^ 1])}[damage])
    message = (f"checkpoint {shipped_copy} is damaged (SHA-256 differs from checkpoints/MANIFEST.sha256); "
               f"restore it with `git checkout -- {shipped_copy}`")
    with pytest.raises(UserError) as caught:
        load_score_model(shipped_copy, VESDE())
    assert str(caught.value) == message
    shipped_copy.unlink()
    with pytest.raises(UserError, match=r"is missing; restore it with `git checkout -- "):
        load_score_model(shipped_copy, VESDE())


def test_a_damaged_manifest_is_one_line(shipped_copy):
    manifest = shipped_copy.parent / "MANIFEST.sha256"
    manifest.write_text(manifest.read_text() + "not-a-hash\n")
    with pytest.raises(UserError, match=r"MANIFEST.sha256 line 2 is not '<SHA-256>  <path>'; restore it with `git"):
        load_score_model(shipped_copy, VESDE())


def test_no_script_writes_or_removes_a_shipped_file(shipped_copy, data_root, tmp_path):
    before = shipped_copy.read_bytes()
    with pytest.raises(UserError, match="is shipped with the repository .* choose another folder"):
        atomic_save({}, shipped_copy)
    # A run of the same name in that folder would remove it (--overwrite) or write over it (the reference's 200
    # epochs end with epoch 195's checkpoint): refused before anything is written or removed.
    for args in (["--epochs", "1", "--overwrite"], ["--epochs", "200"], ["--epochs", "1"]):
        with pytest.raises(UserError) as caught:
            train_diffusion.main(["--gen-idx", "M1", "--ckpt-dir", str(shipped_copy.parent), *args])
        assert str(caught.value) == (f"{shipped_copy} is shipped with the repository (listed in "
                                     f"checkpoints/MANIFEST.sha256) and is never replaced or removed; choose another "
                                     f"--ckpt-dir")
    assert shipped_copy.read_bytes() == before
    assert sorted(p.name for p in shipped_copy.parent.iterdir()) == ["MANIFEST.sha256", "gen_M1_ckpt_195.pth"]


def test_the_real_shipped_checkpoints_are_refused_as_an_output_folder():
    for script, args in (("train_diffusion.py", ["--gen-idx", "MN1", "--overwrite"]),
                         ("train_classifier.py", ["--steps", "50", "--overwrite"])):
        result = subprocess.run([sys.executable, script, "--ckpt-dir", "checkpoints", *args], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
        assert "is shipped with the repository" in result.stderr and "choose another --ckpt-dir" in result.stderr
    assert train_classifier.CKPT_DIR == train_diffusion.CKPT_DIR == "runs"
