"""Sample one trained base model and save an image grid (docs/reference.md §5).

Edit the globals or override them from the command line, e.g.
    python sample_individual_model.py --gen-idx M1 --num-steps 250
A composite of two base models samples alike (sculpting/composites.py), e.g. their harmonic mean
    python sample_individual_model.py --gen-idx MN2xMN3 --composite-classifier-dir runs/chains --sampler heun-churn \
        --num-steps 40
Writes <OUT_DIR>/individual_<GEN_IDX>.png (individual_<GEN_IDX>_s<SEED>.png for SEED > 0), the samples as .pt
and their settings as .json; samples of other settings under that name are replaced only with --overwrite.
"""

from sculpting.artefacts import REFERENCE_EPOCH, individual_stem
from sculpting.cli import configure, run_main
from sculpting.composites import source_record
from sculpting.sampling import base_model_paths, sample_run

GEN_IDX = "MN1"
NUM_SAMPLES = 64
NUM_STEPS = 500
SNR = 0.16  # pc: the Langevin corrector's signal-to-noise ratio
SAMPLER = "pc"  # the reference's predictor-corrector; "heun" (ODE) or "heun-churn" (stochastic) need far fewer steps
SEED = 0
COMPOSITE_GUIDANCE = 20.0  # a composite's guidance (GEN_IDX names two base models, e.g. MN2xMN3)

# ---- engineering settings: how and where it runs, not what it samples ----
GEN_CKPT_DIR = "checkpoints"
GEN_CKPT_EPOCH = REFERENCE_EPOCH
GEN_CKPT_PATH = None  # a full path overrides GEN_CKPT_DIR/gen_{GEN_IDX}_ckpt_{GEN_CKPT_EPOCH}.pth
COMPOSITE_CLASSIFIER_DIR = None  # a composite's pair classifier <name>_ckpt_200.pth is read here; None: GEN_CKPT_DIR
BATCH_SIZE = 64
SIGMA_MIN = 0.05  # heun, heun-churn: the last noise level of the grid (a denoising step follows with DENOISE_LAST_STEP)
CHURN = 40.0  # heun-churn: the noise each step adds back (EDM's S_churn; gamma = min(CHURN / NUM_STEPS, sqrt 2 - 1))
DENOISE_LAST_STEP = False  # True: end with a denoising step, not the reference's last Euler step (cleaner digits)
PRECISION = "float32"  # "bfloat16": autocast; "auto": bfloat16 only where the device computes it natively
COMPILE = "off"  # torch.compile the score network: on, off, or auto (time both ways once, keep the faster)
DEVICE = "auto"
THREADS = 0
PALETTE = "rgb"  # or "colorblind", the reference figures' palette
OUT_DIR = "outputs"
OVERWRITE = False
FORCE = False  # a composite: use a pair classifier trained on other base models (the .json records its files)


def main(argv=None):
    s = configure(globals(), argv)
    run = sample_run(s)

    # Load the base model (or the composite: two base models and their joint classifier).
    checkpoint = base_model_paths([s["GEN_IDX"]], s["GEN_CKPT_DIR"], s["GEN_CKPT_EPOCH"], [s["GEN_CKPT_PATH"]], s)[0]
    model = run.load_base_models([s["GEN_IDX"]], [checkpoint], s["FORCE"])[0]

    # Sample it and write the PNG, the samples (.pt) and what was sampled (.json).
    record = {"kind": "individual", "models": [s["GEN_IDX"]], "checkpoints": [source_record(checkpoint)]}
    return run.sample_to_disk(model, [model], individual_stem(s["GEN_IDX"], run.seed), record)


if __name__ == "__main__":
    run_main(main)
