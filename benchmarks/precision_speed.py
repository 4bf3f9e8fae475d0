"""float32 against bfloat16 autocast on this machine, and what --precision auto picks here.

Times, on one thread with random weights at the cpu scale's widths: one training step of the ScoreNet
(batch 128, the denoising score-matching loss, as train_diffusion.py) and PC sampling of the 2-model
composition (batch 64, 20 steps, as sample_composition.py), each in float32 and under bfloat16 autocast
(the fastest of REPEATS runs, alternated). Prints the CPU's capability beside the ratios. To see what an
AVX2-only CPU does, cap PyTorch's kernels and oneDNN's:

    python benchmarks/precision_speed.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/precision_speed.py --out <file>
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from sculpting.cli import configure, run_main  # noqa: E402
from sculpting.losses import denoising_score_matching_loss  # noqa: E402
from models.classifier_model import JointYClassifier  # noqa: E402
from models.compositions import compose  # noqa: E402
from models.fast_paths import AutocastScore, apply_fast_path, resolve_precision  # noqa: E402
from models.score_model import ScoreNet  # noqa: E402
from samplers import Sampler  # noqa: E402
from sculpting.sde import VESDE  # noqa: E402

CHANNELS = [32, 64, 128, 128]
TRAIN_BATCH = 128
SAMPLE_BATCH = 64
SAMPLE_STEPS = 20
REPEATS = 3
THREADS = 1
OUT = "benchmarks/results/precision_speed.json"


def fastest(runs, repeats):
    """{name: fastest seconds} over `repeats` alternated rounds of every run (after one warm-up round)."""
    times = {name: [] for name in runs}
    for round_ in range(repeats + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_:
                times[name].append(time.perf_counter() - start)
    return {name: min(seconds) for name, seconds in times.items()}


def main(argv=None):
    config = configure(globals(), argv)
    torch.manual_seed(0)
    sde = VESDE()
    model = ScoreNet(sde.marginal_prob_std, config["CHANNELS"], input_channels=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(config["TRAIN_BATCH"], 3, 28, 28)

    def train_step(score_model):
        def run():
            loss = denoising_score_matching_loss(score_model, x, sde)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return run

    train = fastest({"float32": train_step(model), "bfloat16": train_step(AutocastScore(model))}, config["REPEATS"])

    def composition():
        models = [ScoreNet(sde.marginal_prob_std, config["CHANNELS"], input_channels=3).eval() for _ in range(2)]
        return compose(models, [JointYClassifier(input_channels=3, channels=(16, 32)).eval()], [1, 2], [20.0]), models

    sampler = Sampler("pc", config["SAMPLE_STEPS"])
    float32_model, _ = composition()
    bfloat16_model = apply_fast_path(*composition(), precision="bfloat16")
    sample = fastest({name: (lambda m=m: sampler.sample(m, sde, config["SAMPLE_BATCH"], progress=False))
                      for name, m in (("float32", float32_model), ("bfloat16", bfloat16_model))}, config["REPEATS"])
    capability = torch.backends.cpu.get_cpu_capability()
    report = {"cpu_capability": capability, "auto_precision": resolve_precision("auto", "cpu"),
              "threads": config["THREADS"], "torch": torch.__version__, "train_step_s": train, "sampling_s": sample,
              "settings": config}
    print(f"CPU capability {capability}; --precision auto picks {report['auto_precision']}; "
          f"{config['THREADS']} thread(s), torch {torch.__version__}")
    for what, times in (("training step", train), ("sampling", sample)):
        print(f"{what:<14} float32 {times['float32']:.3f} s, bfloat16 {times['bfloat16']:.3f} s: "
              f"bfloat16 takes {times['bfloat16'] / times['float32']:.2f}x the float32 time")
    out = Path(config["OUT"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    run_main(main)
