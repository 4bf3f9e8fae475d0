"""Time-dependent classifiers Q(y | x_t) over "which base model" labels (docs/reference.md §4).

Parameter names and shapes are the checkpoint format shared with the reference
implementation: do not rename layers. Every classifier returns LOG-probabilities.

Joint tables over two labels are symmetric by construction: the head predicts
one logit per unordered pair {y1, y2}; pair cells come first on the diagonal
({1,1}, {2,2}, ...), then off the diagonal in order ({1,2}, {1,3}, {2,3}). An
off-diagonal pair's probability is split equally between its two ordered cells.
The pure functions below hold that parametrisation, so any trunk (these CNNs,
or a small MLP on 2-D data) produces the same tables from its head logits.
"""
import math
from itertools import combinations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.score_model import GaussianFourierProjection, swish

IMAGE_FEATURE_SIZE = 12  # 28 -> 26 -> 24 after two 3x3 convs, -> 12 after 2x2 max-pool
HIDDEN_DIM = 512
THREE_WAY_HEAD_HIDDEN = 256
NUM_PAIRS_3 = 6  # unordered pairs of 3 labels: the conditional classifier's one-hot y embedding


def unordered_pairs(num_models: int):
    """Unordered label pairs (1-based) in cell order: the diagonal first, then (1,2), (1,3), (2,3), ..."""
    return [(y, y) for y in range(1, num_models + 1)] + list(combinations(range(1, num_models + 1), 2))


def pair_index_table(num_models: int) -> torch.Tensor:
    """[m, m] LongTensor: entry [y1-1, y2-1] is the cell index of the unordered pair {y1, y2}."""
    table = torch.empty(num_models, num_models, dtype=torch.long)
    for index, (y1, y2) in enumerate(unordered_pairs(num_models)):
        table[y1 - 1, y2 - 1] = table[y2 - 1, y1 - 1] = index
    return table


def pair_index(y1, y2, num_models: int = 3) -> torch.Tensor:
    """Cell index of the unordered pair {y1, y2} of 1-based labels (ints or LongTensors), in either order."""
    y1, y2 = torch.as_tensor(y1), torch.as_tensor(y2)
    for labels in (y1, y2):
        if labels.numel() and (labels.min() < 1 or labels.max() > num_models):
            raise ValueError(f"labels must be in 1..{num_models}, got {labels.tolist()}")
    table = pair_index_table(num_models).to(y1.device)
    return table[y1.long() - 1, y2.long() - 1]


def _symmetric_joint_log_probs(logits: torch.Tensor, num_models: int) -> torch.Tensor:
    """[B, P-1] logits of the P unordered pairs (the last pair's logit is the constant 0) -> [B, m, m]."""
    pairs = unordered_pairs(num_models)
    if logits.shape[-1] != len(pairs) - 1:
        raise ValueError(f"{num_models} models need {len(pairs) - 1} logits, got {logits.shape[-1]}")
    # log 2 on an off-diagonal pair's logit makes it the log of the pair's total probability;
    # subtracting it again after normalising gives each of its two ordered cells half of it.
    offsets = logits.new_tensor([0.0 if y1 == y2 else math.log(2.0) for y1, y2 in pairs])
    padded = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1) + offsets
    cell_log_probs = F.log_softmax(padded, dim=1) - offsets
    return cell_log_probs[:, pair_index_table(num_models).to(logits.device)]


def two_way_joint_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Head logits [B, 2] -> log Q(y1, y2 | x_t) [B, 2, 2]; log_softmax([o0, o1, log 2]) as the reference."""
    return _symmetric_joint_log_probs(logits, 2)


def three_way_joint_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Head logits [B, 5] -> log Q(y1, y2 | x_t) [B, 3, 3]."""
    return _symmetric_joint_log_probs(logits, 3)


def conditional_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Head logits [B, 2] -> log Q(y3 | x_t, y1, y2) [B, 3] = log_softmax([o0, o1, 0])."""
    return F.log_softmax(torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1), dim=1)


def marginal_log_probs(joint: torch.Tensor) -> torch.Tensor:
    """log Q(y1 | x_t) [B, m] from a joint table [B, m, m] (logsumexp over the second label)."""
    return torch.logsumexp(joint, dim=2)


def _permute_image_columns(weight, channels, to_channels_last):
    """fc1's weight with its image-feature columns reordered between flattening orders (c, h, w) and (h, w, c);
    the time and label columns after them stay."""
    size = channels * IMAGE_FEATURE_SIZE ** 2
    image = weight[:, :size].reshape(len(weight), channels, IMAGE_FEATURE_SIZE, IMAGE_FEATURE_SIZE)
    image = image.permute(0, 2, 3, 1) if to_channels_last else \
        image.reshape(len(weight), IMAGE_FEATURE_SIZE, IMAGE_FEATURE_SIZE, channels).permute(0, 3, 1, 2)
    return torch.cat([image.reshape(len(weight), size), weight[:, size:]], dim=1)


def _state_dict_in_reference_order(trunk, state_dict, prefix, local_metadata):
    if trunk.features_channels_last:
        key = prefix + "fc1.weight"
        state_dict[key] = _permute_image_columns(state_dict[key].detach(), trunk.conv2.out_channels, False)


def _load_into_current_order(trunk, state_dict, prefix, *args):
    """Checkpoints hold the reference order. load_state_dict hands hooks its own copy of the dict, and fc1 reads
    its entry from it after this hook, so the caller's dict stays as it was."""
    key = prefix + "fc1.weight"
    if trunk.features_channels_last and key in state_dict:
        state_dict[key] = _permute_image_columns(state_dict[key], trunk.conv2.out_channels, True)


class _TimeConditionedCNN(nn.Module):
    """The shared trunk: two convs, max-pool, two linear layers; the time (and label) embedding joins fc1."""

    def __init__(self, embed_dim, t_embed_dim, y_embed_dim, input_channels, channels):
        super().__init__()
        c0, c1 = channels
        self.conv1 = nn.Conv2d(input_channels, c0, 3, 1)
        self.conv2 = nn.Conv2d(c0, c1, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(IMAGE_FEATURE_SIZE ** 2 * c1 + t_embed_dim + y_embed_dim, HIDDEN_DIM)
        self.fc2 = nn.Linear(HIDDEN_DIM + y_embed_dim, embed_dim)
        self.embed = nn.Sequential(GaussianFourierProjection(t_embed_dim), nn.Linear(t_embed_dim, t_embed_dim))
        self.features_channels_last = False
        # state_dict() and load_state_dict() always speak the reference's (c, h, w) column order of fc1.
        self.register_state_dict_post_hook(_state_dict_in_reference_order)
        self.register_load_state_dict_pre_hook(_load_into_current_order)

    def use_channels_last_features(self, enabled=True):
        """Flatten the pooled features in (h, w, c) order, fc1's columns permuted to match, in place.

        In channels_last memory that flatten is a view, where the (c, h, w) order costs a copy forward and
        more in the max-pool's backward (models/fast_paths.py). The function is the same.
        """
        if enabled != self.features_channels_last:
            with torch.no_grad():
                self.fc1.weight.copy_(_permute_image_columns(self.fc1.weight, self.conv2.out_channels, enabled))
            self.features_channels_last = enabled

    def encode(self, x, t, label_features):
        """`label_features`: [] or [y_embed], appended to the inputs of fc1 and fc2."""
        embed = swish(self.embed(t))
        # max-pool before the ReLU: the same function (ReLU is monotone), with the ReLU on a 4x smaller tensor
        h = F.relu(F.max_pool2d(self.conv2(F.relu(self.conv1(x))), 2))
        h = self.dropout1(h)
        h = h.permute(0, 2, 3, 1).flatten(1) if self.features_channels_last else h.flatten(1)
        h = self.dropout2(F.relu(self.fc1(torch.cat([h, embed, *label_features], dim=1))))
        return self.fc2(torch.cat([h, *label_features], dim=1))


class MNISTEncoder(_TimeConditionedCNN):
    """CNN trunk on 28x28 images with a Fourier time embedding: (x, t) -> [B, embed_dim]."""

    def __init__(self, embed_dim, t_embed_dim=128, input_channels=1, channels=(32, 64)):
        super().__init__(embed_dim, t_embed_dim, 0, input_channels, channels)

    def forward(self, x, t):
        return self.encode(x, t, [])


class MNISTConditionalEncoder(_TimeConditionedCNN):
    """MNISTEncoder that also takes a label embedding y_embed [B, y_embed_dim] in fc1 and fc2."""

    def __init__(self, embed_dim, t_embed_dim=128, y_embed_dim=6, input_channels=1, channels=(64, 64)):
        super().__init__(embed_dim, t_embed_dim, y_embed_dim, input_channels, channels)

    def forward(self, x, t, y_embed):
        return self.encode(x, t, [y_embed])


class JointYClassifier(nn.Module):
    """log Q(y1, y2 | x_t) for two base models: [B, 2, 2], symmetric."""

    num_models = 2

    def __init__(self, embed_dim=256, t_embed_dim=128, input_channels=1, channels=(32, 64)):
        super().__init__()
        self.input_channels = input_channels
        self.trunk = MNISTEncoder(embed_dim, t_embed_dim, input_channels, channels)
        self.non_term_head = nn.Linear(embed_dim, 2)

    def forward(self, x, t):
        return two_way_joint_log_probs(self.non_term_head(self.trunk(x, t)))


class ThreeWayJointYClassifier(nn.Module):
    """log Q(y1, y2 | x_t) for three base models: [B, 3, 3], symmetric."""

    num_models = 3

    def __init__(self, embed_dim=512, t_embed_dim=128, input_channels=1, channels=(64, 96)):
        super().__init__()
        self.input_channels = input_channels
        self.trunk = MNISTEncoder(embed_dim, t_embed_dim, input_channels, channels)
        self.head = nn.Sequential(nn.Linear(embed_dim, THREE_WAY_HEAD_HIDDEN), nn.ReLU(),
                                  nn.Linear(THREE_WAY_HEAD_HIDDEN, 5))

    def forward(self, x, t):
        return three_way_joint_log_probs(self.head(self.trunk(x, t)))


class ThreeWayConditionalYClassifier(nn.Module):
    """log Q(y3 | x_t, y1, y2) for three base models: [B, 3], given 1-based labels y1, y2 [B]."""

    num_models = 3

    def __init__(self, embed_dim=256, t_embed_dim=128, input_channels=1, channels=(64, 64)):
        super().__init__()
        self.input_channels = input_channels
        self.trunk = MNISTConditionalEncoder(embed_dim, t_embed_dim, NUM_PAIRS_3, input_channels, channels)
        self.head = nn.Linear(embed_dim, 2)

    def forward(self, x, t, y1, y2):
        y_embed = F.one_hot(pair_index(y1, y2, self.num_models).to(x.device), NUM_PAIRS_3).to(x.dtype)
        return conditional_log_probs(self.head(self.trunk(x, t, y_embed)))


def classifier_config_from_state_dict(state_dict) -> dict:
    """Constructor kwargs (embed_dim, t_embed_dim, input_channels, channels) that produced a classifier state_dict."""
    try:
        conv1, conv2 = state_dict["trunk.conv1.weight"], state_dict["trunk.conv2.weight"]
        return {
            "embed_dim": state_dict["trunk.fc2.weight"].shape[0],
            "t_embed_dim": state_dict["trunk.embed.1.weight"].shape[0],
            "input_channels": conv1.shape[1],
            "channels": (conv1.shape[0], conv2.shape[0]),
        }
    except KeyError as missing:
        raise ValueError(f"not a classifier state_dict (no {missing})") from None
