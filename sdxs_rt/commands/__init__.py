"""The command-line wing: `sdxs-rt` and its commands, a layer above the core and the backends.

`cli` assembles the top-level parser and dispatches to one module per command (`generate`,
`info`, `check`, `export`, `engine`, `bench`, `train`, `merge-lora`); each command module owns
its parser (`add_parser(commands)`) and its runner (`run(args) -> int`). The parsers are built
without heavy imports, so `sdxs-rt --help` stays fast and torch-free: numpy, PIL, torch and the
backends load only inside a runner. Nothing in the core, the backends or the dev wing imports
this package.
"""
