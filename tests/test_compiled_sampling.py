"""The float32 fast path (networks compiled in place) gives the same composed scores as eager."""
import torch

from models.classifier_model import JointYClassifier
from models.compositions import BinaryDiffusionComposition
from models.score_model import ScoreNet
from samplers import pc_sampler
from sde import VESDE


def test_compiled_composition_matches_eager():
    torch.manual_seed(0)
    sde = VESDE()
    models = [ScoreNet(sde.marginal_prob_std, (32, 32, 32, 32), embed_dim=32, input_channels=3) for _ in range(2)]
    classifier = JointYClassifier(embed_dim=32, t_embed_dim=16, input_channels=3, channels=(8, 8))
    composition = BinaryDiffusionComposition(models, classifier, 1, 2, guidance_scale=20.0)
    x, t = torch.randn(4, 3, 28, 28) * 3, torch.tensor([0.9, 0.5, 0.2, 0.05])
    eager = composition(x, t)
    eager_samples = pc_sampler(composition, sde, 4, 3, generator=torch.Generator().manual_seed(1), progress=False)
    for network in [*models, classifier]:
        network.compile()
    compiled = composition(x, t)
    compiled_samples = pc_sampler(composition, sde, 4, 3, generator=torch.Generator().manual_seed(1), progress=False)
    assert any(getattr(m, "_compiled_call_impl", None) is not None for m in models)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4 * float(eager.abs().max()))
    torch.testing.assert_close(compiled_samples, eager_samples, rtol=1e-3, atol=1e-3)
