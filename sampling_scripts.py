"""What the sampling scripts share: the sampler and precision their globals describe, the settings an
output's .json records, and the body of the composition scripts (load, compose, sample, save)."""
import time

import torch

from artefacts import base_model_path, composition_stem
from checkpoints import check_composition_provenance, ensure_writable_dir, load_classifier, load_score_model
from custom_datasets import dataset_spec
from errors import UserError
from images import refuse_other_samples, save_samples
from models.compositions import BinaryDiffusionComposition, ConditionalDiffusionComposition
from models.fast_paths import fast_score_model, resolve_precision
from runtime import get_device
from samplers import Sampler, sample_in_batches
from sde import VESDE
from targets import validate_composition


def sampler_from_config(config, steps_key="NUM_STEPS") -> Sampler:
    """The Sampler a script's globals describe (SAMPLER, <steps_key>, DENOISE_LAST_STEP, SNR, SIGMA_MIN, CHURN)."""
    try:
        sampler = Sampler(config["SAMPLER"], config[steps_key], config["DENOISE_LAST_STEP"], config["SNR"],
                          config["SIGMA_MIN"], config["CHURN"])
        sampler.check_fits(VESDE())  # every script samples the default SDE
        return sampler
    except ValueError as error:
        raise UserError(f"{error}; see --help for --sampler and its settings") from None


def precision_for(config, device) -> str:
    """The script's PRECISION on `device`, "auto" resolved (bfloat16 only where the device computes it natively)."""
    return resolve_precision(config["PRECISION"], device)


def sampling_meta(sampler: Sampler, sde, config, device, precision) -> dict:
    """What an output's .json records about how it was sampled, and on what; "sampling_seconds" is added once
    measured (images.refuse_other_samples compares the rest with an earlier output's before sampling)."""
    return {**sampler.settings(sde), "seed": config["SEED"], "num_samples": config["NUM_SAMPLES"],
            "batch_size": config["BATCH_SIZE"], "precision": precision, "precision_setting": config["PRECISION"],
            "compile": config.get("COMPILE", False), "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def base_model_paths(config, gen_idxs) -> list:
    """The checkpoint of each base model: GEN_CKPT_PATH_<k> where given, else its file in GEN_CKPT_DIR."""
    return [config[f"GEN_CKPT_PATH_{k}"] or base_model_path(config["GEN_CKPT_DIR"], name, config["GEN_CKPT_EPOCH"])
            for k, name in enumerate(gen_idxs, start=1)]


def sample_composition_to_disk(config, gen_idxs, classifier_specs, observations, guidance_scales):
    """The composition sampling scripts' shared body: load, compose, sample, save.

    `config` holds the scripts' globals (GEN_CKPT_DIR, GEN_CKPT_EPOCH, GEN_CKPT_PATH_<k>, NUM_SAMPLES,
    BATCH_SIZE, the sampler's (sampler_from_config), SEED, PALETTE, OUT_DIR, OVERWRITE, DEVICE, COMPILE, PRECISION,
    FORCE).
    `classifier_specs`: (checkpoint, classifier class, script that trains it)
    for the joint classifier of (y1, y2), then for the conditional one of y3 if
    there are three observations; one guidance scale each. A classifier trained on other base models is refused
    (checkpoints.check_composition_provenance) unless FORCE, which the .json then records. Writes
    composition_<models>_y1-<y1>_..._g<scale>...[_s<seed>] .png/.pt/.json in OUT_DIR, refusing to replace samples
    of other settings unless OVERWRITE (images.refuse_other_samples).
    """
    validate_composition(gen_idxs, observations)
    sampler = sampler_from_config(config)
    ensure_writable_dir(config["OUT_DIR"])
    device = get_device(config["DEVICE"])
    precision = precision_for(config, device)
    sde = VESDE()
    classifiers = [load_classifier(path, cls, device, made_by) for path, cls, made_by in classifier_specs]
    checkpoints = base_model_paths(config, gen_idxs)
    score_models = [load_score_model(path, sde, device, input_channels=dataset_spec(name)[0])
                    for name, path in zip(gen_idxs, checkpoints)]
    mismatch = check_composition_provenance([path for path, _, _ in classifier_specs], list(zip(gen_idxs, checkpoints)),
                                            config["FORCE"])
    try:
        composition = BinaryDiffusionComposition(score_models, classifiers[0], *observations[:2], guidance_scales[0])
        if len(observations) == 3:
            composition = ConditionalDiffusionComposition(composition, classifiers[1], observations[2],
                                                          guidance_scales[1])
    except ValueError as error:
        raise UserError(str(error)) from None
    # Only the score networks are compiled: a compiled classifier's input gradient ran slower on CPU
    # (docs/performance.md).
    stem = composition_stem(gen_idxs, observations, guidance_scales, config["SEED"])
    meta = {"kind": "composition", "models": list(gen_idxs), "observations": list(observations),
            "guidance_scales": list(guidance_scales), "checkpoints": checkpoints,
            "classifier_checkpoints": [str(path) for path, _, _ in classifier_specs],
            **({"forced": True, "provenance_mismatch": mismatch} if mismatch else {}),
            **sampling_meta(sampler, sde, config, device, precision)}
    composition = fast_score_model(composition, score_models, config["COMPILE"], precision)
    return sample_to_disk(config, composition, sde, sampler, device, stem, meta)


def sample_to_disk(config, score_model, sde, sampler, device, stem, meta):
    """Every sample script's last part: refuse to replace samples of other settings (unless OVERWRITE), draw
    NUM_SAMPLES (SEED, BATCH_SIZE), add the sampling time to `meta`, write <OUT_DIR>/<stem>.png/.pt/.json; the PNG's
    path. (fast_score_model compiles lazily, so the refusal still comes before any costly work.)"""
    refuse_other_samples(config["OUT_DIR"], stem, meta, config["OVERWRITE"])
    started = time.perf_counter()
    samples = sample_in_batches(score_model, sde, sampler, config["NUM_SAMPLES"], config["BATCH_SIZE"], device,
                                config["SEED"])
    meta["sampling_seconds"] = round(time.perf_counter() - started, 2)
    png = save_samples(samples, config["OUT_DIR"], stem, meta, config["PALETTE"])
    print(f"saved {png} ({len(samples)} samples, {sampler.evaluations_per_sample} score evaluations each)")
    return png
