"""A1111's `parameters` text ("infotext"): one table of labels, the writer and the parser.

The text is written exactly like AUTOMATIC1111's `create_infotext` (modules/processing.py) so
that A1111, ComfyUI, Fooocus and Civitai read it, and parsed like its
`parse_generation_parameters` (modules/infotext_utils.py), so that what we write reads back the
same in A1111 itself. `LABELS` is the one place that maps a label to our `ImageRecord` fields,
both ways, in the order the labels are written.

Labels, A1111's own first (its names and value formats), then ours:
  Steps, Sampler, CFG scale, Seed, Size, Model hash, Model      as A1111 writes them
  Variation seed, Variation seed strength                       A1111's, only with a variation
  Denoising strength                                            A1111's img2img strength
  Mask blur                                                     A1111's, only with a mask
  Resize mode        A1111's img2img radio ("Just resize", "Crop and resize"); A1111 itself
                     neither writes nor pastes it, so its choice texts are used
  Version ("sdxs-rt X"), Backend, RNG, Precision, Scheduler, Revision    ours
  Outpaint           ours: "LEFT,RIGHT,TOP,BOTTOM" pixels, as the --outpaint flag takes them
  Paste back         ours: True/False, only with a mask (A1111 always pastes back)
  Lora hashes        A1111's ("name: hash, ..."); LoRA ("name: scale, ...") ours
  Walk prompt, Walk negative prompt, Walk t    ours, a latent walk's frame (sdxs_rt.walk):
                     the keyframe it moves towards and how far (the prompt stays as typed)
A1111's other inpainting labels are left out on purpose: sdxs-rt always inpaints the whole
picture from the original content, which is what A1111 means when it writes no `Inpaint area`,
`Masked content` or `Mask mode`. The inputs' digests live in the `sdxs_rt` chunk only: A1111's
`Init image hash` is an MD5 of decoded pixels, a different thing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdxs_rt.scheduler_table import SCHEDULER_LABELS, scheduler_for_label

if TYPE_CHECKING:
    from sdxs_rt.metadata import ImageRecord

NEGATIVE_PREFIX = "Negative prompt:"
VERSION_PREFIX = "sdxs-rt "

# A1111's own regex (infotext_utils.re_param_code): one `key: value` of the parameter line.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_SIZE = re.compile(r"^(\d+)x(\d+)$")
RE_OUTPAINT = re.compile(r"^(\d+),(\d+),(\d+),(\d+)$")
MIN_PARAMETER_MATCHES = 3  # A1111: fewer matches means the last line is still prompt text

# Our resize modes and A1111's img2img "Resize mode" choices (its radio's index in brackets:
# 0 "Just resize", 1 "Crop and resize"; 2 "Resize and fill" and 3 latent upscale have no match).
RESIZE_MODE_LABELS = {"stretch": "Just resize", "crop": "Crop and resize"}
A1111_RESIZE_INDEX = {"0": "stretch", "1": "crop"}


@dataclass(frozen=True)
class Label:
    """One `key: value` of the parameter line and the record fields it stands for.

    `write`: the value for a record, None to leave the key out. `read`: the raw (unquoted)
    value -> field values; ValueError for a value it cannot read. A label without `read` is
    written only; reading keeps its raw value in `extra`.
    """

    label: str
    write: Callable[[ImageRecord], object | None]
    read: Callable[[str], dict[str, Any]] | None = None


@dataclass
class ParsedParameters:
    """A1111 `parameters` text split the way A1111 splits it; values are raw strings."""

    prompt: str
    negative_prompt: str
    params: dict[str, str]


# ---------------------------------------------------------------- value converters


def _size(value: str) -> dict[str, Any]:
    match = RE_SIZE.match(value.strip())
    if match is None:
        raise ValueError(value)
    return {"width": int(match.group(1)), "height": int(match.group(2))}


def _version(value: str) -> dict[str, Any]:
    if not value.startswith(VERSION_PREFIX):
        raise ValueError(value)  # another tool's version (A1111 "v1.10.1"): kept in extra
    return {"version": value[len(VERSION_PREFIX) :]}


def _scheduler(value: str) -> dict[str, Any]:
    if value not in SCHEDULER_LABELS:
        raise ValueError(value)
    return {"scheduler": value}


def _fraction(name: str) -> Callable[[str], dict[str, Any]]:
    def read(value: str) -> dict[str, Any]:
        number = float(value)
        if not 0 <= number <= 1:
            raise ValueError(value)
        return {name: number}

    return read


def _pixels(name: str) -> Callable[[str], dict[str, Any]]:
    def read(value: str) -> dict[str, Any]:
        number = int(value)
        if number < 0:
            raise ValueError(value)
        return {name: number}

    return read


def _write_resize_mode(record: ImageRecord) -> str | None:
    mode = record.resize_mode
    return None if mode is None else RESIZE_MODE_LABELS.get(mode, mode)


def _resize_mode(value: str) -> dict[str, Any]:
    """A1111's choice text, its index (A1111's API, SD.Next) or our own name."""
    text = value.strip()
    for mode, label in RESIZE_MODE_LABELS.items():
        if text.lower() in (label.lower(), mode):
            return {"resize_mode": mode}
    if text in A1111_RESIZE_INDEX:
        return {"resize_mode": A1111_RESIZE_INDEX[text]}
    raise ValueError(value)


def _write_outpaint(record: ImageRecord) -> str | None:
    return None if not record.outpaint else ",".join(str(side) for side in record.outpaint)


def _outpaint(value: str) -> dict[str, Any]:
    match = RE_OUTPAINT.match(value.replace(" ", ""))
    if match is None:
        raise ValueError(value)
    return {"outpaint": [int(side) for side in match.groups()]}


def _boolean(name: str) -> Callable[[str], dict[str, Any]]:
    def read(value: str) -> dict[str, Any]:
        text = value.strip().lower()
        if text not in ("true", "false"):
            raise ValueError(value)
        return {name: text == "true"}

    return read


# Our hires upscalers by A1111's names for the same thing ("Latent" is its bilinear latent
# resize; "Lanczos" its pixel resize).
HIRES_UPSCALER_LABELS = {"latent": "Latent", "lanczos": "Lanczos"}


def _write_hires_upscaler(record: ImageRecord) -> str | None:
    upscaler = record.hires_upscaler
    return None if upscaler is None else HIRES_UPSCALER_LABELS.get(upscaler, upscaler)


def _hires_upscaler(value: str) -> dict[str, Any]:
    for name, label in HIRES_UPSCALER_LABELS.items():
        if value.strip().lower() in (name, label.lower()):
            return {"hires_upscaler": name}
    raise ValueError(value)


def _hires_scale(value: str) -> dict[str, Any]:
    scale = float(value)
    if not 1 < scale <= 4:
        raise ValueError(value)
    return {"hires_scale": scale}


def _positive(name: str) -> Callable[[str], dict[str, Any]]:
    def read(value: str) -> dict[str, Any]:
        number = int(value)
        if number <= 0:  # A1111's "Hires steps: 0" means "the same steps": left to the default
            raise ValueError(value)
        return {name: number}

    return read


def _hires_strength(values: dict[str, Any]) -> None:
    """With a hires fix, "Denoising strength" was the second pass's (A1111's meaning)."""
    if "hires_scale" in values and "strength" in values and "init_image" not in values:
        values["hires_strength"] = values.pop("strength")


def _lora_hashes(record: ImageRecord) -> str | None:
    loras = record.loras
    return ", ".join(f"{x['name']}: {x.get('hash', '')}" for x in loras) if loras else None


def _lora_scales(record: ImageRecord) -> str | None:
    loras = record.loras
    return ", ".join(f"{x['name']}: {x.get('scale', 1.0)}" for x in loras) if loras else None


# ---------------------------------------------------------------- the table

LABELS: tuple[Label, ...] = (
    Label("Steps", lambda r: r.steps, lambda v: {"steps": int(v)}),
    Label("Sampler", lambda r: r.scheduler_label, lambda v: {"scheduler_label": v}),
    # A1111 stores a float: 7 -> "7.0"
    Label("CFG scale", lambda r: float(r.guidance_scale), lambda v: {"guidance_scale": float(v)}),
    Label("Seed", lambda r: r.seed, lambda v: {"seed": int(v)}),
    Label("Size", lambda r: f"{r.width}x{r.height}", _size),
    Label("Model hash", lambda r: r.model_hash, lambda v: {"model_hash": v}),
    Label("Model", lambda r: r.model, lambda v: {"model": v}),
    Label("Variation seed", lambda r: r.variation_seed, lambda v: {"variation_seed": int(v)}),
    Label(
        "Variation seed strength", lambda r: r.variation_strength, _fraction("variation_strength")
    ),
    # A1111 writes the hires pass's strength under this label too (we refuse hires with an
    # init image, so one of the two is set); read back by `_hires_strength`.
    Label(
        "Denoising strength",
        lambda r: r.strength if r.strength is not None else r.hires_strength,
        _fraction("strength"),
    ),
    Label("Mask blur", lambda r: r.mask_blur, _pixels("mask_blur")),
    Label("Resize mode", _write_resize_mode, _resize_mode),
    Label("Hires upscale", lambda r: r.hires_scale, _hires_scale),
    Label("Hires steps", lambda r: r.hires_steps, _positive("hires_steps")),
    Label("Hires upscaler", _write_hires_upscaler, _hires_upscaler),
    Label("Version", lambda r: f"{VERSION_PREFIX}{r.version}", _version),
    Label("Backend", lambda r: r.backend, lambda v: {"backend": v}),
    Label("RNG", lambda r: r.rng, lambda v: {"rng": v}),
    Label("Precision", lambda r: r.precision, lambda v: {"precision": v}),
    Label("Scheduler", lambda r: r.scheduler, _scheduler),
    Label("Revision", lambda r: r.revision or None, lambda v: {"revision": v}),
    Label("Outpaint", _write_outpaint, _outpaint),
    Label("Paste back", lambda r: r.paste_back, _boolean("paste_back")),
    Label("Lora hashes", _lora_hashes),
    Label("LoRA", _lora_scales),
    # A latent walk's frame: the prompt (and negative) it moves towards, and how far.
    Label("Walk prompt", lambda r: r.walk_prompt, lambda v: {"walk_prompt": v}),
    Label(
        "Walk negative prompt",
        lambda r: r.walk_negative_prompt,
        lambda v: {"walk_negative_prompt": v},
    ),
    Label("Walk t", lambda r: r.walk_t, _fraction("walk_t")),
)
LABELS_BY_NAME = {entry.label: entry for entry in LABELS}
assert len(LABELS_BY_NAME) == len(LABELS), "each label appears once"


# ---------------------------------------------------------------- writing


def quote(value: object) -> str:
    """A1111's quote(): JSON-quote values that would break the `k: v, k: v` line.

    Beyond A1111, values its own parser would misread are quoted too: ones that start with `"`
    (it would json-decode them) and ones with surrounding whitespace (it would strip it).
    """
    text = str(value)
    if any(c in text for c in ",:\n") or text.startswith('"') or text != text.strip():
        return json.dumps(text, ensure_ascii=False)
    return text


def parameter_items(record: ImageRecord) -> list[tuple[str, object]]:
    """The parameter line's keys and values, in `LABELS` order; unset and empty ones left out
    (A1111's parser drops an empty `Key: ` with an error anyway)."""
    items = [(entry.label, entry.write(record)) for entry in LABELS]
    return [(label, value) for label, value in items if value is not None and str(value) != ""]


def format_parameters(record: ImageRecord) -> str:
    """The PNG `parameters` text exactly as A1111's create_infotext writes it."""
    line = ", ".join(f"{key}: {quote(value)}" for key, value in parameter_items(record))
    negative = f"\n{NEGATIVE_PREFIX} {record.negative_prompt}" if record.negative_prompt else ""
    return f"{record.prompt}{negative}\n{line}".strip()


# ---------------------------------------------------------------- parsing


def unquote(value: str) -> str:
    """A1111's unquote(): json-decode a quoted value, keep it as is when that fails."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    return decoded if isinstance(decoded, str) else value


def split_prompts(lines: list[str]) -> tuple[str, str]:
    """A1111's rule: a `Negative prompt:` line starts the negative, and later lines belong to it."""
    prompt: list[str] = []
    negative: list[str] = []
    done_with_prompt = False
    for raw in lines:
        line = raw.strip()
        if line.startswith(NEGATIVE_PREFIX):
            done_with_prompt = True
            line = line[len(NEGATIVE_PREFIX) :].strip()
        (negative if done_with_prompt else prompt).append(line)
    return _join_a1111(prompt), _join_a1111(negative)


def _join_a1111(lines: list[str]) -> str:
    # A1111 adds "\n" only once the text is non-empty, so leading empty lines vanish.
    text = ""
    for line in lines:
        text += ("" if text == "" else "\n") + line
    return text


def parse_parameters(text: str) -> ParsedParameters:
    """Split A1111 `parameters` text into prompt, negative prompt and `key: value` pairs."""
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < MIN_PARAMETER_MATCHES:
        lines.append(last)
        last = ""
    prompt, negative = split_prompts(lines)
    params = {key: unquote(value) for key, value in RE_PARAM.findall(last)}
    return ParsedParameters(prompt=prompt, negative_prompt=negative, params=params)


def record_from_parameters(parsed: ParsedParameters) -> dict[str, Any]:
    """ImageRecord field values from any A1111 text, so the desktop app can restore settings.

    Only fields present (and readable) are returned; everything else goes into `extra`.
    """
    values: dict[str, Any] = {"prompt": parsed.prompt, "negative_prompt": parsed.negative_prompt}
    extra: dict[str, str] = {}
    for key, raw in parsed.params.items():
        entry = LABELS_BY_NAME.get(key)
        try:
            if entry is None or entry.read is None:
                raise ValueError(key)
            values.update(entry.read(raw))
        except ValueError:
            extra[key] = raw  # unknown key or unreadable value: kept, not guessed
    _hires_strength(values)
    if "scheduler" not in values and "scheduler_label" in values:
        scheduler = scheduler_for_label(
            values["scheduler_label"], parsed.params.get("Schedule type", "")
        )
        if scheduler is not None:
            values["scheduler"] = scheduler
    if extra:
        values["extra"] = extra
    return values
