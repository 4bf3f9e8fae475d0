"""What the sample scripts share: how a run samples (a SampleRun: sampler, sample count, device, fast path, output
folder), loading its base models, and writing its samples (.png/.pt/.json). The composition itself is built in each
script, in plain view."""
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sculpting.checkpoints import ensure_writable_dir
from sculpting.composites import COMPOSITE_GUIDANCE, load_model, model_channels, model_source, source_record
from sculpting.errors import UserError
from sculpting.images import refuse_other_samples, save_samples
from models.score_model import ScoreNet
from models.fast_paths import fast_path_report, fast_score_model, resolve_precision
from sculpting.runtime import get_device
from samplers import Sampler, sample_in_batches
from sculpting.sde import VESDE


def sampler_from_settings(settings, steps_key="NUM_STEPS") -> Sampler:
    """The Sampler a script's settings describe (SAMPLER, <steps_key>, DENOISE_LAST_STEP, SNR, SIGMA_MIN, CHURN)."""
    try:
        sampler = Sampler(settings["SAMPLER"], settings[steps_key], settings["DENOISE_LAST_STEP"], settings["SNR"],
                          settings["SIGMA_MIN"], settings["CHURN"])
        sampler.check_fits(VESDE())  # every script samples the default SDE
        return sampler
    except ValueError as error:
        raise UserError(f"{error}; see --help for --sampler and its settings") from None


@dataclass
class SampleRun:
    """How and where a sample script draws its samples."""
    sampler: Sampler
    num_samples: int
    batch_size: int
    seed: int
    device: torch.device
    precision_setting: str  # as asked: float32, bfloat16 or auto
    compile: str  # off, on or auto
    out_dir: str
    overwrite: bool
    palette: str = "rgb"
    sde: VESDE = field(default_factory=VESDE)

    @property
    def precision(self) -> str:
        """The precision setting with "auto" resolved for the device."""
        return resolve_precision(self.precision_setting, self.device)

    def settings(self) -> dict:
        """What an output's .json records about how it was sampled, and on what; "sampling_seconds" and
        "fast_path" are added once measured (refuse_other_samples compares the rest with an earlier output's)."""
        return {**self.sampler.settings(self.sde), "seed": self.seed, "num_samples": self.num_samples,
                "batch_size": self.batch_size, "precision": self.precision,
                "precision_setting": self.precision_setting, "compile": self.compile, "device": str(self.device),
                "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def load_base_models(self, names, checkpoints, force=False) -> list:
        """The base models `names` from their `checkpoints` (base_model_paths: a checkpoint, or a composite's
        source), on the run's device."""
        return [load_model(source, self.sde, self.device, input_channels=model_channels(name), force=force)
                for name, source in zip(names, checkpoints)]

    def sample_to_disk(self, score_model, networks, stem, record) -> Path:
        """Draw the samples of `score_model` and write <out_dir>/<stem>.png/.pt/.json, the .json holding `record`
        (what was sampled) and the run's settings; the PNG's path. `networks` may be compiled (COMPILE). Samples of
        other settings under that stem are refused before any costly work unless `overwrite`."""
        meta = {**record, **self.settings()}
        refuse_other_samples(self.out_dir, stem, meta, self.overwrite)
        batches = [len(batch) for batch in torch.arange(self.num_samples).split(self.batch_size)]
        networks = [net for model in networks for net in model.modules() if isinstance(net, ScoreNet)]  # composites'
        fast = fast_score_model(score_model, networks, self.compile, self.precision,  # compiles lazily
                                self.sampler.evaluations_per_sample * len(batches), len(set(batches)))
        started = time.perf_counter()
        samples = sample_in_batches(fast, self.sde, self.sampler, self.num_samples, self.batch_size, self.device,
                                    self.seed)
        meta["sampling_seconds"] = round(time.perf_counter() - started, 2)
        meta["fast_path"] = fast_path_report(fast)
        png = save_samples(samples, self.out_dir, stem, meta, self.palette)
        print(f"saved {png} ({len(samples)} samples, {self.sampler.evaluations_per_sample} score evaluations each)")
        return png


def sample_run(settings) -> SampleRun:
    """The SampleRun a sample script's settings describe (the sampler's, NUM_SAMPLES, BATCH_SIZE, SEED, DEVICE,
    PRECISION, COMPILE, OUT_DIR, OVERWRITE, PALETTE), checked, with its output folder writable."""
    sampler = sampler_from_settings(settings)
    ensure_writable_dir(settings["OUT_DIR"])
    return SampleRun(sampler, settings["NUM_SAMPLES"], settings["BATCH_SIZE"], settings["SEED"],
                     get_device(settings["DEVICE"]), settings["PRECISION"], settings.get("COMPILE", "off"),
                     settings["OUT_DIR"],
                     settings["OVERWRITE"], settings.get("PALETTE", "rgb"))


def base_model_paths(names, ckpt_dir, epoch, paths=None, settings=None) -> list:
    """The checkpoint of each base model: its entry of `paths` where given, else its file in `ckpt_dir`; for a
    composite (sculpting/composites.py), its source, with the script's COMPOSITE_CLASSIFIER_DIR and
    COMPOSITE_GUIDANCE from `settings`."""
    paths, settings = paths or [None] * len(names), settings or {}
    return [model_source(name, ckpt_dir, epoch, settings.get("COMPOSITE_CLASSIFIER_DIR"),
                         settings.get("COMPOSITE_GUIDANCE", COMPOSITE_GUIDANCE), path)
            for name, path in zip(names, paths)]


def composition_record(models, observations, guidance_scales, checkpoints, classifier_checkpoints, mismatch) -> dict:
    """What a composition's .json records about what was composed (checkpoints.check_composition_provenance gives
    `mismatch`, where a classifier of other base models was forced)."""
    return {"kind": "composition", "models": list(models), "observations": list(observations),
            "guidance_scales": list(guidance_scales), "checkpoints": [source_record(path) for path in checkpoints],
            "classifier_checkpoints": [str(path) for path in classifier_checkpoints],
            **({"forced": True, "provenance_mismatch": mismatch} if mismatch else {})}
