"""The sampling fast paths: compiled float32 gives the eager scores; bfloat16 autocast stays close."""
import platform

import pytest
import torch

from models.classifier_model import JointYClassifier
from models.compositions import BinaryDiffusionComposition
from models import fast_paths
from models.fast_paths import AutocastScore, FastScore, apply_fast_path, fast_score_model, keep_freed_memory
from models.score_model import ScoreNet
from samplers import pc_sampler
from sculpting.sde import VESDE


def tiny_composition():
    torch.manual_seed(0)
    sde = VESDE()
    models = [ScoreNet(sde.marginal_prob_std, (32, 32, 32, 32), embed_dim=32, input_channels=3) for _ in range(2)]
    classifier = JointYClassifier(embed_dim=32, t_embed_dim=16, input_channels=3, channels=(8, 8))
    return sde, BinaryDiffusionComposition(models, classifier, 1, 2, guidance_scale=20.0), [*models, classifier]


X, T = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(2)) * 3, torch.tensor([0.9, 0.5, 0.2, 0.05])


def test_compiled_composition_matches_eager():
    sde, composition, networks = tiny_composition()
    keys = list(composition.state_dict())
    eager = composition(X, T)
    eager_samples = pc_sampler(composition, sde, 4, 3, generator=torch.Generator().manual_seed(1), progress=False)
    compiled_model = fast_score_model(composition, networks, compile="on")
    compiled = compiled_model(X, T)
    # The check against eager float32 ran on that call; a disagreeing path would have fallen back to eager.
    assert compiled_model.report()["ran"] == "compiled float32", compiled_model.report()
    compiled_samples = pc_sampler(compiled_model, sde, 4, 3, generator=torch.Generator().manual_seed(1),
                                  progress=False)
    assert all(getattr(network, "_compiled_call_impl", None) is not None for network in networks)
    assert list(composition.state_dict()) == keys  # checkpoints load either way
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * float(eager.abs().max()))
    torch.testing.assert_close(compiled_samples, eager_samples, rtol=1e-3, atol=1e-3)


def test_bfloat16_autocast_is_close_and_returns_float32():
    _, composition, networks = tiny_composition()
    eager = composition(X, T)
    autocast_model = fast_score_model(composition, networks, precision="bfloat16")
    assert isinstance(autocast_model, FastScore) and isinstance(autocast_model.fast, AutocastScore)
    assert autocast_model.input_channels == 3
    # The eager classifier goes channels_last; eager score networks stay contiguous (faster so on CPU).
    assert composition.classifier.trunk.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert composition.classifier.trunk.features_channels_last  # its flatten is then a view
    assert all(model.conv2.weight.is_contiguous() for model in composition.score_models)
    reduced = autocast_model(X, T)
    assert reduced.dtype == torch.float32
    relative_error = float((reduced - eager).norm() / eager.norm())
    assert 0.0 < relative_error < 0.05  # reduced precision did act, and stayed close


def test_unknown_precision_is_rejected():
    _, composition, networks = tiny_composition()
    with pytest.raises(ValueError, match="precision must be one of"):
        fast_score_model(composition, networks, precision="float16x")


def test_keep_freed_memory_takes_effect_where_malloc_is_glibc():
    on_glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert keep_freed_memory() is on_glibc


def test_bfloat16_weights_cast_once_give_autocasts_scores():
    """Casting conv and linear weights once gives the bits autocast's per-call casts give; the Fourier time
    features and GroupNorms keep float32."""
    _, composition, networks = tiny_composition()
    composition.classifier.to(memory_format=torch.channels_last)  # the layout fast_score_model gives it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        per_call_casts = composition(X, T).float()
    cast_once = apply_fast_path(composition, networks, precision="bfloat16")
    classifier, model = composition.classifier, composition.score_models[0]
    assert classifier.trunk.fc1.weight.dtype == model.tconv1.weight.dtype == torch.bfloat16
    assert model.embed[0].W.dtype == model.gnorm1.weight.dtype == classifier.trunk.embed[0].W.dtype == torch.float32
    torch.testing.assert_close(cast_once(X, T), per_call_casts, rtol=0, atol=0)


# ---- --precision auto: bfloat16 only where the device computes it natively ----

@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_follows_the_cpus_bfloat16_support(monkeypatch, native):
    monkeypatch.setattr(fast_paths, "cpu_computes_bfloat16", lambda: native)
    assert fast_paths.resolve_precision("auto", "cpu") == ("bfloat16" if native else "float32")
    assert fast_paths.resolve_precision("float32", "cpu") == "float32"  # an explicit precision is kept
    assert fast_paths.resolve_precision("bfloat16", "cpu") == "bfloat16"


@pytest.mark.parametrize("mkldnn, capability, avx512_bf16, amx, machine, expected", [
    (False, "AVX2", False, False, "x86_64", False),  # no oneDNN bfloat16 at all (AVX2 only)
    (True, "AVX512", False, False, "x86_64", False),  # plain AVX-512: oneDNN emulates bfloat16
    (True, "AVX512", True, False, "x86_64", True),  # AVX-512 BF16
    (True, "AVX512", False, True, "x86_64", True),  # AMX
    (True, "AVX2", True, False, "x86_64", False),  # PyTorch's kernels capped at AVX2 (ATEN_CPU_CAPABILITY)
    (True, "DEFAULT", False, False, "aarch64", True),  # Arm with BF16 (oneDNN's own check)
])
def test_native_bfloat16_reads_the_cpus_capabilities(monkeypatch, mkldnn, capability, avx512_bf16, amx, machine,
                                                     expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(fast_paths.platform, "machine", lambda: machine)
    assert fast_paths.cpu_computes_bfloat16() is expected


def test_unknown_precision_setting_is_refused():
    with pytest.raises(ValueError, match="precision must be one of"):
        fast_paths.resolve_precision("half", "cpu")
