"""`sdxs-rt walk`: frames between keyframe prompts, as numbered PNGs and an animation.

Each frame is one ordinary generation (sdxs_rt.walk): its PNG records the keyframe it moves
towards and how far, so `sdxs-rt info FRAME --replay` draws it again alone. The load flags are
`generate`'s own (`add_load_arguments`, `LoadOptions`); heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sdxs_rt.commands.generate import add_load_arguments
from sdxs_rt.commands.generate_options import (
    LoadOptions,
    RunOptions,
    parse_image_prompt,
    parse_size,
)
from sdxs_rt.errors import UsageError
from sdxs_rt.scheduler_table import SCHEDULER_NAMES

if TYPE_CHECKING:
    from sdxs_rt.pipeline import Pipeline
    from sdxs_rt.plan import GenerationPlan
    from sdxs_rt.walk import Keyframe, WalkFrame

WALK_EXAMPLES = """examples:
  sdxs-rt walk "a red circle on a white background" "a blue circle on a white background" \\
      --frames 8 --seeds 4
  sdxs-rt walk "a red circle" "a green square" "a blue triangle" --frames 12 --seeds 1 2 3 \\
      --animation gif --fps 12 -o walks/shapes
  sdxs-rt walk "кот" "собака" --model AiArtLab/sdxs --device cuda --precision fp16
  sdxs-rt walk "a cat" "<image:1>" --image-prompt 2:dog.png --frames 6   # towards a picture
"""

DEFAULT_FRAMES = 8
DEFAULT_FPS = 8.0
FRAME_NAME = "frame-{:04d}.png"
ANIMATION_NAME = "walk.{}"
KEYFRAME_IMAGE_PROMPT = re.compile(r"^(\d+):(.+)$")


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "walk",
        help="render frames between prompts (a latent walk) and an animation",
        description="Render frames between keyframe prompts: each frame slerps the condition "
        "vectors and the initial noise from one keyframe towards the next, and is saved as a "
        "numbered PNG that replays alone, plus an animated WebP or GIF.",
        epilog=WALK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="keyframe prompts, 2 or more")
    p.add_argument(
        "--frames",
        type=int,
        default=DEFAULT_FRAMES,
        metavar="N",
        help=f"frames between each pair of keyframes (default {DEFAULT_FRAMES})",
    )
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        metavar="S",
        help="one seed per keyframe, or one for all (default: one random seed for all)",
    )
    p.add_argument(
        "--image-prompt",
        dest="image_prompts",
        action="append",
        default=[],
        metavar="K:PATH[:WEIGHT]",
        help="an image prompt of keyframe K (1 = the first), as in generate; repeatable",
    )
    p.add_argument("-n", "--negative-prompt", default="", help='negative prompt (default "")')
    p.add_argument("--steps", type=int, default=40, help="sampling steps (default 40)")
    p.add_argument(
        "--cfg",
        "--guidance-scale",
        dest="guidance_scale",
        type=float,
        default=5.5,
        help="classifier-free guidance scale (default 5.5)",
    )
    p.add_argument("--width", type=int, default=None, help="width in px (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="height in px (default: the model's)")
    p.add_argument("--size", help="WxH, e.g. 576x448 (instead of --width/--height)")
    p.add_argument(
        "--scheduler", choices=SCHEDULER_NAMES, default=None, help="sampler (default: the model's)"
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        metavar="DIR",
        help="folder for frame-0000.png ... and the animation (default outputs/NNNNN-walk/)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument(
        "--animation",
        choices=("webp", "gif", "none"),
        default="webp",
        help="an animated walk.webp (lossless; default) or walk.gif in the folder, or none",
    )
    p.add_argument(
        "--fps", type=float, default=DEFAULT_FPS, help=f"animation speed (default {DEFAULT_FPS:g})"
    )
    p.add_argument("--no-metadata", action="store_true", help="do not embed generation metadata")
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per frame on stdout, then one for the animation (logs: stderr)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    add_load_arguments(p)


@dataclass(frozen=True)
class WalkOptions:
    """Everything `sdxs-rt walk` was asked for, checked before any model loads."""

    prompts: tuple[str, ...]
    frames: int
    seeds: tuple[int, ...] | None  # one per keyframe; None: one random seed for all
    image_prompts: tuple[tuple[tuple[str, float], ...], ...]  # (path, weight) pairs per keyframe
    params: Mapping[str, Any]  # the GenerationParams fields every frame shares
    animation: str  # "webp", "gif" or "none"
    fps: float
    run: RunOptions
    load: LoadOptions

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WalkOptions:
        """The walk's refusals first (keyframes, frames, seeds), then the shared flags."""
        prompts = tuple(args.prompts)
        if len(prompts) < 2:
            raise UsageError(f"a walk needs at least 2 keyframe prompts, got {len(prompts)}")
        for number, prompt in enumerate(prompts, 1):
            if not prompt.strip():
                raise UsageError(f"keyframe {number}'s prompt is empty")
        if args.frames < 1:
            raise UsageError(f"--frames (frames between keyframes) must be >= 1, got {args.frames}")
        seeds = keyframe_seeds(args.seeds, len(prompts))
        width, height = parse_size(args)
        if args.animation != "none":
            from sdxs_rt.walk import check_animation

            check_animation(args.animation, args.fps)
        return cls(
            prompts=prompts,
            frames=args.frames,
            seeds=seeds,
            image_prompts=keyframe_image_prompts(args.image_prompts, len(prompts)),
            params=MappingProxyType(
                {
                    "negative_prompt": args.negative_prompt,
                    "num_inference_steps": args.steps,
                    "guidance_scale": args.guidance_scale,
                    "scheduler": args.scheduler,
                    "width": width,
                    "height": height,
                }
            ),
            animation=args.animation,
            fps=args.fps,
            run=run_options(args),
            load=LoadOptions.from_args(args),
        )


def run_options(args: argparse.Namespace) -> RunOptions:
    """generate's run options, so that its saving and reporting serve here too."""
    return RunOptions(
        seed=None,
        count=1,
        output=args.output,
        overwrite=args.overwrite,
        metadata=not args.no_metadata,
        preview_every=0,
        preview_path=None,
        json=args.json,
        quiet=args.quiet,
    )


def keyframe_seeds(seeds: list[int] | None, keyframes: int) -> tuple[int, ...] | None:
    if seeds is None:
        return None
    if len(seeds) not in (1, keyframes):
        raise UsageError(
            f"give one seed per keyframe or one for all: got {len(seeds)} seeds for "
            f"{keyframes} keyframes"
        )
    for seed in seeds:
        if seed < 0:
            raise UsageError(f"--seeds takes whole numbers >= 0, got {seed}")
    return tuple(seeds) * (keyframes if len(seeds) == 1 else 1)


def keyframe_image_prompts(
    specs: list[str], keyframes: int
) -> tuple[tuple[tuple[str, float], ...], ...]:
    """--image-prompt K:PATH[:WEIGHT] -> each keyframe's (path, weight) pairs, in order."""
    found: list[list[tuple[str, float]]] = [[] for _ in range(keyframes)]
    for spec in specs:
        match = KEYFRAME_IMAGE_PROMPT.match(spec)
        if match is None:
            raise UsageError(
                f"--image-prompt takes K:PATH[:WEIGHT] (K: the keyframe's number, from 1), "
                f"got {spec!r}"
            )
        number = int(match.group(1))
        if not 1 <= number <= keyframes:
            raise UsageError(f"--image-prompt names keyframe {number}, but there are {keyframes}")
        found[number - 1].append(parse_image_prompt(match.group(2)))
    return tuple(tuple(pairs) for pairs in found)


def run(args: argparse.Namespace) -> int:
    return run_walk(WalkOptions.from_args(args))


def keyframes(options: WalkOptions) -> list[Keyframe]:
    from sdxs_rt.walk import Keyframe

    seeds = options.seeds or (None,) * len(options.prompts)
    return [
        Keyframe(prompt, seed=seed, image_prompts=images)
        for prompt, seed, images in zip(options.prompts, seeds, options.image_prompts, strict=True)
    ]


def output_folder(value: str | None) -> Path:
    """-o DIR, or the next numbered `outputs/NNNNN-walk` folder."""
    if value is not None:
        return Path(value)
    from sdxs_rt.images import DEFAULT_OUTPUT_FOLDER, next_folder_number

    root = Path(DEFAULT_OUTPUT_FOLDER)
    return root / f"{next_folder_number(root):05d}-walk"


@dataclass(frozen=True)
class Outputs:
    frames: list[Path]  # one per frame
    animation: Path | None


def outputs_for(options: WalkOptions, count: int) -> Outputs:
    """The files the walk writes, checked (none exists, unless --overwrite; writable)."""
    from sdxs_rt.images import check_outputs

    folder = output_folder(options.run.output)
    frames = [folder / FRAME_NAME.format(index) for index in range(count)]
    animation = None
    if options.animation != "none":
        animation = folder / ANIMATION_NAME.format(options.animation)
    check_outputs([*frames, *([animation] if animation else [])], options.run.overwrite)
    return Outputs(frames, animation)


def run_walk(options: WalkOptions) -> int:
    """Plan every frame and check every file, load, then draw and save frame by frame."""
    from sdxs_rt.commands.generate_run import early_sizes, load_pipeline
    from sdxs_rt.params import GenerationParams
    from sdxs_rt.walk import plan_frames, walk_frames

    shared = GenerationParams(prompt="", **options.params)
    frames = walk_frames(keyframes(options), options.frames, shared)
    outputs = outputs_for(options, len(frames))
    pipe = load_pipeline(options.load, 1, early_sizes(options.load, frames[0].params))
    plans = plan_frames(pipe, frames)  # every input loaded and checked before the first frame
    return draw_walk(options, pipe, list(zip(frames, plans, strict=True)), outputs)


def draw_walk(
    options: WalkOptions,
    pipe: Pipeline,
    planned: list[tuple[WalkFrame, GenerationPlan]],
    outputs: Outputs,
) -> int:
    from sdxs_rt.commands.generate_run import Job, Reporter, save_image
    from sdxs_rt.pipeline import ImageEvent
    from sdxs_rt.walk import FrameEvent, render, save_animation

    frames, plans = [frame for frame, _ in planned], [plan for _, plan in planned]
    run = options.run
    reporter = Reporter(run, sum(plan.total_steps for plan in plans))
    seeds = dict.fromkeys(frame.params.seed for frame in frames if frame.t == 0)
    reporter.log(f"{len(frames)} frames, seeds {', '.join(map(str, seeds))}")
    images = []
    try:
        for event in render(pipe, frames, plans):
            if not isinstance(event, FrameEvent):
                reporter.step()
                continue
            frame, plan, path = event.frame, event.plan, outputs.frames[event.frame.index]
            image = ImageEvent(plan, 0, plan.seeds[0], event.image, event.timings)
            payload = save_image(run, pipe, Job(plan.params, [path]), image)
            images.append(event.image)
            reporter.log(f"frame {frame.index + 1}/{len(frames)} ({where(frame)}) -> {path}")
            print_json(run, {**payload, **frame_fields(frame)})
        if outputs.animation is not None and len(images) == len(frames):
            save_animation(images, outputs.animation, options.fps, run.overwrite)
            reporter.log(f"animation -> {outputs.animation}")
            print_json(run, {"animation": str(outputs.animation), "frames": len(images)})
    finally:
        reporter.close()
    return 0


def where(frame: WalkFrame) -> str:
    """'keyframe 2', or 'keyframe 1 -> 2, t 0.250', for the log."""
    number = frame.keyframe + 1
    return (
        f"keyframe {number}"
        if frame.t == 0
        else f"keyframe {number} -> {number + 1}, t {frame.t:.3f}"
    )


def print_json(run: RunOptions, payload: dict[str, Any]) -> None:
    if run.json:
        print(json.dumps(payload, ensure_ascii=False), flush=True)


def frame_fields(frame: WalkFrame) -> dict[str, Any]:
    """What --json adds to generate's object for a frame."""
    fields: dict[str, Any] = {"frame": frame.index, "keyframe": frame.keyframe, "t": frame.t}
    target = frame.params.walk_to
    if target is not None:
        fields["walk_prompt"] = target.prompt
        if target.negative_prompt:
            fields["walk_negative_prompt"] = target.negative_prompt
    return fields
