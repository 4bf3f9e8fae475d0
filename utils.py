"""Shared helpers: device choice, seeding, checkpoints, image grids."""
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cli import UserError
from models.fast_paths import resolve_precision
from samplers import Sampler

# The reference figures' colour-blind palette: the R channel is drawn gold, the G channel teal.
COLORBLIND_PALETTE = torch.tensor([[225, 190, 106], [64, 176, 166]], dtype=torch.float32) / 255.0


def get_device(requested: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; or exactly the device asked for."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def freeze(network):
    """Eval mode, no parameter gradients: for every network that guides, judges or acts as a target."""
    return network.eval().requires_grad_(False)


def half_state_dict(state: dict) -> dict:
    """Floating tensors as float16, on the CPU: half the file size; load_state_dict_file restores float32."""
    return {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu() for k, v in state.items()}


def ensure_writable_dir(path) -> Path:
    """Create `path` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"cannot write to output folder {path}: {error.strerror}; choose another folder") from None
    return path


def atomic_save(obj, path) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint should not be
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_state_dict_file(path, made_by: str) -> dict:
    """Load a plain state_dict; floating tensors come back as float32 (half-precision storage is allowed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; create it with {made_by} or pass its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or non-torch file
        raise UserError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a state_dict")
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}


def load_into(model, state_dict, path) -> None:
    """load_state_dict(strict=True) with a one-line error naming the first mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: "
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in own.items():
        if value.shape != state_dict[key].shape:
            raise UserError(f"checkpoint {path} does not fit {type(model).__name__}: {key} has shape "
                            f"{list(state_dict[key].shape)}, expected {list(value.shape)}")
    model.load_state_dict(state_dict, strict=True)


def load_score_model(path, sde, device="cpu", channels=None, input_channels=None):
    """Build a ScoreNet with the architecture stored in a checkpoint and load it, frozen, in eval mode.

    `channels`/`input_channels`, when given, are what the caller expects; a
    checkpoint of another architecture is then an error naming both.
    """
    from models.score_model import ScoreNet, scorenet_config_from_state_dict

    state = load_state_dict_file(path, made_by="train_diffusion.py")
    try:
        config = scorenet_config_from_state_dict(state)
    except ValueError as error:
        raise UserError(f"checkpoint {path}: {error}") from None
    for name, expected in (("channels", channels), ("input_channels", input_channels)):
        if expected is not None and tuple(np.atleast_1d(expected)) != tuple(np.atleast_1d(config[name])):
            raise UserError(f"checkpoint {path} has {name} {config[name]}, expected {expected}")
    model = ScoreNet(sde.marginal_prob_std, **config)
    load_into(model, state, path)
    return freeze(model.to(device))


def colorize(samples: torch.Tensor, palette: str = "rgb") -> torch.Tensor:
    """Map [B, C, H, W] samples in [0, 1] to RGB images [B, 3, H, W].

    1-channel samples become grey; 3-channel samples are shown as they are
    ("rgb") or with the reference figures' colour-blind palette ("colorblind").
    """
    samples = samples.detach().float().clamp(0.0, 1.0).cpu()
    if samples.shape[1] == 1:
        return samples.expand(-1, 3, -1, -1)
    if palette == "rgb":
        return samples
    if palette == "colorblind":
        # [B, 2, H, W] x [2, 3] -> [B, 3, H, W]; channel 2 is always empty in coloured MNIST.
        return torch.einsum("bkhw,kc->bchw", samples[:, :2], COLORBLIND_PALETTE).clamp(0.0, 1.0)
    raise UserError(f"unknown palette {palette!r}; use 'rgb' or 'colorblind'")


def save_image_grid(samples: torch.Tensor, path, palette: str = "rgb", nrow: int = None, padding: int = 2) -> None:
    """Save samples as one PNG grid (nrow images per row, square by default)."""
    from torchvision.utils import make_grid

    images = colorize(samples, palette)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(len(images)))))
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)


GRID_SAMPLES = 64  # the reference's 8x8 grid: a sample file's PNG shows its first 64 samples


def save_samples(samples: torch.Tensor, out_dir, stem: str, meta: dict, palette: str = "rgb") -> Path:
    """Write <stem>.png (8x8 grid of the first samples), <stem>.pt (the [N, C, 28, 28] tensor) and <stem>.json
    (what was sampled)."""
    import json

    out_dir = ensure_writable_dir(out_dir)
    save_image_grid(samples[:GRID_SAMPLES], out_dir / f"{stem}.png", palette=palette)
    atomic_save(samples, out_dir / f"{stem}.pt")
    (out_dir / f"{stem}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir / f"{stem}.png"


def load_classifier(path, classifier_class, device, made_by):
    """Build `classifier_class` with the architecture stored in a checkpoint and load it, frozen, in eval mode."""
    from models.classifier_model import classifier_config_from_state_dict

    state = load_state_dict_file(path, made_by=made_by)
    try:
        config = classifier_config_from_state_dict(state)
    except ValueError as error:
        raise UserError(f"checkpoint {path}: {error}") from None
    model = classifier_class(**config)
    load_into(model, state, path)
    return freeze(model.to(device))


def sampler_from_config(config, steps_key="NUM_STEPS") -> Sampler:
    """The Sampler a script's globals describe (SAMPLER, <steps_key>, DENOISE_LAST_STEP, SNR, SIGMA_MIN, CHURN)."""
    try:
        return Sampler(config["SAMPLER"], config[steps_key], config["DENOISE_LAST_STEP"], config["SNR"],
                       config["SIGMA_MIN"], config["CHURN"])
    except ValueError as error:
        raise UserError(f"{error}; see --help for --sampler and its settings") from None


def precision_for(config, device) -> str:
    """The script's PRECISION on `device`, "auto" resolved (bfloat16 only where the device computes it natively)."""
    return resolve_precision(config["PRECISION"], device)


def sampling_meta(sampler: Sampler, sde, config, precision, seconds) -> dict:
    """What an output's .json records about how it was sampled, and on what."""
    return {**sampler.settings(sde), "seed": config["SEED"], "precision": precision,
            "precision_setting": config["PRECISION"], "compile": config["COMPILE"],
            "sampling_seconds": round(seconds, 2), "device": str(get_device(config["DEVICE"])),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}



def composition_stem(models, observations, scales) -> str:
    """File stem of a composition's samples, e.g. composition_M1_M2_y1-1_y2-1_g20."""
    labels = [f"y{k}-{y}" for k, y in enumerate(observations, start=1)]
    return "_".join(["composition", *models, *labels, *(f"g{s:g}" for s in scales)])


def sample_composition_to_disk(config, gen_idxs, classifier_specs, observations, guidance_scales) -> Path:
    """The composition sampling scripts' shared body: load, compose, sample, save.

    `config` holds the scripts' globals (CKPT_DIR, CKPT_EPOCH, CKPT_PATH_<k>, NUM_SAMPLES, BATCH_SIZE,
    the sampler's (sampler_from_config), SEED, PALETTE, OUT_DIR, DEVICE, COMPILE, PRECISION).
    `classifier_specs`: (checkpoint, classifier class, script that trains it)
    for the joint classifier of (y1, y2), then for the conditional one of y3 if
    there are three observations; one guidance scale each. Writes
    composition_<models>_y1-<y1>_..._g<scale>... .png/.pt/.json in OUT_DIR.
    """
    from custom_datasets import dataset_spec
    from models.compositions import BinaryDiffusionComposition, ConditionalDiffusionComposition
    from models.fast_paths import fast_score_model
    from samplers import sample_in_batches
    from sde import VESDE

    sampler = sampler_from_config(config)
    ensure_writable_dir(config["OUT_DIR"])
    device = get_device(config["DEVICE"])
    precision = precision_for(config, device)
    sde = VESDE()
    classifiers = [load_classifier(path, cls, device, made_by) for path, cls, made_by in classifier_specs]
    epoch = config["CKPT_EPOCH"]
    checkpoints = [config[f"CKPT_PATH_{k}"] or str(Path(config["CKPT_DIR"]) / f"gen_{name}_ckpt_{epoch}.pth")
                   for k, name in enumerate(gen_idxs, start=1)]
    score_models = [load_score_model(path, sde, device, input_channels=dataset_spec(name)[0])
                    for name, path in zip(gen_idxs, checkpoints)]
    try:
        composition = BinaryDiffusionComposition(score_models, classifiers[0], *observations[:2], guidance_scales[0])
        if len(observations) == 3:
            composition = ConditionalDiffusionComposition(composition, classifiers[1], observations[2],
                                                          guidance_scales[1])
    except ValueError as error:
        raise UserError(str(error)) from None
    # Only the score networks are compiled: a compiled classifier's input gradient ran 2x slower on CPU (README).
    composition = fast_score_model(composition, score_models, config["COMPILE"], precision)
    started = time.perf_counter()
    samples = sample_in_batches(composition, sde, sampler, config["NUM_SAMPLES"], config["BATCH_SIZE"], device,
                                config["SEED"])
    seconds = time.perf_counter() - started
    stem = composition_stem(gen_idxs, observations, guidance_scales)
    meta = {"kind": "composition", "models": list(gen_idxs), "observations": list(observations),
            "guidance_scales": list(guidance_scales), "checkpoints": checkpoints,
            "classifier_checkpoints": [str(path) for path, _, _ in classifier_specs],
            **sampling_meta(sampler, sde, config, precision, seconds)}
    png = save_samples(samples, config["OUT_DIR"], stem, meta, config["PALETTE"])
    print(f"saved {png} ({len(samples)} samples)")
    return png


def update_markers(document: Path, marker: str, text: str) -> None:
    """Replace what lies between <!-- marker --> and <!-- /marker --> in a Markdown document, if it has them."""
    if not document.exists():
        return
    content = document.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start in content and end in content:
        before, rest = content.split(start, 1)
        after = rest.split(end, 1)[1]
        document.write_text(f"{before}{start}\n{text}\n{end}{after}")
