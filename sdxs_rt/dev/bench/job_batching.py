"""Would batching jobs together pay? `python -m sdxs_rt.dev.bench.job_batching [--model M]`

Times N one-image generations against one generation of a batch of N, same prompt and seeds,
on the built-in model unless `--model` names another, and prints both and their ratio for each
of a few repeats (after a warm-up of each). The job queue runs each job as its own batch; this
is the measurement behind that choice (BENCHMARKS.md, "Serving load").
"""

from __future__ import annotations

import argparse
import time

from sdxs_rt.pipeline import Pipeline

PROMPT = "a red circle on a blue background"


def seconds(pipe: Pipeline, steps: int, images: int) -> float:
    started = time.perf_counter()
    for _ in pipe.generate(
        PROMPT, num_inference_steps=steps, seed=1, num_images=images, batch_size=images
    ):
        pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: the built-in model")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    pipe = Pipeline.from_pretrained(args.model)
    for images in (1, args.images):  # warm-up
        seconds(pipe, args.steps, images)
    for _ in range(args.repeats):
        one_by_one = sum(seconds(pipe, args.steps, 1) for _ in range(args.images))
        batched = seconds(pipe, args.steps, args.images)
        print(
            f"{args.images} jobs x 1 image: {one_by_one:.3f} s; 1 job, batch of {args.images}: "
            f"{batched:.3f} s; ratio {one_by_one / batched:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
