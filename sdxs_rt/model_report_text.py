"""A ModelReport as text: the same lines in `sdxs-rt check` and the desktop's model panel."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from sdxs_rt.model_report import PRECISION_BYTES, ModelReport

WIDTH = 100
OK_LINE = "OK: generate would run with these files"
PART_NAMES = {"unet": "U-Net", "vae": "VAE", "text_encoder": "text"}


def format_report(report: ModelReport) -> str:
    """Sections Model, U-Net, VAE, Scheduler, Text encoder, Memory, Folders, Notes, then the
    verdict; a model that could not be read at all is its one error sentence."""
    if not report.resolved:
        return report.errors[0].message
    sections = [
        model_lines(report.model),
        unet_lines(report.unet),
        vae_lines(report.vae),
        scheduler_lines(report.scheduler),
        text_encoder_lines(report.text_encoder),
        memory_lines(report.memory),
        listing("Folders", [f"{name:<16} {role}" for name, role in report.folders.items()]),
        listing("Notes", report.notes),
        deep_lines(report.deep),
        error_lines(report),
    ]
    return "\n".join(line for section in sections for line in section)


def model_lines(model: Mapping[str, Any]) -> list[str]:
    pinned = [f"{key} {model[key]}" for key in ("hub_id", "revision", "variant") if model.get(key)]
    return [
        f"Model: {model['name']} ({model['path']})",
        f"  default size {model['default_size']}" + "".join(f", {p}" for p in pinned),
    ]


def unet_lines(unet: Mapping[str, Any]) -> list[str]:
    config = unet["config"]
    return [
        f"U-Net: {unet['why']}",
        f"  latent channels {config.get('in_channels')} in, {config.get('out_channels')} out; "
        f"blocks {config.get('block_out_channels')}; cross-attention "
        f"{config.get('cross_attention_dim')}; sample size {config.get('sample_size')}",
        f"  {tensor_summary(unet)}",
        f"  {unet['weights']}",
    ]


def vae_lines(vae: Mapping[str, Any]) -> list[str]:
    return [
        f"VAE: {vae['folder']}",
        f"  latent channels {vae['latent_channels']}, {vae['downscale']}x downscale; "
        f"decode {vae['decode']}",
        f"  {tensor_summary(vae)}",
        f"  {vae['weights']}",
    ]


def scheduler_lines(scheduler: Mapping[str, Any]) -> list[str]:
    values = ", ".join(f"{key} {value}" for key, value in scheduler["config"].items())
    title = (
        f"Scheduler: {scheduler['class']} -> sampler {scheduler['sampler']} ({scheduler['why']})"
    )
    return [title, *textwrap.wrap(values, WIDTH, initial_indent="  ", subsequent_indent="  ")]


def text_encoder_lines(text: Mapping[str, Any]) -> list[str]:
    if not text:
        return ["Text encoder: none usable (see the errors below)"]
    lines = [f"Text encoder: {text['name']} ({text['folder']})"]
    if text.get("layout"):
        left = ", ".join(
            f"{group} ({plural(n, 'tensor')})" for group, n in text["left_on_disk"].items()
        )
        lines += [
            f"  {text['layout']}",
            f"  {text['width']}-wide vectors; {dtype_summary(text['dtypes'])}; text path "
            f"{text['text_parameters']:,} parameters; {vision_summary(text)}",
            f"  left on disk: {left or 'nothing'}",
        ]
    else:
        lines.append(f"  not understood natively: {text['problem']}")
    remote = "yes (auto_map; used only with --trust-remote-code)" if text["remote_code"] else "no"
    lines += [f"  tokenizer: {text['tokenizer']}", f"  remote code: {remote}"]
    return lines


def vision_summary(text: Mapping[str, Any]) -> str:
    if not text["vision_parameters"]:
        return "no vision tower"
    return f"vision tower {text['vision_parameters']:,} parameters (read only for image prompts)"


def memory_lines(memory: Mapping[str, Any]) -> list[str]:
    lines = [f"Memory, {memory['note']}:"]
    for precision in PRECISION_BYTES:
        parts = memory[precision]
        named = ", ".join(
            f"{PART_NAMES[part]} {byte_size(size)}"
            for part, size in parts.items()
            if part != "total"
        )
        lines.append(f"  {precision:<5} {byte_size(parts['total']):>9}  ({named})")
    return lines


def deep_lines(deep: Mapping[str, Any]) -> list[str]:
    if not deep:
        return []
    lines = [f"Deep check: {deep['what']}"]
    lines += [f"  {prompt!r}: {diff:.3g}" for prompt, diff in deep["per_prompt"].items()]
    lines.append(f"  largest absolute difference: {deep['max_abs_difference']:.3g}")
    return lines


def error_lines(report: ModelReport) -> list[str]:
    if not report.errors:
        return [OK_LINE]
    lines = [f"error: {problem.message}" for problem in report.errors]
    count = plural(len(report.errors), "problem")
    return [*lines, f"FAILED: generate would refuse these files ({count}, exit {report.exit_code})"]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def listing(title: str, lines: list[str]) -> list[str]:
    return [f"{title}:", *(f"  {line}" for line in lines)] if lines else []


def tensor_summary(part: Mapping[str, Any]) -> str:
    return (
        f"{part['tensors']} tensors ({dtype_summary(part['dtypes'])}), "
        f"{part['parameters']:,} parameters"
    )


def dtype_summary(dtypes: Mapping[str, int]) -> str:
    return ", ".join(f"{dtype} x{count}" for dtype, count in dtypes.items())


def byte_size(size: int) -> str:
    """Decimal units, as disk sizes and the hub show them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"
