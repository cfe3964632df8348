"""Random inputs per graph, and the parity check of an exported graph against PyTorch.

Figures (the worst over all cases):
- `max_abs`: max |onnx - torch|;
- `rel`: max_abs / max |torch| (the fp32 bar: <= 1e-4);
- `psnr`: 20 log10(peak / rmse) with peak = max(torch) - min(torch), the reference's own range
  (the fp16 bar: >= 35 dB). On the VAE decoder that is the decoded-image PSNR; on the other
  graphs it is the same measure on the graph's output. The range of the reference is stricter
  than the nominal range 2 of [-1, 1] images whenever the output spans less than that.
The reference is always the float32 PyTorch model: an fp16 graph is judged against the truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdxs_rt.errors import EngineError

FP32_MAX_REL = 1e-4
FP16_MIN_PSNR = 35.0
PARITY_SEED = 1234
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class GraphDims:
    """The sizes random inputs need, read from the model's configs."""

    latent_channels: int
    text_width: int
    vae_scale_factor: int
    latent_multiple: int  # U-Net latent sides must divide by 2 ** (number of up-samplers)
    vocab_size: int
    special_ids: tuple[int, int, int]  # bos (CLS), pad, eos
    num_train_timesteps: int
    image_size: tuple[int, int] | None = None  # the image encoder's input; None: no encoder


def trace_inputs(name: str, dims: GraphDims) -> Feeds:
    """The example the exporter traces: batch 2, non-square, unlike every parity case."""
    m = dims.latent_multiple
    return graph_inputs(name, dims, batch=2, size=(m, 2 * m), seed=PARITY_SEED - 1)


def parity_cases(name: str, dims: GraphDims) -> list[Feeds]:
    """Two cases at other shapes than the trace: batch 1 square, batch 2 tall."""
    m = dims.latent_multiple
    return [
        graph_inputs(name, dims, batch=1, size=(m, m), seed=PARITY_SEED),
        graph_inputs(name, dims, batch=2, size=(2 * m, m), seed=PARITY_SEED + 1),
    ]


def graph_inputs(
    name: str, dims: GraphDims, *, batch: int, size: tuple[int, int], seed: int
) -> Feeds:
    """Random inputs for graph `name`; `size` is (height, width) in latent pixels.

    The text encoder takes `height + width // 2 + 3` tokens, so every case has its own length.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    height, width = size
    latent = (batch, dims.latent_channels, height, width)
    if name == "text_encoder":
        return _token_inputs(rng, dims, batch, height + width // 2 + 3)
    if name == "unet":
        return {
            "sample": _normal(rng, latent),
            "timestep": _timesteps(rng, batch, dims.num_train_timesteps),
            "encoder_hidden_states": _normal(rng, (batch, 1, dims.text_width)),
        }
    if name == "vae_decoder":
        return {"latent_sample": _normal(rng, latent)}
    if name == "image_encoder":  # a fixed size: `size` is not used; SigLIP's [-1, 1] pixels
        assert dims.image_size is not None, "the image encoder graph needs dims.image_size"
        pixels = rng.uniform(-1.0, 1.0, (batch, 3, *dims.image_size))
        return {"pixel_values": pixels.astype(np.float32)}
    scale = dims.vae_scale_factor
    image = rng.uniform(-1.0, 1.0, (batch, 3, height * scale, width * scale))
    return {"sample": image.astype(np.float32)}


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _timesteps(rng: np.random.Generator, batch: int, train_steps: int) -> np.ndarray:
    # The first is the largest timestep: the sin/cos embedding is least precise there.
    steps = rng.uniform(0, train_steps - 1, batch)
    steps[0] = train_steps - 1
    return steps.astype(np.float32)


def _token_inputs(rng: np.random.Generator, dims: GraphDims, batch: int, length: int) -> Feeds:
    """`<s> tokens </s>` rows; from the second row on, shorter prompts padded with a mask."""
    bos, pad, eos = dims.special_ids
    first_ordinary = max(dims.special_ids) + 2  # past <s> <pad> </s> <unk>
    ids = rng.integers(first_ordinary, dims.vocab_size, (batch, length), dtype=np.int64)
    mask = np.ones((batch, length), dtype=np.int64)
    for row in range(batch):
        used = length if row == 0 else max(3, length // (row + 1))
        ids[row, 0], ids[row, used - 1] = bos, eos
        ids[row, used:], mask[row, used:] = pad, 0
    return {"input_ids": ids, "attention_mask": mask}


# --- running and comparing ----------------------------------------------------------------


def torch_outputs(module: Any, cases: Sequence[Feeds]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        results = [module(*(torch.from_numpy(a) for a in feeds.values())) for feeds in cases]
    return [r.float().numpy() for r in results]


def onnx_outputs(path: Path, cases: Sequence[Feeds]) -> list[np.ndarray]:
    """Run the graph file with ONNX Runtime on the CPU (external data found beside it)."""
    session = cpu_session(path)
    return [np.asarray(session.run(None, feeds)[0], dtype=np.float32) for feeds in cases]


def cpu_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Exception subclasses
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EngineError(f"ONNX Runtime cannot run {path.name}: {first_line}") from None


def compare(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> dict[str, float]:
    """max_abs, rel and psnr, the worst over the cases; NaN or inf anywhere is infinitely bad."""
    figures = [_compare_one(o, r) for o, r in zip(outputs, references, strict=True)]
    return {
        "max_abs": max(f["max_abs"] for f in figures),
        "rel": max(f["rel"] for f in figures),
        "psnr": min(f["psnr"] for f in figures),
    }


def _compare_one(output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    if output.shape != reference.shape:
        raise EngineError(f"the graph returned shape {output.shape}, PyTorch {reference.shape}")
    if not np.isfinite(output).all():
        return {"max_abs": math.inf, "rel": math.inf, "psnr": -math.inf}
    diff = output.astype(np.float64) - reference.astype(np.float64)
    max_abs = float(np.abs(diff).max())
    scale = float(np.abs(reference).max())
    peak = float(reference.max() - reference.min())
    rmse = float(np.sqrt(np.mean(diff**2)))
    return {
        "max_abs": max_abs,
        "rel": max_abs / scale if scale > 0 else math.inf,
        "psnr": 20 * math.log10(peak / rmse) if rmse > 0 else math.inf,
    }


def check_bar(graph: str, precision: str, figures: dict[str, float]) -> None:
    """EngineError (one sentence) when the figures miss the bar of `precision`."""
    if precision == "fp32" and not figures["rel"] <= FP32_MAX_REL:
        raise EngineError(
            f"the exported {graph} graph differs from PyTorch by a relative error of "
            f"{figures['rel']:.3g} (max-abs {figures['max_abs']:.3g}), over the bar of "
            f"{FP32_MAX_REL:g}; it was not written"
        )
    worst_psnr = min(v for k, v in figures.items() if k.startswith("psnr"))
    if precision == "fp16" and not worst_psnr >= FP16_MIN_PSNR:
        raise EngineError(
            f"the fp16 {graph} graph reaches a PSNR of only {worst_psnr:.1f} dB against the "
            f"float32 PyTorch model, under the bar of {FP16_MIN_PSNR:g} dB; it was not written"
        )


def describe(figures: dict[str, float]) -> str:
    text = (
        f"max-abs {figures['max_abs']:.3g}, rel {figures['rel']:.3g}, PSNR {figures['psnr']:.1f} dB"
    )
    if "psnr_fp16_emulated" in figures:
        text += f" (fp16-rounded everywhere: {figures['psnr_fp16_emulated']:.1f} dB)"
    return text
