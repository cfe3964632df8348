"""`sdxs-rt serve`: the model behind the A1111 and OpenAI image APIs and a job queue (HTTP).

Loads the model once (the load flags are `generate`'s), then runs the ASGI app of
`sdxs_rt.serve` under uvicorn. SIGTERM or Ctrl-C applies the shutdown rule at once (pending
jobs cancelled, the running job stopped at its next step), then uvicorn closes. Needs the
`[serve]` extra; heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdxs_rt.commands.generate import add_load_arguments
from sdxs_rt.commands.generate_options import LoadOptions
from sdxs_rt.errors import EXIT_OK, DeviceError, UsageError

if TYPE_CHECKING:
    from sdxs_rt.serve.config import ServerConfig

SERVE_EXAMPLES = """examples:
  sdxs-rt serve                                   # the built-in model on http://127.0.0.1:7860
  sdxs-rt serve --model AiArtLab/sdxs --device cuda --precision fp16 --api-key "$KEY"
  sdxs-rt serve --host 0.0.0.0 --api-auth alice:secret --output-dir served/ --max-queue 32
then: POST /sdapi/v1/txt2img (A1111), POST /v1/images/generations (OpenAI), POST /v1/jobs,
      GET /docs for every endpoint
"""

log = logging.getLogger("sdxs_rt.serve")


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve",
        help="serve the model over HTTP: A1111 and OpenAI image APIs, jobs, SSE, metrics",
        description="Load the model once and serve it over HTTP: A1111's /sdapi/v1 subset, "
        "OpenAI's /v1/images/generations, a job queue with server-sent events, /healthz and "
        "/metrics. Binds 127.0.0.1 unless --host says otherwise.",
        epilog=SERVE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860, A1111's)")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require 'Authorization: Bearer KEY' (repeatable; also read from SDXS_RT_API_KEY)",
    )
    p.add_argument(
        "--api-auth",
        default=None,
        metavar="USER:PASS[,USER:PASS]",
        help="require HTTP Basic credentials, as A1111's --api-auth",
    )
    p.add_argument("--output-dir", default=None, help="save every image here (default: none)")
    p.add_argument(
        "--models-dir",
        default=None,
        help="allow-list of model folders that requests may name (by folder name, never by "
        "path); --model NAME loads NAME from it",
    )
    p.add_argument("--max-size", type=int, default=2048, help="largest width/height in px")
    p.add_argument("--max-steps", type=int, default=150, help="most steps per request")
    p.add_argument("--max-images", type=int, default=8, help="most images per request")
    p.add_argument(
        "--max-body-bytes", type=int, default=32 * 1024 * 1024, help="largest request body"
    )
    p.add_argument(
        "--max-queue", type=int, default=16, help="jobs that may wait; one more gets 429"
    )
    p.add_argument(
        "--preview-every",
        type=int,
        default=5,
        metavar="N",
        help="decode a preview every N steps for /sdapi/v1/progress and SSE (0: never)",
    )
    p.add_argument(
        "--keep-results",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="how long finished jobs and their image URLs are kept (default 600)",
    )
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    add_load_arguments(p)


def server_config(args: argparse.Namespace) -> ServerConfig:
    from sdxs_rt.serve.config import ServerConfig

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {args.port}")
    return ServerConfig.from_flags(vars(args))


def model_from_allow_list(model: str | None, models_dir: Path | None) -> str | None:
    """--model NAME with --models-dir: NAME's folder there, when it has one."""
    if model and models_dir is not None and (models_dir / model / "model_index.json").is_file():
        return str(models_dir / model)
    return model


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


SERVE_PACKAGES = ("fastapi", "uvicorn", "prometheus_client")  # the [serve] extra


def check_serve_installed() -> None:
    """One sentence instead of an ImportError when the [serve] extra is missing."""
    for name in SERVE_PACKAGES:
        if importlib.util.find_spec(name) is None:
            raise DeviceError(
                f"sdxs-rt serve needs the Python package {name!r}; "
                "install it with: pip install 'sdxs-rt[serve]'"
            )


def run(args: argparse.Namespace) -> int:
    check_serve_installed()
    config = server_config(args)
    if config.models_dir is not None and not config.models_dir.is_dir():
        raise UsageError(f"--models-dir {config.models_dir} is not a folder")
    if config.output_dir is not None:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    args.model = model_from_allow_list(args.model, config.models_dir)
    load = LoadOptions.from_args(args)
    if not is_loopback(args.host) and not config.auth.enabled:
        print(
            f"warning: serving on {args.host} without --api-key or --api-auth: anyone who can "
            "reach this port can generate images",
            file=sys.stderr,
        )
    serve(load, config, args.host, args.port, quiet=args.quiet)
    return EXIT_OK


def serve(load: LoadOptions, config: ServerConfig, host: str, port: int, quiet: bool) -> None:
    import uvicorn

    from sdxs_rt.commands.generate_run import load_pipeline
    from sdxs_rt.serve.app import create_app
    from sdxs_rt.serve.runtime import ServerRuntime

    pipe = load_pipeline(load, batch_size=1, sizes=[])
    runtime = ServerRuntime(pipe, config, model_title=str(pipe.info.get("model") or "model"))
    app = create_app(runtime)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # The shutdown rule first, so waiting requests answer instead of holding uvicorn.
            runtime.begin_shutdown()
            super().handle_exit(sig, frame)

    level = "warning" if quiet else "info"
    Server(uvicorn.Config(app, host=host, port=port, log_level=level, access_log=not quiet)).run()
