"""The torch backend's GPU fast path: CUDA graphs, torch.compile, channels-last, encoder offload.

Everything here is opt-in (`FastPathOptions`, or the `SDXS_RT_*` environment variables read by
`FastPathOptions.from_env`) and changes speed and memory only: the maths of a step is the same
U-Net call, so the image is the same within rounding. On a device other than CUDA, CUDA graphs
and the text-encoder offload are no-ops; compile and channels-last work everywhere.

- `CudaGraphUNet`: one CUDA graph per input shape of the whole U-Net step. Replaying it copies
  the inputs into static buffers (`copy_`, and `fill_` for the timestep): no allocation inside the
  graph's work and no host synchronisation per step.
- `compile_unet`: `torch.compile` of the diffusers module (`fullgraph=False`, `dynamic=False`).
- `use_channels_last`: NHWC weights (and inputs, for the U-Net) for the tensor cores' convolutions.
- `OffloadedTextEncoder`: the text encoder's weights live on the CPU except while a prompt it has
  not seen yet is encoded (the pipeline already caches the negative prompt's embedding).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from sdxs_rt.backends.torch.unet import TorchUNet
from sdxs_rt.errors import UsageError

logger = logging.getLogger(__name__)

ENV_CUDA_GRAPHS = "SDXS_RT_CUDA_GRAPHS"
ENV_COMPILE = "SDXS_RT_COMPILE"
ENV_CHANNELS_LAST = "SDXS_RT_CHANNELS_LAST"
ENV_OFFLOAD_TEXT_ENCODER = "SDXS_RT_OFFLOAD_TEXT_ENCODER"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TRUE_WORDS = ("1", "true", "yes", "on")

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class FastPathOptions:
    """Which GPU speed-ups the torch backend applies (all off by default)."""

    cuda_graphs: bool = False
    compile: str | None = None  # a torch.compile mode, see COMPILE_MODES
    channels_last: bool = False
    offload_text_encoder: bool = False

    def __post_init__(self) -> None:
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise UsageError(
                f"unknown compile mode {self.compile!r}; use one of: {', '.join(COMPILE_MODES)}"
            )
        if self.cuda_graphs and self.compile in ("reduce-overhead", "max-autotune"):
            raise UsageError(
                f"compile mode {self.compile!r} records CUDA graphs itself; use it without "
                "cuda_graphs, or cuda_graphs with 'max-autotune-no-cudagraphs'"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FastPathOptions | None:
        """Options from the SDXS_RT_* variables; None when none of them is set."""
        env = os.environ if environ is None else environ
        names = (ENV_CUDA_GRAPHS, ENV_COMPILE, ENV_CHANNELS_LAST, ENV_OFFLOAD_TEXT_ENCODER)
        if not any(env.get(name) for name in names):
            return None
        return cls(
            cuda_graphs=_flag(env, ENV_CUDA_GRAPHS),
            compile=env.get(ENV_COMPILE) or None,
            channels_last=_flag(env, ENV_CHANNELS_LAST),
            offload_text_encoder=_flag(env, ENV_OFFLOAD_TEXT_ENCODER),
        )

    def info(self, device: torch.device) -> dict[str, Any]:
        """For `Components.info`: the options, and which of them really act on `device`."""
        on_cuda = device.type == "cuda"
        return {
            **asdict(self),
            "cuda_graphs_active": self.cuda_graphs and on_cuda,
            "offload_active": self.offload_text_encoder and on_cuda,
            "pinned_noise_staging": on_cuda,
        }


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in TRUE_WORDS


# --- channels-last and torch.compile ------------------------------------------------------------


def use_channels_last(module: M) -> M:
    """NHWC weights: convolutions then run channels-last (on CUDA, with tensor cores)."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def channels_last_unet(unet: TorchUNet) -> TorchUNet:
    """Channels-last weights, and inputs converted to match (no layout change per layer)."""
    use_channels_last(unet.unet)
    unet.memory_format = torch.channels_last
    return unet


def compile_unet(
    unet: TorchUNet, mode: str = "max-autotune-no-cudagraphs", *, backend: str = "inductor"
) -> TorchUNet:
    """A TorchUNet whose diffusers module is `torch.compile`d (compiled lazily, per shape).

    The original is left as it was; both share the weights. `backend` other than "inductor"
    (e.g. "eager", "aot_eager") is for tests: modes only apply to inductor.
    """
    if mode not in COMPILE_MODES:
        raise UsageError(f"unknown compile mode {mode!r}; use one of: {', '.join(COMPILE_MODES)}")
    options: dict[str, Any] = {"mode": mode} if backend == "inductor" else {}
    compiled = copy.copy(unet)
    module = torch.compile(unet.unet, fullgraph=False, dynamic=False, backend=backend, **options)
    compiled.unet = module  # type: ignore[assignment]
    return compiled


# --- CUDA graphs --------------------------------------------------------------------------------


class Replayable(Protocol):
    def replay(self) -> None: ...


# capture(fn) -> (graph, output): records fn's work once; graph.replay() redoes it into output
GraphCapture = Callable[[Callable[[], torch.Tensor]], tuple[Replayable, torch.Tensor]]


def capture_cuda_graph(
    fn: Callable[[], torch.Tensor], *, pool: Any = None, warmup_steps: int = 2
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Warm `fn` up on a side stream (lazy inits, cuDNN/cuBLAS plans), then capture it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = fn()
    return graph, output


@dataclass
class StaticStep:
    """One captured U-Net step: its graph and the buffers it reads and writes."""

    graph: Replayable
    sample: torch.Tensor
    timestep: torch.Tensor  # 0-d float32 on the device
    context: torch.Tensor
    output: torch.Tensor

    def load(self, sample: torch.Tensor, timestep: Any, context: torch.Tensor) -> None:
        self.sample.copy_(sample)  # casts to the model dtype and layout, in place
        load_timestep(self.timestep, timestep)
        self.context.copy_(context)


def load_timestep(buffer: torch.Tensor, timestep: Any) -> None:
    """In place, without a host sync: a fill kernel for a number, an async copy for a tensor."""
    if isinstance(timestep, torch.Tensor):
        buffer.copy_(timestep.reshape(()), non_blocking=True)
    else:
        buffer.fill_(float(timestep))


StepKey = tuple[tuple[int, ...], torch.dtype, tuple[int, ...], torch.dtype]


class CudaGraphUNet:
    """`sdxs_rt.components.UNet` that replays a CUDA graph of the whole step, one per shape.

    The first call with a new (sample shape/dtype, context shape/dtype) captures; later ones copy
    their inputs into that graph's static buffers and replay. Off CUDA it calls the wrapped U-Net
    (eager), unless a `capture` function is given (tests inject one that needs no GPU).
    All graphs share one memory pool: safe because each output is copied out right after its
    replay, in stream order, before any other graph can run.
    """

    def __init__(self, unet: TorchUNet, *, capture: GraphCapture | None = None) -> None:
        self.inner = unet
        self.device = unet.device
        self.dtype = unet.dtype
        self.folded_blocks = unet.folded_blocks
        self.enabled = capture is not None or self.device.type == "cuda"
        self._capture = capture
        self.steps: dict[StepKey, StaticStep] = {}

    def __call__(
        self, sample: torch.Tensor, timestep: float, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        if not self.enabled:
            return self.inner(sample, timestep, encoder_hidden_states)
        with torch.inference_mode():
            step = self._step_for(sample, encoder_hidden_states)
            step.load(sample, timestep, encoder_hidden_states)
            step.graph.replay()
            # a copy (the next replay overwrites the static output), in the pipeline's layout
            return step.output.to(
                sample.device, sample.dtype, memory_format=torch.contiguous_format, copy=True
            )

    def clear(self) -> None:
        """Forget every captured graph (their memory returns to the pool)."""
        self.steps.clear()

    def _step_for(self, sample: torch.Tensor, context: torch.Tensor) -> StaticStep:
        key = (tuple(sample.shape), sample.dtype, tuple(context.shape), context.dtype)
        step = self.steps.get(key)
        if step is None:
            logger.info("capturing a CUDA graph of the U-Net for sample shape %s", key[0])
            step = self.steps[key] = self._record(sample, context)
        return step

    def _record(self, sample: torch.Tensor, context: torch.Tensor) -> StaticStep:
        inner = self.inner
        layout = inner.memory_format if sample.ndim == 4 else torch.contiguous_format
        static_sample = torch.empty(
            sample.shape, dtype=inner.dtype, device=inner.device, memory_format=layout
        ).zero_()
        static_t = torch.zeros((), dtype=torch.float32, device=inner.device)
        static_context = torch.zeros(context.shape, dtype=inner.dtype, device=inner.device)
        static_context.copy_(context)
        graph, output = self._capture_function()(
            lambda: inner.run(static_sample, static_t, static_context)
        )
        return StaticStep(graph, static_sample, static_t, static_context, output)

    def _capture_function(self) -> GraphCapture:
        if self._capture is None:
            self._capture = partial(capture_cuda_graph, pool=torch.cuda.graph_pool_handle())
        return self._capture


# --- text encoder offload -----------------------------------------------------------------------


def encoder_modules(encoder: Any) -> list[nn.Module]:
    """The torch modules an encoder object holds (native: tower + projection; remote: model)."""
    return [value for value in vars(encoder).values() if isinstance(value, nn.Module)]


class OffloadedTextEncoder:
    """A text encoder whose weights wait on the CPU, and visit the GPU only to encode a prompt
    not seen recently (the last `cache_size` prompt lists are remembered)."""

    def __init__(
        self,
        encoder: Any,
        device: torch.device,
        *,
        active: bool | None = None,
        cache_size: int = 16,
    ) -> None:
        self.encoder = encoder
        self.width = encoder.width
        self.device = torch.device(device)
        self.modules = encoder_modules(encoder)
        self.active = self.device.type == "cuda" if active is None else active
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self.loads = 0  # how many times the weights went to the device
        self.park()

    def __call__(self, prompts: Sequence[str]) -> Any:
        key = (prompts,) if isinstance(prompts, str) else tuple(prompts)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        self.unpark()
        try:
            embeds = self.encoder(prompts)
        finally:
            self.park()
        self._cache[key] = embeds
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return embeds

    def park(self) -> None:
        """Weights to the CPU; the device memory goes back to the driver."""
        if not self.active:
            return
        for module in self.modules:
            module.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def unpark(self) -> None:
        if not self.active:
            return
        self.loads += 1
        for module in self.modules:
            module.to(self.device)


# --- assembly -----------------------------------------------------------------------------------


def accelerate_unet(unet: TorchUNet, options: FastPathOptions) -> TorchUNet | CudaGraphUNet:
    """channels-last, then compile, then CUDA graphs around the result, as the options say."""
    if options.channels_last:
        unet = channels_last_unet(unet)
    if options.compile is not None:
        unet = compile_unet(unet, options.compile)
    if options.cuda_graphs and unet.device.type == "cuda":
        return CudaGraphUNet(unet)
    return unet
