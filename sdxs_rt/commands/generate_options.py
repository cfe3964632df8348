"""`sdxs-rt generate`'s arguments as one options object, built once and checked once.

`GenerateOptions.from_args(args)` reads the argparse Namespace and refuses every bad flag, and
every bad combination of flags, before any model loads; the runner (`generate_run`) only ever
sees the options. This module imports neither numpy nor torch at import time: building the
options imports the few checkers that need them (LoRA specs, the torch fast path, outpainting
amounts) only when those flags are given.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sdxs_rt.backend_table import Backend, backend, names_with, names_without
from sdxs_rt.commands.generate import PARAM_FLAGS
from sdxs_rt.errors import UsageError

if TYPE_CHECKING:
    from sdxs_rt.backends.torch.fast import FastPathOptions
    from sdxs_rt.backends.torch.lora import LoraSpec

Size = tuple[int | None, int | None]  # None: the model's (or the init image's) own


@dataclass(frozen=True)
class RunOptions:
    """How many images, their seeds, where they go and what is reported."""

    seed: int | None  # the first image's seed; None: random
    count: int  # batches per prompt
    output: str | None  # file, folder or pattern; None: outputs/
    overwrite: bool
    metadata: bool  # embed the generation metadata in the PNGs
    preview_every: int  # 0: no previews
    preview_path: str | None  # None: preview.png next to the prompt's first image
    json: bool  # one JSON object per image on stdout
    quiet: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        if args.seed is not None and args.seed < -1:
            raise UsageError(
                f"seed must be a whole number >= 0 (or -1 for random), got {args.seed}"
            )
        if args.preview_every < 0:
            raise UsageError(f"--preview-every must be >= 0, got {args.preview_every}")
        if args.preview_path and not args.preview_every:
            raise UsageError("--preview-path needs --preview-every N")
        return cls(
            seed=None if args.seed in (None, -1) else args.seed,
            count=args.count,
            output=args.output,
            overwrite=args.overwrite,
            metadata=not args.no_metadata,
            preview_every=args.preview_every,
            preview_path=args.preview_path,
            json=args.json,
            quiet=args.quiet,
        )


@dataclass(frozen=True)
class LoadOptions:
    """What `Pipeline.from_pretrained` is given; the backend's options already checked against
    what the backend table says it can do."""

    model: str | None  # None: the built-in tiny model
    variant: str | None
    revision: str | None
    text_encoder: str | None
    trust_remote_code: bool
    backend: str
    device: str | None
    precision: str | None
    fast: FastPathOptions | None = None  # the GPU fast path (torch), None when no flag asks
    low_vram: bool = False
    loras: tuple[LoraSpec, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoadOptions:
        entry = backend(args.backend)
        loras = lora_specs(args.lora, entry)
        low_vram = check_low_vram(args.low_vram, entry)
        return cls(
            model=args.model,
            variant=args.variant,
            revision=args.revision,
            text_encoder=args.text_encoder,
            trust_remote_code=args.trust_remote_code,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            fast=fast_path(args, entry),
            low_vram=low_vram,
            loras=loras,
        )

    def backend_options(self) -> dict[str, Any]:
        """The backend's own options that are set: `loras`, `low_vram`, `fast`."""
        return {
            **({"loras": list(self.loras)} if self.loras else {}),
            **({"low_vram": True} if self.low_vram else {}),
            **({"fast": self.fast} if self.fast is not None else {}),
        }


@dataclass(frozen=True)
class GenerateOptions:
    """Everything `sdxs-rt generate` was asked for, checked."""

    prompts: tuple[str, ...]
    size: Size
    params: Mapping[str, Any]  # GenerationParams fields set by the flags of PARAM_FLAGS
    run: RunOptions
    load: LoadOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> GenerateOptions:
        """The one place the Namespace is read; raises UsageError (or ModelNotFoundError for a
        missing prompt file) before anything loads."""
        return cls(  # keyword order = the order of the checks
            prompts=tuple(read_prompts(args)),
            size=parse_size(args),
            run=RunOptions.from_args(args),
            params=param_fields(args),
            load=LoadOptions.from_args(args),
        )

    @property
    def batch_size(self) -> int:
        size: int = self.params["batch_size"]
        return size


def param_fields(args: argparse.Namespace) -> Mapping[str, Any]:
    """The flags of PARAM_FLAGS as GenerationParams fields (their values are checked there)."""
    values = {field: getattr(args, field) for field in PARAM_FLAGS.values()}
    if values["outpaint"] is not None:
        from sdxs_rt.image_inputs import parse_outpaint

        values["outpaint"] = parse_outpaint(values["outpaint"])
    values["image_prompts"] = tuple(parse_image_prompt(spec) for spec in values["image_prompts"])
    return MappingProxyType(values)


IMAGE_PROMPT_WEIGHT = re.compile(r"^(.*):([+-]?(?:\d+(?:\.\d*)?|\.\d+))$")


def parse_image_prompt(spec: str) -> tuple[str, float]:
    """PATH[:WEIGHT] -> (path, weight); a path that itself ends in ":<number>" needs ":1" added."""
    match = IMAGE_PROMPT_WEIGHT.match(spec)
    if match is None:
        return spec, 1.0
    return match.group(1), float(match.group(2))


SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(args: argparse.Namespace) -> Size:
    """--size WxH or --width/--height; the two forms are exclusive. None: the model's size."""
    if args.size is not None:
        if args.width is not None or args.height is not None:
            raise UsageError("give either --size or --width/--height, not both")
        match = SIZE_PATTERN.match(args.size)
        if not match:
            raise UsageError(f"--size must look like 576x448, got {args.size!r}")
        return int(match.group(1)), int(match.group(2))
    return args.width, args.height


def read_prompts(args: argparse.Namespace) -> list[str]:
    given = [v for v in (args.prompt_arg, args.prompt, args.prompt_file) if v is not None]
    if len(given) > 1:
        raise UsageError("give the prompt once: as an argument, with -p, or with --prompt-file")
    if args.prompt_file is not None:
        prompts = _read_prompt_file(args.prompt_file)
    else:
        prompts = [given[0]] if given else []
    if not prompts or not all(p.strip() for p in prompts):
        raise UsageError("the prompt is empty; give one as an argument, with -p or --prompt-file")
    return prompts


def _read_prompt_file(path: str) -> list[str]:
    from sdxs_rt.errors import ModelNotFoundError

    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise ModelNotFoundError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc}") from None


def lora_specs(given: list[str], entry: Backend) -> tuple[LoraSpec, ...]:
    """--lora FILE[:SCALE] as the torch backend's `loras`, each file checked to exist."""
    if not given:
        return ()
    if not entry.runtime_lora:
        raise UsageError(
            f"--lora applies to --backend {' or '.join(names_with('runtime_lora'))} only; "
            f"for {' or '.join(names_without('runtime_lora'))}, merge the LoRA "
            "with 'sdxs-rt merge-lora MODEL LORA:SCALE -o OUT' and export OUT"
        )
    from sdxs_rt.backends.torch.lora import parse_lora_spec

    specs = tuple(parse_lora_spec(spec) for spec in given)
    for spec in specs:
        if not spec.path.is_file():
            raise UsageError(f"LoRA file {spec.path} does not exist")
    return specs


def check_low_vram(wanted: bool, entry: Backend) -> bool:
    if wanted and not entry.low_vram:
        message = f"--low-vram applies to --backend {' or '.join(names_with('low_vram'))} only"
        if entry.fixed_sizes:
            message += (
                f"; {entry.label} engines size their memory by their profile "
                "('sdxs-rt engine build --max-size/--max-batch')"
            )
        raise UsageError(message)
    return wanted


def fast_path(args: argparse.Namespace, entry: Backend) -> FastPathOptions | None:
    """The GPU fast-path flags as the torch backend's `fast` option (its own checks included:
    a known compile mode, no CUDA graphs twice); None when no flag asks for it."""
    wanted = args.cuda_graphs or args.compile or args.channels_last or args.offload_text_encoder
    if not wanted:
        return None
    if not entry.fast_path:
        raise UsageError(
            "--cuda-graphs, --compile, --channels-last and --offload-text-encoder "
            f"apply to --backend {' or '.join(names_with('fast_path'))} only"
        )
    from sdxs_rt.backends.torch.fast import FastPathOptions

    return FastPathOptions(
        cuda_graphs=args.cuda_graphs,
        compile=args.compile,
        channels_last=args.channels_last,
        offload_text_encoder=args.offload_text_encoder,
    )
