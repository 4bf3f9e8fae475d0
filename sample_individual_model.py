"""Sample one trained base model and save an image grid (docs/reference.md §5).

Edit the globals or override them from the command line, e.g.
    python sample_individual_model.py --gen-idx M1 --num-steps 250
Writes <OUT_DIR>/individual_<GEN_IDX>.png (individual_<GEN_IDX>_s<SEED>.png for SEED > 0), the samples as .pt
and their settings as .json; samples of other settings under that name are replaced only with --overwrite.
"""

from artefacts import base_model_path, individual_stem
from checkpoints import ensure_writable_dir, load_score_model
from cli import configure, run_main
from custom_datasets import BASE_DATASETS
from models.fast_paths import fast_score_model
from runtime import get_device
from sampling_scripts import precision_for, sample_to_disk, sampler_from_config, sampling_meta
from sde import VESDE

GEN_IDX = "MN1"
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = 195
GEN_CKPT_PATH = None  # a full path overrides GEN_CKPT_DIR/gen_{GEN_IDX}_ckpt_{GEN_CKPT_EPOCH}.pth
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
OVERWRITE = False
DEVICE = "auto"
THREADS = 0
COMPILE = False  # torch.compile the score networks (float32; pays off from a few hundred steps)
PRECISION = "float32"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively
DENOISE_LAST_STEP = False  # True: end with a denoising step, not the reference's last Euler step
# (cleaner backgrounds, fewer malformed digits; README, "The last step")


def main(argv=None):
    config = configure(globals(), argv)
    sampler = sampler_from_config(config)
    ensure_writable_dir(config["OUT_DIR"])
    device = get_device(config["DEVICE"])
    precision = precision_for(config, device)
    ckpt = config["GEN_CKPT_PATH"] or base_model_path(config["GEN_CKPT_DIR"], config["GEN_IDX"],
                                                      config["GEN_CKPT_EPOCH"])
    sde = VESDE()
    model = load_score_model(ckpt, sde, device, input_channels=BASE_DATASETS[config["GEN_IDX"]][0])
    stem = individual_stem(config["GEN_IDX"], config["SEED"])
    meta = {"kind": "individual", "models": [config["GEN_IDX"]], "checkpoints": [ckpt],
            **sampling_meta(sampler, sde, config, device, precision)}
    return sample_to_disk(config, fast_score_model(model, [model], config["COMPILE"], precision), sde, sampler, device,
                          stem, meta)

if __name__ == "__main__":
    run_main(main)
