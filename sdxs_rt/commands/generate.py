"""`sdxs-rt generate`: its parser, and its runner `run(args)`.

The arguments become a checked `generate_options.GenerateOptions` once; the run itself lives in
`generate_run` (it imports numpy and the pipeline). This module stays light so `sdxs-rt --help`
is fast.
"""

from __future__ import annotations

import argparse

from sdxs_rt.backend_table import (
    ALL_PRECISIONS,
    BACKEND_NAMES,
    BACKENDS,
    DEFAULT_BACKEND,
    backend,
    names_with,
)
from sdxs_rt.scheduler_table import SCHEDULER_NAMES

GENERATE_EXAMPLES = """examples:
  sdxs-rt generate "a red circle on a blue background"          # built-in tiny model, offline
  sdxs-rt generate "кот" --model AiArtLab/sdxs --variant fp16 --device cuda --precision fp16
  sdxs-rt generate -p "a lighthouse at dawn" --seed 42 --count 4 -o "out/{seed}.png"
  sdxs-rt generate --prompt-file prompts.txt --json > results.jsonl
  sdxs-rt generate "a red circle::2 a blue circle::1"             # a blend of two prompts
  sdxs-rt generate "a [red:blue:0.5] circle"                      # red, then blue from half way
"""


# The one table of the CLI's names: each flag that sets a GenerationParams field, and that
# field (argparse stores the value under the field's name). Seeds, sizes, prompts and counts
# are run-level flags, turned into parameters per prompt by the runner.
PARAM_FLAGS = {
    "--negative-prompt": "negative_prompt",
    "--steps": "num_inference_steps",
    "--cfg": "guidance_scale",
    "--scheduler": "scheduler",
    "--batch-size": "batch_size",
    "--init-image": "init_image",
    "--strength": "strength",
    "--resize-mode": "resize_mode",
    "--mask": "mask",
    "--mask-blur": "mask_blur",
    "--no-paste-back": "paste_back",
    "--outpaint": "outpaint",  # "L,R,T,B" text, parsed by the runner
    "--variation-seed": "variation_seed",
    "--variation-strength": "variation_strength",
    "--hires-scale": "hires_scale",
    "--hires-strength": "hires_strength",
    "--hires-steps": "hires_steps",
    "--hires-upscaler": "hires_upscaler",
    "--image-prompt": "image_prompts",  # PATH[:WEIGHT], repeatable, parsed by the options
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate",
        help="generate images from a prompt",
        description="Generate images from text prompts.",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt_arg", nargs="?", metavar="PROMPT", help="the prompt")
    p.add_argument("-p", "--prompt", help="the prompt (instead of the positional argument)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line")
    p.add_argument("-n", "--negative-prompt", default="", help='negative prompt (default "")')
    p.add_argument(
        "--steps",
        dest=PARAM_FLAGS["--steps"],
        type=int,
        default=40,
        help="sampling steps (default 40)",
    )
    p.add_argument(
        "--cfg",
        "--guidance-scale",
        dest=PARAM_FLAGS["--cfg"],
        type=float,
        default=5.5,
        help="classifier-free guidance scale (default 5.5; <= 1 runs one branch)",
    )
    p.add_argument(
        "--seed", type=int, default=-1, help="seed; -1 or absent: random (always printed)"
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="width in px, a multiple of 64 (default: the model's, 576 for SDXS)",
    )
    p.add_argument(
        "--height",
        type=int,
        default=None,
        help="height in px, a multiple of 64 (default: the model's, 576 for SDXS)",
    )
    p.add_argument("--size", help="WxH, e.g. 576x448 (instead of --width/--height)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--count", type=int, default=1, help="how many batches (default 1)")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="file, folder or pattern with {seed}, {index}, {date} (default outputs/)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument(
        "--scheduler",
        choices=SCHEDULER_NAMES,
        default=None,
        help="sampler (default: the model's own scheduler)",
    )
    add_load_arguments(p)
    p.add_argument(
        "--preview-every",
        type=int,
        default=0,
        metavar="N",
        help="write a preview of the image every N steps",
    )
    p.add_argument("--preview-path", default=None, metavar="P", help="where previews go")
    p.add_argument("--no-metadata", action="store_true", help="do not embed generation metadata")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per image on stdout (logs go to stderr)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    add_image_input_arguments(p)
    add_variation_arguments(p)
    add_hires_arguments(p)
    p.add_argument(
        "--image-prompt",
        dest=PARAM_FLAGS["--image-prompt"],
        action="append",
        default=[],
        metavar="PATH[:WEIGHT]",
        help="an image as a blend part of the prompt, through the text encoder's vision tower "
        "(weight default 1; repeatable; <image:N> in the prompt places the N-th)",
    )


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `LoadOptions.from_args` reads: backend, device, precision, model, LoRAs and
    the torch fast path (shared by the commands that load a model to draw, e.g. `walk`)."""
    parser.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        default=DEFAULT_BACKEND,
        help=f"{DEFAULT_BACKEND} (default); {' or '.join(names_with('exported'))} take a folder "
        "written by 'sdxs-rt export onnx'",
    )
    parser.add_argument(
        "--device",
        default=None,
        help=f"cpu, cuda, cuda:N, mps or auto; onnx also tensorrt, dml ({device_defaults()})",
    )
    parser.add_argument(
        "--precision",
        choices=ALL_PRECISIONS,
        default=None,
        help=f"default: {precision_defaults()}",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="diffusers-format folder or hub id (default: the built-in tiny model)",
    )
    parser.add_argument(
        "--variant", choices=("fp16",), default=None, help="load the model card's fp16 weight files"
    )
    parser.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="hub revision (branch, tag or commit) of --model; pin a commit for reproducible runs",
    )
    parser.add_argument(
        "--text-encoder",
        default=None,
        help="text encoder folder or hub id (default: the model's own, "
        "else visheratin/mexma-siglip)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load the text encoder with its own Python code from the hub; this RUNS "
        "CODE DOWNLOADED FROM THE HUB on your machine (default: the native loader)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="torch on CUDA: capture the U-Net step as a CUDA graph per shape",
    )
    parser.add_argument(
        "--compile",
        default=None,
        metavar="MODE",
        help="torch: torch.compile the U-Net (default, reduce-overhead, max-autotune, "
        "max-autotune-no-cudagraphs)",
    )
    parser.add_argument(
        "--channels-last", action="store_true", help="torch: channels-last memory format"
    )
    parser.add_argument(
        "--offload-text-encoder",
        action="store_true",
        help="torch: keep the text encoder on the CPU except while encoding a new prompt",
    )
    parser.add_argument(
        "--low-vram",
        action="store_true",
        help="torch: for small cards (about 6 GB at 576x576 in fp16, estimated): the U-Net stays "
        "on the GPU, the text encoder and VAE wait on the CPU between uses, the VAE decodes in "
        "256-px tiles",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="torch: merge a diffusers/peft LoRA file into the U-Net at load time, with "
        "strength SCALE (default 1.0); repeatable",
    )


# Kept equal to sdxs_rt.image_inputs.RESIZE_MODES and sdxs_rt.params.HIRES_UPSCALERS by a
# test: those modules load numpy and PIL.
RESIZE_MODES = ("crop", "stretch")
HIRES_UPSCALERS = ("lanczos", "latent")


def add_image_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "image inputs",
        "img2img, inpainting and outpainting; without --size the output has the init image's "
        "size rounded down to a multiple of 64, plus any outpainting",
    )
    group.add_argument("--init-image", metavar="PATH", help="start from this image (img2img)")
    group.add_argument(
        "--strength",
        type=float,
        default=None,
        metavar="S",
        help="how much of the init image to redraw, in (0, 1] (default 0.75; 1.0 when "
        "outpainting); int(steps * S) steps run",
    )
    group.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default="crop",
        help="fit the init image to the size: crop (scale to cover, cut the centre; default) "
        "or stretch",
    )
    group.add_argument(
        "--mask",
        metavar="PATH",
        help="inpaint: white = repaint, black = keep; the init image's size",
    )
    group.add_argument(
        "--mask-blur", type=int, default=4, metavar="PX", help="feather the mask (default 4 px)"
    )
    group.add_argument(
        "--no-paste-back",
        dest=PARAM_FLAGS["--no-paste-back"],
        action="store_false",
        help="keep the generated pixels outside the mask instead of the original ones",
    )
    group.add_argument(
        "--outpaint",
        metavar="L,R,T,B",
        help="grow the canvas by these pixels (multiples of 64) left, right, top, bottom, "
        "filled from the edges, and draw the new area",
    )


def add_variation_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "variations", "a variation of an image: its initial noise moved towards another seed's"
    )
    group.add_argument("--variation-seed", type=int, default=None, metavar="V")
    group.add_argument(
        "--variation-strength",
        type=float,
        default=0.0,
        metavar="A",
        help="0: the seed's image, 1: the variation seed's noise (default 0)",
    )


def device_defaults() -> str:
    """'default: cpu; cuda for the tensorrt backend', from the backend table."""
    default = backend(DEFAULT_BACKEND).default_device
    others = [f"{b.default_device} for the {b.name} backend" for b in BACKENDS
              if b.default_device != default]  # fmt: skip
    return "; ".join([f"default: {default}", *others])


def precision_defaults() -> str:
    """'fp32 for torch, the exported graphs' for onnx, fp16 for tensorrt'."""
    own = "the exported graphs'"  # default_precision None
    return ", ".join(f"{b.default_precision or own} for {b.name}" for b in BACKENDS)


def run(args: argparse.Namespace) -> int:
    """Read and check the arguments once (`GenerateOptions`), then run with those options."""
    from sdxs_rt.commands.generate_options import GenerateOptions
    from sdxs_rt.commands.generate_run import run_generate

    return run_generate(GenerateOptions.from_args(args))


def add_hires_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "hires fix",
        "draw at the size, upscale, then redraw details with an img2img pass at the larger size",
    )
    group.add_argument(
        "--hires-scale",
        type=float,
        default=None,
        metavar="F",
        help="upscale factor in (1, 4]; each side is rounded to a multiple of 64",
    )
    group.add_argument(
        "--hires-strength",
        type=float,
        default=0.5,
        metavar="S",
        help="strength of the second pass (default 0.5)",
    )
    group.add_argument(
        "--hires-steps",
        type=int,
        default=None,
        metavar="N",
        help="steps of the second pass's schedule (default: --steps); int(N * S) run",
    )
    group.add_argument(
        "--hires-upscaler",
        choices=HIRES_UPSCALERS,
        default="lanczos",
        help="lanczos: decode, resize the pixels, encode again (default); latent: resize the "
        "latents (faster, softer)",
    )
