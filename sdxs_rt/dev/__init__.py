"""The developer wing: tools for building, testing and measuring sdxs-rt, not for running it.

`tiny` (with `tiny_files`, `tiny_mexma`, `tiny_tokenizer_files`) writes random-weight SDXS-format
models for tests (`python -m sdxs_rt.dev.tiny OUT_DIR`); `bench` times the model card's
algorithm against every sdxs-rt path and holds the GPU check; `demo` is the recipe that trains
the built-in demo model in `sdxs_rt/models/`. It may use the core, the backends and training;
the core never imports it, and only the `bench` command reaches it from the command line.
"""
