"""`sdxs-rt bench`: wires the dev wing's benchmark into the CLI (imported only when it runs)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    from sdxs_rt.dev.bench.command import add_bench_arguments

    add_bench_arguments(
        commands.add_parser(
            "bench",
            help="time the model card's script against every sdxs-rt path on this machine",
            description="Benchmark: the model card's algorithm (the reference) and each sdxs-rt "
            "path, same random weights, seed, steps and size; prints a table, writes JSON.",
        )
    )


def run(args: argparse.Namespace) -> int:
    from sdxs_rt.dev.bench.command import run_bench

    return run_bench(args)
