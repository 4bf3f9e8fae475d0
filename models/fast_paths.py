"""Fast paths (issue 6): compiled networks, bfloat16 autocast, and malloc keeping freed memory (last section).

Both keep the module structure and state_dict keys unchanged, so checkpoints
load either way. Compiling is float32 and gives the eager scores within float
tolerance; bfloat16 autocast is an option that changes scores slightly, its
effect on the showcase metrics measured in docs/performance.md. The sample
scripts compile the score networks only: compiled, a classifier's forward plus
input gradient ran slower than eager on CPU (benchmarks/sampling_benchmark.py,
path "compiled_all"; docs/performance.md). Under bfloat16 the classifiers and
the compiled networks also switch to channels_last: on CPU, oneDNN's bfloat16
transposed convolutions and the classifiers' forward plus input gradient ran
faster in that layout, while eager score networks ran slower (their
GroupNorms); in float32 the layout gave no gain (README,
Performance: the sampling benchmark's paths before and after this choice).
Under bfloat16 the convolution and linear weights are also cast once, in place,
instead of by autocast on every call: autocast caches no cast of a weight that
does not require grad, so a frozen network paid for the cast of all its weights
at every score call. The scores are the same bits (autocast rounds the same way).
The classifier trunks then also flatten their pooled features in (h, w, c) order,
fc1's columns permuted to match (a view in channels_last: the (c, h, w) flatten
cost a copy forward and two in the max-pool's backward); their state_dict()
keeps the reference order.
"""
import ctypes
import platform
import sys

import torch
import torch.nn as nn

from models.score_model import ScoreNet

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
PRECISION_CHOICES = ["auto", *PRECISIONS]  # auto: bfloat16 where the device computes it natively, else float32
# The layers whose weights autocast casts to the reduced precision (GroupNorm and the Fourier time features
# stay float32: autocast keeps group_norm in float32, and sin(2π t W) needs W's float32 digits).
CAST_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


class AutocastScore(nn.Module):
    """A score model evaluated under autocast to `dtype`, its score returned in float32.

    Convolutions and matmuls run in `dtype`; the sampler's updates and the
    composition's softmax/logsumexp stay float32 (autocast's own policy).
    """

    def __init__(self, score_model, dtype=torch.bfloat16):
        super().__init__()
        self.score_model = score_model
        self.dtype = dtype
        self.input_channels = score_model.input_channels

    def forward(self, x, t):
        with torch.autocast(x.device.type, dtype=self.dtype):
            score = self.score_model(x, t)
        return score.float()


def compile_in_place(networks):
    """torch.compile each distinct network once, in place: same module, same state_dict keys. Static shapes:
    a sampler meets one or two batch sizes, each compiled for its own."""
    for network in {id(network): network for network in networks}.values():
        network.compile(dynamic=False)


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU runs oneDNN's bfloat16 kernels natively: AVX-512 BF16 or AMX on x86, BF16 on Arm.
    oneDNN's own check also says yes for plain AVX-512, where bfloat16 is emulated; on an AVX2-only CPU
    autocast was many times slower than float32 for sampling and training (docs/performance.md)."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        # PyTorch's own kernels must run at AVX-512 too (ATEN_CPU_CAPABILITY=avx2 caps them, as on an AVX2 CPU).
        return torch.backends.cpu.get_cpu_capability() == "AVX512" and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return True


def native_bfloat16(device) -> bool:
    """Whether `device` computes bfloat16 natively (CUDA: the GPU's own report; MPS: no autocast gain assumed)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_computes_bfloat16()


def resolve_precision(precision: str, device) -> str:
    """`precision` with "auto" replaced by bfloat16 where `device` computes it natively, else float32."""
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    if precision == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return precision


def fast_score_model(score_model, networks, compile_networks=False, precision="float32"):
    """`score_model` for sampling: each of its `networks` compiled in place if asked, and the whole
    evaluated under autocast when `precision` is not float32, its classifiers and compiled networks then in
    channels_last and the weights of its convolutions and linear layers cast to that precision (in place:
    the networks inside `score_model` then belong to the sampler; call them only under autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if compile_networks:
        compile_in_place(networks)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return score_model
    set_layout(score_model, channels_last=True)
    for module in score_model.modules():
        if isinstance(module, ScoreNet) and not is_compiled(module):  # eager ones run slower in channels_last
            module.to(memory_format=torch.contiguous_format)  # (their GroupNorms)
        elif isinstance(module, CAST_LAYERS):
            module.to(dtype)
    return AutocastScore(score_model, dtype)


def set_layout(network, channels_last: bool):
    """channels_last memory for `network`'s 4-D weights (state_dict keys stay) and its classifier trunks' matching
    (h, w, c) feature order, in place; or, with False, back to the default layout and the reference order."""
    network.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for module in network.modules():
        if hasattr(module, "use_channels_last_features"):
            module.use_channels_last_features(channels_last)


def is_compiled(network) -> bool:
    """Whether nn.Module.compile() was called on `network` (here or by compile_in_place elsewhere)."""
    return getattr(network, "_compiled_call_impl", None) is not None


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest: tensors up to 32 MiB come from the reusable heap
TRIM_THRESHOLD_BYTES = 256 << 20  # freed memory the process keeps before returning it to the OS


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed tensor memory for reuse; True where it took effect (glibc only).

    By default glibc maps each block over 128 KiB fresh from the OS and unmaps it on free, so every
    activation of a sampling step page-faults its memory in again: on the 2-core machine that made the
    bfloat16 weight casts and channels_last copies of a composed score call several times slower than
    their arithmetic (README, Performance). Outputs do not change; every script sets this at start.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def malloc_setting(keep_freed: bool) -> str:
    """For benchmarks: apply keep_freed_memory() if `keep_freed`; name the allocator setting in effect."""
    return "keeps freed memory" if keep_freed and keep_freed_memory() else "default"
