"""Fast paths: compiled networks, bfloat16 autocast, each checked against eager float32 before it samples, and malloc
keeping freed memory (last section).

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
GroupNorms); in float32 the layout gave no gain (docs/performance.md, "Sampling":
the sampling benchmark's paths before and after this choice).
Under bfloat16 the convolution and linear weights are also cast once, in place,
instead of by autocast on every call: autocast caches no cast of a weight that
does not require grad, so a frozen network paid for the cast of all its weights
at every score call. The scores are the same bits (autocast rounds the same way).
The classifier trunks then also flatten their pooled features in (h, w, c) order,
fc1's columns permuted to match (a view in channels_last: the (c, h, w) flatten
cost a copy forward and two in the max-pool's backward); their state_dict()
keeps the reference order.
"""
import copy
import ctypes
import getpass
import os
import platform
import sys
import tempfile
import time

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
    use_cache_of_this_kernel_set()
    for network in {id(network): network for network in networks}.values():
        network.compile(dynamic=False)


def use_cache_of_this_kernel_set() -> None:
    """Give compiled code a cache folder of its own per CPU kernel set (ATEN_CPU_CAPABILITY), unless the user chose
    one: inductor's cache (precompiled headers included) is keyed without it, so code built for one set was loaded
    or linked under another, and failed to build or ran wrong."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        user = getpass.getuser() if hasattr(os, "getuid") else "user"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
            tempfile.gettempdir(), f"torchinductor_{user}_{torch.backends.cpu.get_cpu_capability().lower()}")


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


def apply_fast_path(score_model, networks, compile_networks=False, precision="float32"):
    """`score_model` on a fast path, unchecked (the benchmarks measure each path; scripts use fast_score_model):
    each of its `networks` compiled in place if asked, and the whole evaluated under autocast when `precision` is
    not float32, its classifiers and compiled networks then in channels_last and the weights of its convolutions
    and linear layers cast to that precision (in place: the networks inside `score_model` then belong to the
    sampler; call them only under autocast)."""
    check_precision(precision)
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


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")


# ---- checked fast paths: what the scripts sample with ----

COMPILE_CHOICES = ("off", "on", "auto")  # auto: time both ways on the first call, keep the faster
# How far a fast path's score may be from eager float32's on the same input, as ||fast - eager|| / ||eager|| over the
# batch. Compiled float32 reorders sums only (errors near 1e-6); bfloat16 keeps 8 bits of mantissa, so its scores
# move by about 2^-8 per layer, a few 1e-3 through a network.
FAST_PATH_TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}
AUTO_COMPILE_REPEATS = 3  # evaluations timed each way for --compile auto, after a warm-up (compiling) call


def compile_setting(value) -> str:
    """A COMPILE setting as one of COMPILE_CHOICES (older settings said True / False)."""
    value = {True: "on", False: "off"}.get(value, value)
    if value not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {list(COMPILE_CHOICES)}, got {value!r}")
    return value


def fast_score_model(score_model, networks, compile="off", precision="float32", expected_calls=None,
                     batch_shapes=1):
    """fast_score_models for one score model."""
    return fast_score_models([score_model], networks, compile, precision, expected_calls, batch_shapes)[0]


def fast_score_models(score_models, networks, compile="off", precision="float32", expected_calls=None,
                      batch_shapes=1) -> list:
    """The score models on the fast path `compile` and `precision` ask for, checked once against eager float32.

    `networks` are the ones that may be compiled (the score networks: a compiled classifier's input gradient ran
    slower on CPU). The score models may share networks (a conditional classifier's pools are compositions of the
    same base models), so one decision serves them all: on the first call of any of them, its score is compared
    with an eager float32 copy's on the same input, and, for compile "auto", timed compiled and eager; the first
    path that agrees within FAST_PATH_TOLERANCE (and the faster one, for auto) is kept, else every model falls
    back to eager float32 with a one-line warning. `FastScore.report()` says what ran. Eager float32 asked for
    is returned unwrapped: nothing to check.
    """
    compile, networks = compile_setting(compile), list(networks)
    check_precision(precision)
    if compile == "off" and precision == "float32":
        return list(score_models)
    references = copy.deepcopy(list(score_models))  # before any in-place change; shares networks as they do
    for reference in references:
        for module in reference.modules():
            # a copied compiled call would still run the original module (whose weights the fast path casts)
            module._compiled_call_impl = module._compiled_impl = None
        # networks an earlier fast path cast in place come back to float32 (their weights then hold bfloat16's
        # digits) and to the default layout: the reference always runs eager float32
        set_layout(reference.float(), channels_last=False)
    fast = [apply_fast_path(model, [], precision=precision) for model in score_models]
    decision = FastPathDecision(networks, compile, precision, expected_calls, batch_shapes)
    return [FastScore(model, reference, decision) for model, reference in zip(fast, references)]


class FastScore(nn.Module):
    """A score model on a fast path with its eager float32 copy; the shared FastPathDecision picks which runs."""

    def __init__(self, fast, reference, decision):
        super().__init__()
        self.fast, self.reference, self.decision = fast, reference, decision
        self.input_channels = reference.input_channels

    def forward(self, x, t):
        if not self.decision.made:  # the decision's checked call already computed this score
            return self.decision.make(self.fast, self.reference, x, t)
        return (self.fast if self.decision.use_fast else self.reference)(x, t)

    def report(self) -> dict:
        return self.decision.report()


def fast_path_report(score_model) -> dict:
    """What ran: a FastScore's report, or eager float32 for any other score model."""
    if isinstance(score_model, FastScore):
        return score_model.report()
    return {"compile": "off", "precision": "float32", "ran": "eager float32"}


class FastPathDecision:
    """Which path the score models of one fast_score_models call take: decided once, on the first call."""

    def __init__(self, networks, compile, precision, expected_calls=None, batch_shapes=1):
        self.networks, self.compile, self.precision = networks, compile, precision
        self.expected_calls, self.batch_shapes = expected_calls, batch_shapes
        self.made, self.use_fast, self.compiled = False, True, False
        self.record = {"compile": compile, "precision": precision}

    def make(self, fast, reference, x, t):
        """Decide, and return the score of (x, t) on the path kept."""
        expected = reference(x, t)
        # auto times eager first, so that a kept compiled path needs no switch back (a recompile)
        candidates = {"on": [True], "off": [False], "auto": [False, True]}[self.compile]
        per_call, first_call, scores, rejected = {}, {}, {}, {}
        for compiled in candidates:
            self.use_compiled(compiled)
            try:
                score, first_call[compiled] = timed(lambda: fast(x, t))  # a first compiled call compiles
                scores[compiled] = score
                problem = disagreement(score, expected, FAST_PATH_TOLERANCE[self.precision])
            except Exception as error:  # e.g. compiled code that does not build here: not a path to take
                problem = f"raised {type(error).__name__}: {first_line(error)}"
            if problem:
                rejected[path_name(compiled, self.precision)] = problem
            else:
                per_call[compiled] = measure_seconds(lambda: fast(x, t), AUTO_COMPILE_REPEATS) \
                    if self.compile == "auto" else 0.0
        self.made = True
        self.record["rejected"] = rejected
        if per_call:
            self.compiled = self.faster(per_call, first_call, len(x), x.device) if len(per_call) == 2 \
                else next(iter(per_call))
            self.use_compiled(self.compiled)
        else:
            self.use_fast = False
            self.use_compiled(False)
            problems = "; ".join(f"{name}: {problem}" for name, problem in rejected.items())
            print(f"warning: the fast path disagrees with eager float32 ({problems}); sampling with eager float32 "
                  f"(or pass --compile off / --precision float32)", file=sys.stderr)
        self.record["ran"] = path_name(self.compiled, self.precision) if self.use_fast else "eager float32"
        return scores[self.compiled] if self.use_fast else expected

    def faster(self, per_call, first_call, batch, device) -> bool:
        """--compile auto: whether compiled is faster, from the measured seconds per evaluation both ways and, when
        the run's length is known, the compiling time it must win back (once per batch shape)."""
        ratio = per_call[True] / per_call[False]
        compiling = max(first_call[True] - per_call[True], 0.0)
        self.record.update(compiled_over_eager=round(ratio, 3), compile_seconds=round(compiling, 1))
        where = f"batch {batch}, {self.precision}, {capability(device)}"
        if self.expected_calls is None:
            compiled = ratio < 1
            verdict = f"compiling took {compiling:.0f} s, which a run of unknown length is taken to win back"
        else:
            costs = {True: compiling * self.batch_shapes + per_call[True] * self.expected_calls,
                     False: per_call[False] * self.expected_calls}
            compiled = costs[True] < costs[False]
            self.record.update(expected_calls=self.expected_calls)
            verdict = (f"over the run's {self.expected_calls} evaluations compiled costs {costs[True]:.0f} s with "
                       f"compiling, eager {costs[False]:.0f} s")
        print(f"--compile auto: compiled/eager time per score evaluation {ratio:.2f} ({where}); {verdict}: "
              f"{'compiled' if compiled else 'eager'} kept", file=sys.stderr)
        return compiled

    def use_compiled(self, compiled):
        """The networks compiled or eager; under bfloat16 compiled ones in channels_last, eager ones contiguous
        (apply_fast_path's layouts)."""
        set_compiled(self.networks, compiled)
        if self.precision != "float32":
            layout = torch.channels_last if compiled else torch.contiguous_format
            for network in self.networks:
                network.to(memory_format=layout)

    def report(self) -> dict:
        """What was asked, what ran, and why: what an output's .json records under "fast_path"."""
        return dict(self.record)


def path_name(compiled, precision) -> str:
    return f"{'compiled' if compiled else 'eager'} {precision}"


def disagreement(score, expected, tolerance):
    """Why `score` cannot stand in for `expected` (non-finite values, or a relative error over `tolerance`); None if
    it can."""
    bad = int((~torch.isfinite(score)).sum())
    if bad:
        return f"{bad} of {score.numel()} score values not finite"
    error = float((score.detach().float() - expected.detach()).norm() / expected.detach().norm().clamp_min(1e-30))
    if not error <= tolerance:
        return f"relative error {error:.2g} > {tolerance:g}"
    return None


def first_line(error) -> str:
    return (str(error).strip().splitlines() or [""])[0][:200]


def timed(call):
    """(call(), its wall time in seconds)."""
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def measure_seconds(call, repeats) -> float:
    """Fastest of `repeats` timed calls (no_grad is not used: a composition differentiates its classifier)."""
    return min(timed(call)[1] for _ in range(repeats))


def capability(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu {torch.backends.cpu.get_cpu_capability()}"


def set_compiled(networks, compiled: bool) -> None:
    """Switch `networks` between compiled (compiling each once, in place) and eager; state_dict keys stay."""
    for network in {id(network): network for network in networks}.values():
        if compiled and getattr(network, "_compiled_impl", None) is None:
            compile_in_place([network])
            network._compiled_impl = network._compiled_call_impl
        network._compiled_call_impl = network._compiled_impl if compiled else None


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
    activation of a sampling step page-faults its memory in again, which made the bfloat16 weight casts and
    channels_last copies of a composed score call several times slower than their arithmetic
    (docs/performance.md, "Sampling"). Outputs do not change; every script sets this at start.
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
