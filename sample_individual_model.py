"""Sample one trained base model with the PC sampler and save an image grid (SPEC §5).

Edit the globals or override them from the command line, e.g.
    python sample_individual_model.py --gen-idx M1 --num-steps 250
Writes <OUT_DIR>/individual_<GEN_IDX>.png, the samples as .pt and their settings as .json.
"""
import time
from pathlib import Path

from cli import override_globals, run_main
from custom_datasets import BASE_DATASETS
from models.fast_paths import PRECISION_CHOICES, fast_score_model
from samplers import SAMPLERS, sample_in_batches
from sde import VESDE
from utils import (ensure_writable_dir, get_device, load_score_model, precision_for, sampler_from_config,
                   sampling_meta, save_samples)

GEN_IDX = "MN1"
CKPT_DIR = "checkpoints"
CKPT_EPOCH = 195
CKPT_PATH = None  # a full path overrides CKPT_DIR/gen_{GEN_IDX}_ckpt_{CKPT_EPOCH}.pth
NUM_SAMPLES = 64
BATCH_SIZE = 64
NUM_STEPS = 500
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the reference's predictor-corrector; "heun" (ODE) or "heun-churn" (stochastic) need far fewer steps
SIGMA_MIN = 0.05  # heun, heun-churn: the last noise level of the grid (a denoising step follows with DENOISE_LAST_STEP)
CHURN = 40.0  # heun-churn: the noise each step adds back (EDM's S_churn; gamma = min(CHURN / NUM_STEPS, sqrt 2 - 1))
SEED = 0
PALETTE = "rgb"  # or "colorblind", the reference figures' palette
OUT_DIR = "outputs"
DEVICE = "auto"
COMPILE = False  # torch.compile the score networks (float32; pays off from a few hundred steps)
PRECISION = "float32"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively
DENOISE_LAST_STEP = False  # True: end with a denoising step, not the reference's last Euler step
# (cleaner backgrounds, fewer malformed digits; README, "The last step")

OVERRIDABLE = ["GEN_IDX", "CKPT_DIR", "CKPT_EPOCH", "CKPT_PATH", "NUM_SAMPLES", "BATCH_SIZE", "NUM_STEPS", "SNR", "SAMPLER", "SIGMA_MIN", "CHURN",
               "SEED", "PALETTE", "OUT_DIR", "DEVICE", "COMPILE", "PRECISION", "DENOISE_LAST_STEP"]


def main(argv=None):
    config = dict(globals())
    override_globals(config, OVERRIDABLE, __doc__, argv,
                     positive=["CKPT_EPOCH", "NUM_SAMPLES", "BATCH_SIZE", "NUM_STEPS", "SNR"],
                     choices={"GEN_IDX": list(BASE_DATASETS), "PALETTE": ["rgb", "colorblind"],
                              "PRECISION": PRECISION_CHOICES, "SAMPLER": list(SAMPLERS)})
    sampler = sampler_from_config(config)
    ensure_writable_dir(config["OUT_DIR"])
    device = get_device(config["DEVICE"])
    precision = precision_for(config, device)
    ckpt = config["CKPT_PATH"] or Path(config["CKPT_DIR"]) / f"gen_{config['GEN_IDX']}_ckpt_{config['CKPT_EPOCH']}.pth"
    sde = VESDE()
    model = load_score_model(ckpt, sde, device, input_channels=BASE_DATASETS[config["GEN_IDX"]][0])
    sampled = fast_score_model(model, [model], config["COMPILE"], precision)
    started = time.perf_counter()
    samples = sample_in_batches(sampled, sde, sampler, config["NUM_SAMPLES"], config["BATCH_SIZE"], device,
                                config["SEED"])
    seconds = time.perf_counter() - started
    meta = {"kind": "individual", "models": [config["GEN_IDX"]], "checkpoints": [str(ckpt)],
            **sampling_meta(sampler, sde, config, precision, seconds)}
    png = save_samples(samples, config["OUT_DIR"], f"individual_{config['GEN_IDX']}", meta, config["PALETTE"])
    print(f"saved {png} ({len(samples)} samples)")
    return png


if __name__ == "__main__":
    run_main(main)
