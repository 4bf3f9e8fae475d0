"""How the PC sampler's last step treats real digits: the reference's Euler step against a denoising step.

Takes NUM_IMAGES test images of a base dataset, noises them to the marginal of
the grid time TAIL_STEPS steps before the end of a NUM_STEPS grid, and runs the
sampler's last TAIL_STEPS steps with each checkpoint. The states compared:
  - "reference": x_mean of the last step (what the sample scripts return);
  - "one step earlier": x_mean of the step before it;
  - "denoised last step": the last predictor replaced by x + std(t)^2 s(x, t)
    (the sample scripts' --denoise-last-step).
For each: the share of pixels >= the oracle's ink level in the channels the
dataset never lights (speckle that the colour rule counts), the share the
oracle recognises, and the mean squared error to the clean images. Writes a
JSON file to OUT_DIR.

    python benchmarks/last_step.py                                  # the committed MN1
    python benchmarks/last_step.py --ckpt-paths checkpoints/gen_MN1_ckpt_195.pth runs/x/gen_MN1_ckpt_23.pth
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sculpting.checkpoints import ensure_writable_dir, load_oracle, load_score_model  # noqa: E402
from sculpting.cli import BASE_ONLY, configure, run_main  # noqa: E402
from custom_datasets import ColouredMNIST  # noqa: E402
from sculpting.errors import UserError  # noqa: E402
from models.oracle import INK_LEVEL, predict  # noqa: E402
from samplers.pc_sampler import denoising_step, euler_maruyama_predictor, langevin_corrector, time_grid  # noqa: E402
from sculpting.sde import VESDE  # noqa: E402

GEN_IDX = "MN1"
CKPT_PATHS = ["checkpoints/gen_MN1_ckpt_195.pth"]  # the checkpoints of GEN_IDX to compare
NUM_IMAGES = 256
NUM_STEPS = 250
TAIL_STEPS = 30
SNR = 0.16
SEED = 0
OUT_DIR = "benchmarks/results/last_step"


@torch.no_grad()
def run_tail(score_model, sde, clean, num_steps, tail_steps, snr, seed):
    """{ending: final images} after the last `tail_steps` steps, started from `clean` noised to the marginal."""
    grid, dt = time_grid(num_steps)
    generator = torch.Generator().manual_seed(seed)
    tail = grid[-tail_steps:]
    x = clean + sde.marginal_prob_std(tail[0]) * torch.randn(clean.shape, generator=generator)
    for step, t in enumerate(tail):
        t_batch = t.expand(len(x))
        x = langevin_corrector(score_model, x, t_batch, snr, generator)
        if step == len(tail) - 1:
            denoised = denoising_step(score_model, sde, x, t_batch)
        x, x_mean = euler_maruyama_predictor(score_model, sde, x, t_batch, dt, generator)
        if step == len(tail) - 2:
            one_step_earlier = x_mean
    return {"reference": x_mean, "one step earlier": one_step_earlier, "denoised last step": denoised}


def measure(images, clean, empty_channels, oracle):
    images = images.clamp(0.0, 1.0)
    return {"speckle_share": float((images[:, empty_channels] >= INK_LEVEL).float().mean()) if empty_channels
            else None,
            "recognised_share": float(predict(oracle, images).recognisable.float().mean()),
            "mse_to_clean": float(((images - clean) ** 2).mean())}


def main(argv=None):
    config = configure(globals(), argv, choices=BASE_ONLY)
    if not 2 <= config["TAIL_STEPS"] <= config["NUM_STEPS"]:
        raise UserError(f"--tail-steps must be in [2, --num-steps], got {config['TAIL_STEPS']}")
    out_dir = ensure_writable_dir(config["OUT_DIR"])
    sde = VESDE()
    dataset = ColouredMNIST(config["GEN_IDX"], train=False)
    generator = torch.Generator().manual_seed(config["SEED"])
    clean = dataset.batch(torch.randperm(len(dataset), generator=generator)[:config["NUM_IMAGES"]])
    empty_channels = torch.nonzero(clean.amax(dim=(0, 2, 3)) == 0).flatten().tolist()  # never lit in the data
    oracle = load_oracle()
    rows = [{"checkpoint": "clean test images", "ending": "-", **measure(clean, clean, empty_channels, oracle)}]
    for path in config["CKPT_PATHS"]:
        model = load_score_model(path, sde, input_channels=dataset.channels)
        endings = run_tail(model, sde, clean, config["NUM_STEPS"], config["TAIL_STEPS"], config["SNR"],
                           config["SEED"])
        rows += [{"checkpoint": path, "ending": name, **measure(images, clean, empty_channels, oracle)}
                 for name, images in endings.items()]
    print("| checkpoint | ending | speckle (empty-channel pixels >= ink level) | recognised | MSE to clean |")
    print("|---|---|---|---|---|")
    for row in rows:
        speckle = "–" if row["speckle_share"] is None else f"{row['speckle_share']:.2%}"
        print(f"| {row['checkpoint']} | {row['ending']} | {speckle} | {row['recognised_share']:.1%} | "
              f"{row['mse_to_clean']:.4f} |")
    settings = {key: value for key, value in config.items() if key != "OUT_DIR"}
    path = out_dir / f"last_step_{config['GEN_IDX']}.json"
    path.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
