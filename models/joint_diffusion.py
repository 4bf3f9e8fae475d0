"""Joint diffusion (Deja et al. 2023, "Learning Data Representations with Joint Diffusion Models"): one ScoreNet
whose encoder features also feed a classifier head, so that a single network denoises and classifies.

The score part keeps ScoreNet's parameter names; everything the head adds is under `head.`, including the label
space it predicts (the head's extra state), so `score_part(state_dict)` loads into a plain ScoreNet.

Conditional sampling by the model's own head, with step size alpha (the published code's `sampling_lr`), towards
observed classes y_1..y_n (one class: class-conditional sampling; several: the product of their posteriors):
  - "input": classifier guidance, s(x, t) + alpha grad_x sum_k log p(y_k | x_t), the head read through the encoder;
  - "bottleneck": the representation is moved, h4 <- h4 + alpha grad_h4 sum_k log p(y_k | features), and the
    decoder reads the moved h4 (the paper's update of the encoder's representation);
  - "features": every encoder feature map h1..h4 moves so, the decoder reading the moved skip features too (what the
    published sampling script does).
A separately trained time-dependent classifier (LabelClassifier, the project's classifier trunk) gives classic
classifier guidance with the same GuidedScore, the baseline the joint model's head is measured against.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models import freeze
from models.classifier_model import MNISTEncoder
from models.compositions import _FrozenComposition, _log_probs_and_gradient
from models.score_model import DEFAULT_CHANNELS, ScoreNet, swish

HEAD_PREFIX = "head."
HEAD_FEATURE_CHOICES = ("bottleneck", "all")  # what the joint model's head reads: h4 alone, or h1..h4, each average-pooled
GUIDANCE_VARIANTS = ("input", "bottleneck", "features")
HEAD_HIDDEN = 256


class LabelHead(nn.Module):
    """Two linear layers from features to the label space's logits, and the label space itself (extra state).

    `labels`: {"label": what is predicted, "classes": class names, "datasets": what was trained on,
    "multi_label": False, or True with "attributes": the output names and "class_attributes": each class's
    output indices}. Single-label: softmax over the classes. Multi-label (the published --multi_label_classifier):
    one sigmoid per attribute (a digit, a colour), log p(class) = sum of its attributes' log-sigmoids.
    """

    def __init__(self, in_features, labels: dict, hidden=HEAD_HIDDEN):
        super().__init__()
        self.set_extra_state(labels)
        outputs = len(labels["attributes"]) if labels["multi_label"] else len(labels["classes"])
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, outputs)

    @property
    def num_classes(self) -> int:
        return len(self.labels["classes"])

    def forward(self, features):
        return self.fc2(swish(self.fc1(features)))

    def log_probs(self, logits):
        """[B, num_classes] log p(class | input) from the head's logits."""
        if not self.labels["multi_label"]:
            return F.log_softmax(logits, dim=1)
        return F.logsigmoid(logits)[:, self.class_attributes].sum(dim=2)

    def loss(self, logits, classes):
        """Cross-entropy of 0-based class labels [B]; multi-label: binary cross-entropy of their attributes."""
        if not self.labels["multi_label"]:
            return F.cross_entropy(logits, classes)
        targets = torch.zeros_like(logits).scatter_(1, self.class_attributes[classes], 1.0)
        return F.binary_cross_entropy_with_logits(logits, targets)

    def get_extra_state(self):
        return self.labels

    def set_extra_state(self, state):
        self.labels = dict(state)
        # Each class's output indices [K, attributes per class] (multi-label), derived from the labels: not saved.
        attributes = torch.tensor(self.labels.get("class_attributes", []), dtype=torch.long,
                                  device=getattr(self, "class_attributes", torch.empty(0)).device)
        self.register_buffer("class_attributes", attributes, persistent=False)


class JointScoreNet(ScoreNet):
    """ScoreNet plus a LabelHead on its average-pooled encoder features and time embedding."""

    def __init__(self, marginal_prob_std, labels: dict, head_features="all", channels=DEFAULT_CHANNELS,
                 embed_dim: int = 256, input_channels: int = 1):
        super().__init__(marginal_prob_std, channels, embed_dim, input_channels)
        if head_features not in HEAD_FEATURE_CHOICES:
            raise ValueError(f"head_features must be one of {HEAD_FEATURE_CHOICES}, got {head_features!r}")
        self.head_features = head_features
        pooled = sum(self.channels) if head_features == "all" else self.channels[3]
        self.head = LabelHead(pooled + embed_dim, labels)

    def head_logits(self, embed, features):
        read = features if self.head_features == "all" else features[3:]
        return self.head(torch.cat([*(f.mean(dim=(2, 3)) for f in read), embed], dim=1))

    def score_and_logits(self, x, t):
        """One pass: the score and the head's logits (what the joint loss trains)."""
        embed, features = self.encode(x, t)
        return self.decode(embed, features, t), self.head_logits(embed, features)

    def log_probs(self, x, t):
        """[B, num_classes] log p(class | x_t)."""
        embed, features = self.encode(x, t)
        return self.head.log_probs(self.head_logits(embed, features))


class LabelClassifier(nn.Module):
    """A separately trained time-dependent classifier of the same labels: the project's classifier trunk
    (MNISTEncoder) and a LabelHead; log_probs(x, t) as JointScoreNet's."""

    def __init__(self, labels: dict, input_channels=1, channels=(32, 64), embed_dim=256, t_embed_dim=128):
        super().__init__()
        self.input_channels = input_channels
        self.trunk = MNISTEncoder(embed_dim, t_embed_dim, input_channels, channels)
        self.head = LabelHead(embed_dim, labels)

    def forward(self, x, t):
        """The head's logits."""
        return self.head(swish(self.trunk(x, t)))

    def log_probs(self, x, t):
        return self.head.log_probs(self(x, t))


def score_part(state_dict) -> dict:
    """The ScoreNet entries of a JointScoreNet state_dict: what loads into a plain ScoreNet."""
    return {k: v for k, v in state_dict.items() if not k.startswith(HEAD_PREFIX)}


def labels_of_state_dict(state_dict) -> dict:
    """The label space a JointScoreNet or LabelClassifier state_dict predicts; ValueError if it has no head."""
    labels = state_dict.get(HEAD_PREFIX + "_extra_state")
    if not isinstance(labels, dict):
        raise ValueError("no classifier head (head._extra_state)")
    return labels


def _observations_index(observations, num_classes):
    observations = [int(y) for y in observations]
    if not observations or not all(0 <= y < num_classes for y in observations):
        raise ValueError(f"observed classes must be in 0..{num_classes - 1}, got {observations}")
    return observations


class GuidedScore(_FrozenComposition):
    """Classifier guidance: s(x, t) + scale * grad_x sum_k log p(y_k | x_t), by any classifier with
    log_probs(x, t) (a LabelClassifier, or a JointScoreNet's head through its encoder). 0-based classes."""

    def __init__(self, score_model, classifier, observations, scale):
        super().__init__()
        self.score_model, self.classifier = freeze(score_model), freeze(classifier)
        self.input_channels = score_model.input_channels
        self.observations = _observations_index(observations, classifier.head.num_classes)
        self.scale = float(scale)

    def forward(self, x, t):
        with torch.no_grad():
            score = self.score_model(x, t)
        if self.scale == 0.0:
            return score
        _, gradient = _log_probs_and_gradient(lambda x_in: self.classifier.log_probs(x_in, t), x,
                                              lambda log_p: log_p[:, self.observations].sum(dim=1))
        return score + self.scale * gradient


class JointGuidedScore(_FrozenComposition):
    """A JointScoreNet sampled towards observed classes by its own head (the variants in the module docstring),
    with one encoder pass per call."""

    def __init__(self, joint_model, observations, alpha, variant="bottleneck"):
        super().__init__()
        if variant not in GUIDANCE_VARIANTS:
            raise ValueError(f"guidance variant must be one of {GUIDANCE_VARIANTS}, got {variant!r}")
        if variant == "features" and joint_model.head_features != "all":
            raise ValueError("the features variant moves every encoder level the head reads, and this head reads the "
                             "bottleneck alone: use the bottleneck variant")
        self.model = freeze(joint_model)
        self.input_channels = joint_model.input_channels
        self.observations = _observations_index(observations, joint_model.head.num_classes)
        self.alpha, self.variant = float(alpha), variant

    def _selected_log_prob(self, embed, features):
        log_p = self.model.head.log_probs(self.model.head_logits(embed, features))
        return log_p[:, self.observations].sum()

    def forward(self, x, t):
        if self.alpha == 0.0:
            with torch.no_grad():
                return self.model(x, t)
        with torch.enable_grad():
            if self.variant == "input":
                x = x.detach().requires_grad_(True)
                embed, features = self.model.encode(x, t)
                (gradient,) = torch.autograd.grad(self._selected_log_prob(embed, features), x)
                with torch.no_grad():
                    return self.model.decode(embed.detach(), [f.detach() for f in features], t) + self.alpha * gradient
            with torch.no_grad():
                embed, features = self.model.encode(x, t)
            moved = range(4) if self.variant == "features" else [3]
            features = [f.requires_grad_(True) if k in moved else f for k, f in enumerate(features)]
            gradients = torch.autograd.grad(self._selected_log_prob(embed, features), [features[k] for k in moved])
        with torch.no_grad():
            for k, gradient in zip(moved, gradients):
                features[k] = features[k].detach() + self.alpha * gradient
            return self.model.decode(embed, features, t)


def guided_score(joint_model, observations, alpha, variant="bottleneck", classifier=None):
    """The joint model sampled towards the observed (0-based) classes: by its own head (`variant`), or, given a
    separately trained `classifier` of the same labels, by that classifier's guidance of its score part."""
    if classifier is not None:
        return GuidedScore(joint_model, classifier, observations, alpha)
    return JointGuidedScore(joint_model, observations, alpha, variant)


class MarginalProductClassifier(_FrozenComposition):
    """A "dataset" head's P(y | x_t) over m datasets as a joint table log P(y1 | x_t) + log P(y2 | x_t) [B, m, m]:
    where a sculpting joint classifier Q(y1, y2 | x_t) is expected. The two agree at t = 0, where y1 and y2 are
    independent given x; at t > 0 the sculpting classifier learns their dependence through x_0, this does not."""

    def __init__(self, model):
        super().__init__()
        if model.head.labels["label"] != "dataset":
            raise ValueError(f"the head predicts {model.head.labels['label']}s, not which dataset")
        self.model = freeze(model)
        self.num_models = model.head.num_classes
        self.input_channels = model.input_channels

    def forward(self, x, t):
        log_p = self.model.log_probs(x, t)
        return log_p[:, :, None] + log_p[:, None, :]
