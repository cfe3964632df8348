"""`sdxs-rt bench`: the model card's algorithm against every sdxs-rt path, same weights and noise.

An entry-point layer (like the CLI): it may import backends and, lazily, `sdxs_rt_export`;
nothing in the core imports it. CLI hooks: `sdxs_rt.dev.bench.command.add_bench_arguments` and
`sdxs_rt.dev.bench.command.run_bench`.
"""
