"""The torch U-Net: diffusers' UNet2DConditionModel, with single-token cross-attention folded.

MODEL.md, fact 1: SDXS conditions on ONE context token, and softmax over one key is exactly 1,
so every cross-attention returns `to_out(to_v(context))` for every pixel. Folding replaces the
query projection, the key projection, the attention kernel and the query LayerNorm (`norm2`) of
each cross-attention block by that per-prompt vector, broadcast. Any other input (several
tokens, an attention mask) takes the exact standard path, so folding is never wrong.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from sdxs_rt.backends.torch.lora import LoraSpec, apply_loras
from sdxs_rt.backends.torch.weights import load_diffusers_module, read_config

T = TypeVar("T")
# diffusers calls norm2(hidden_states) with no other argument for these norm types
PLAIN_NORM2_TYPES = ("layer_norm", "layer_norm_i2vgen", "ada_norm_zero")


class TensorKeyedCache:
    """Remembers one value derived from some tensors, valid while they are unchanged.

    "Unchanged" means: the very same tensor objects (weak references, so a freed tensor whose
    id is reused never matches), with the same version counters (bumped by every in-place
    write) and the same storage. Inference tensors have no version counter, and values built
    with autograd on must not outlive their graph: both are computed afresh, never cached, as
    is everything while tracing or compiling (fake tensors, and the graph must hold the maths).
    """

    def __init__(self) -> None:
        self._entry: tuple[list[tuple[Any, int, int]], Any] | None = None
        self.hits = 0

    def get(self, tensors: Sequence[torch.Tensor], compute: Callable[[], T]) -> T:
        if _tracing() or torch.is_grad_enabled() or any(t.is_inference() for t in tensors):
            return compute()
        entry = self._entry
        if entry is not None and self._matches(entry[0], tensors):
            self.hits += 1
            return entry[1]
        value = compute()
        # one tuple assignment: a concurrent reader sees the old entry or the new one, never half
        self._entry = ([(weakref.ref(t), t._version, t.data_ptr()) for t in tensors], value)
        return value

    @staticmethod
    def _matches(stamps: list[tuple[Any, int, int]], tensors: Sequence[torch.Tensor]) -> bool:
        if len(stamps) != len(tensors):
            return False
        return all(
            ref() is t and version == t._version and ptr == t.data_ptr()
            for (ref, version, ptr), t in zip(stamps, tensors, strict=True)
        )

    def clear(self) -> None:
        self._entry = None


def _tracing() -> bool:
    # A CUDA graph being captured must record the maths too: a cached value would be baked
    # into the graph as a constant and go stale when the static context buffer is refilled.
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
        or _capturing_cuda_graph()
    )


def _capturing_cuda_graph() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class DeferredLayerNorm(nn.LayerNorm):
    """A LayerNorm whose forward is the identity; `normalize` applies it when really needed.

    Same parameter names as the LayerNorm it replaces, so state dicts, `.to()` and exports see
    the same module tree.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states

    def normalize(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden_states)

    @classmethod
    def replacing(cls, norm: nn.LayerNorm) -> DeferredLayerNorm:
        deferred = cls(
            norm.normalized_shape,
            eps=norm.eps,
            elementwise_affine=norm.elementwise_affine,
            bias=norm.bias is not None,
            device="meta",  # placeholders only: the original parameters are moved in below
        )
        deferred.weight = norm.weight
        deferred.bias = norm.bias
        return deferred


class SingleTokenCrossAttnProcessor:
    """attn2 processor: with one context token and no mask, the output is one vector per item."""

    def __init__(self, fallback: Any, query_norm: DeferredLayerNorm | None) -> None:
        self.fallback = fallback  # the exact standard processor (SDPA)
        self.query_norm = query_norm  # set when norm2 was deferred: the query arrives unnormed
        self.cache = TensorKeyedCache()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not _single_token_case(hidden_states, encoder_hidden_states, attention_mask):
            return self._standard(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        assert encoder_hidden_states is not None
        vector = self._context_vector(attn, encoder_hidden_states)  # (B, 1, C)
        if attn.residual_connection:  # the residual is the (normed) query; norm2 was kept
            return (vector + hidden_states) / attn.rescale_output_factor
        vector = vector / attn.rescale_output_factor
        return vector.expand(hidden_states.shape[0], hidden_states.shape[1], vector.shape[-1])

    def _context_vector(self, attn: Attention, context: torch.Tensor) -> torch.Tensor:
        modules = [m for m in (attn.to_v, attn.to_out, attn.norm_cross) if m is not None]
        weights = [p for m in modules for p in m.parameters()]
        return self.cache.get([context, *weights], lambda: _value_path(attn, context))

    def _standard(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        if self.query_norm is not None:
            hidden_states = self.query_norm.normalize(hidden_states)
        extra = {} if temb is None else {"temb": temb}
        return self.fallback(
            attn, hidden_states, encoder_hidden_states, attention_mask=attention_mask, **extra
        )


def _single_token_case(
    query: torch.Tensor, context: torch.Tensor | None, mask: torch.Tensor | None
) -> bool:
    return (
        context is not None
        and mask is None
        and query.ndim == 3
        and context.ndim == 3
        and context.shape[1] == 1
        and context.shape[0] == query.shape[0]
    )


def _value_path(attn: Attention, context: torch.Tensor) -> torch.Tensor:
    """What the attention returns when its single key gets weight exactly 1: to_out(to_v(ctx))."""
    if attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    value = attn.to_v(context)
    return attn.to_out[1](attn.to_out[0](value))  # linear, then dropout (identity in eval)


def _foldable(block: BasicTransformerBlock) -> bool:
    attn = block.attn2
    # double_self_attention makes attn2 a self-attention: nothing to fold there
    return (
        attn is not None
        and attn.is_cross_attention
        and attn.to_v is not None
        and attn.to_out is not None
        and getattr(attn, "added_kv_proj_dim", None) is None
    )


def _defer_query_norm(block: BasicTransformerBlock) -> DeferredLayerNorm | None:
    """Make norm2 an identity where the folded path never reads the normed query's values."""
    norm = block.norm2
    if isinstance(norm, DeferredLayerNorm):
        return norm  # folded before
    plain_call = block.norm_type in PLAIN_NORM2_TYPES and block.pos_embed is None
    if type(norm) is not nn.LayerNorm or not plain_call or block.attn2.residual_connection:
        return None  # the normed query is used (ada norms, positional embedding, residual)
    block.norm2 = DeferredLayerNorm.replacing(norm)
    return block.norm2


def fold_cross_attention(unet: nn.Module) -> int:
    """Fold every single-token-capable attn2 of `unet`; returns how many blocks were folded.

    Folding twice is harmless: an already folded block keeps its processor and deferred norm.
    """
    folded = 0
    for block in unet.modules():
        if not isinstance(block, BasicTransformerBlock) or not _foldable(block):
            continue
        current = block.attn2.processor
        if isinstance(current, SingleTokenCrossAttnProcessor):
            current = current.fallback
        query_norm = _defer_query_norm(block)
        block.attn2.set_processor(SingleTokenCrossAttnProcessor(current, query_norm))
        folded += 1
    return folded


# On CUDA: flash attention (fp16/bf16), else memory-efficient, math only as the last resort;
# naming them also overrides a global `torch.backends.cuda.enable_flash_sdp(False)`.
FAST_SDPA_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def preferred_attention(device: torch.device) -> AbstractContextManager[Any]:
    """Scope for a U-Net call: the fast SDPA kernels on CUDA, nothing changed elsewhere."""
    if device.type != "cuda":
        return nullcontext()
    return sdpa_kernel(FAST_SDPA_BACKENDS, set_priority=True)


def use_sdpa_attention(model: nn.Module) -> int:
    """Give every attention torch's scaled_dot_product_attention (diffusers' AttnProcessor2_0).

    Attentions with scale_qk=False keep their processor: SDPA would scale them differently.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, Attention) and module.scale_qk:
            module.set_processor(AttnProcessor2_0())
            changed += 1
    return changed


class TorchUNet:
    """`sdxs_rt.components.UNet` on a diffusers UNet2DConditionModel."""

    def __init__(self, unet: UNet2DConditionModel, *, fold: bool = True) -> None:
        self.unet = unet
        self.dtype = unet.dtype
        self.device = unet.device
        use_sdpa_attention(unet)
        self.folded_blocks = fold_cross_attention(unet) if fold else 0
        self.memory_format = torch.contiguous_format  # `fast.use_channels_last` changes it
        self._context_cache = TensorKeyedCache()
        self.lora_info: list[dict[str, Any]] = []  # the LoRAs merged at load time

    @classmethod
    def load(
        cls,
        unet_dir: Path,
        weights: Path,
        device: torch.device | str,
        dtype: torch.dtype,
        fold: bool = True,
        config: dict[str, Any] | None = None,
        loras: Sequence[LoraSpec] = (),
    ) -> TorchUNet:
        """`config`: the already-read config.json (read from `unet_dir` when None); `loras`
        are merged into the weights before folding (`lora_info` then lists them)."""
        config = config or read_config(Path(unet_dir) / "config.json")
        unet = load_diffusers_module(UNet2DConditionModel, config, Path(weights), device, dtype)
        # The folded attentions are built from the weights: merge first.
        info = apply_loras(unet, loras)
        model = cls(unet, fold=fold)
        model.lora_info = info
        return model

    def __call__(
        self, sample: torch.Tensor, timestep: float, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        context = self._prepare_context(encoder_hidden_states)
        with torch.inference_mode():
            x = sample.to(self.device, self.dtype, memory_format=self.memory_format)
            out = self.run(x, self.timestep_tensor(timestep), context)
            # latents stay float32 in the pipeline even when the model runs in half precision
            return out.to(sample.device, sample.dtype, memory_format=torch.contiguous_format)

    def run(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The bare model on device tensors (x and context in the model's dtype, t a 0-d
        float32 tensor): what `fast.CudaGraphUNet` captures and `fast.compile_unet` compiles."""
        with preferred_attention(self.device):
            return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]

    def timestep_tensor(self, timestep: float | torch.Tensor) -> torch.Tensor:
        """A 0-d float32 device tensor. From a Python number this is a fill kernel, never a
        blocking host->device copy (`torch.tensor(t, device="cuda")` is one)."""
        if isinstance(timestep, torch.Tensor):
            return timestep.to(self.device, torch.float32, non_blocking=True).reshape(())
        return torch.full((), float(timestep), dtype=torch.float32, device=self.device)

    def _prepare_context(self, context: torch.Tensor) -> torch.Tensor:
        # Cast outside inference mode: the result is then an ordinary tensor with a version
        # counter, and the same object every step, so the folded attentions can cache on it.
        with torch.inference_mode(False), torch.no_grad():
            return self._context_cache.get([context], lambda: context.to(self.device, self.dtype))
