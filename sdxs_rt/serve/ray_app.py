"""`sdxs-rt serve` scaled out on Ray Serve: the same ASGI app in N replicas, one per GPU.

Each replica is one Ray actor that loads the model once (in its constructor), wraps it in a
`ServerRuntime` (one pipeline, one job queue, one worker thread) and serves `create_app(runtime)`
unchanged, plus one response header, `X-Sdxs-Replica`, naming the replica that answered. Ray's
HTTP proxy (one per node) routes each request to a replica; Ray's autoscaler adds and removes
replicas between `min_replicas` and `max_replicas`.

Start it with the Ray CLI on a node of a running cluster (the `key=value` arguments are
`RayAppOptions`' fields; Ray's proxy listens on 127.0.0.1:8000 unless told otherwise):

    RAY_SERVE_DEFAULT_HTTP_HOST=0.0.0.0 serve run --address auto \
        sdxs_rt.serve.ray_app:build_app model=AiArtLab/sdxs precision=fp16 max_replicas=4 \
        api_key="$KEY"

or from Python: `run_app({...})` after `ray.init()` (and `serve.start(http_options=...)` to
choose the proxy's address), as `tests/test_serve_ray.py` does with CPU replicas
(`num_gpus=0, num_cpus=1`).

Ongoing requests and our queue depth. Ray counts, per replica, the requests it has handed to
that replica and that have not answered yet ("ongoing"). An A1111 or OpenAI image request stays
ongoing while its job waits in the replica's `JobQueue` and while it runs, so on a replica

    ongoing requests = queue depth (jobs waiting) + 1 (the job running), when busy.

`target_ongoing_requests` (default 2: one running, one waiting) is therefore the queue depth
the autoscaler aims at plus one: when the mean over the replicas stays above it for
`upscale_delay_s`, Ray adds replicas (each one a GPU, and a model load: tens of seconds), and
removes them after `downscale_delay_s` below it. `max_ongoing_requests` (default 4) caps what the
proxy hands one replica; further requests wait in Ray's router, not in our queue. It must stay
at most `max_queue + 1`, or a replica's queue would answer 429 to requests Ray routed to it
(checked here). Jobs submitted through /v1/jobs answer at once, so Ray does not count them as
ongoing and does not scale on them; their job ids, /sdapi/v1/progress and the SSE streams are
per replica, and the next request may reach another replica: behind Ray, use the A1111 and
OpenAI image endpoints, which answer with the images. A replica that Ray scales down gets no new
requests, finishes its ongoing ones (up to Ray's graceful_shutdown_timeout_s, 20 s), then
closes its runtime (the shutdown rule of `sdxs-rt serve`).

Ray is imported by this module only (an import-linter contract keeps it out of the rest of
`sdxs_rt.serve`). Needs the `[serve,ray]` extras.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.schema import ApplicationStatus

from sdxs_rt.pipeline import Pipeline
from sdxs_rt.serve.app import create_app
from sdxs_rt.serve.config import ServerConfig
from sdxs_rt.serve.runtime import ServerRuntime

REPLICA_HEADER = "X-Sdxs-Replica"
DEPLOYMENT_NAME = "sdxs"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RayAppOptions(BaseModel):
    """What `build_app` takes: the model to load, the replicas and their resources, the
    server's limits. From the Ray CLI every value arrives as a string; pydantic converts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the model, as `sdxs-rt serve --model/--backend/--device/--precision` (None: built-in)
    model: str | None = None
    backend: str = "torch"
    device: str | None = None  # None: "cuda" when replicas have GPUs, else the backend's
    precision: str | None = None

    # replicas: a fixed count, or autoscaling between min_replicas and max_replicas
    replicas: int | None = Field(default=None, ge=1)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    max_ongoing_requests: int = Field(default=4, ge=1)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    num_gpus: float = Field(default=1.0, ge=0)  # per replica
    num_cpus: float | None = Field(default=None, ge=0)  # per replica; None: Ray's default

    # the server, as `sdxs-rt serve`'s flags of the same names
    api_key: str | None = None  # also read from SDXS_RT_API_KEY in each replica
    api_auth: str | None = None
    output_dir: str | None = None  # a folder every replica can write (shared storage)
    models_dir: str | None = None  # the allow-list of model names requests may use
    max_size: int = 2048
    max_steps: int = 150
    max_images: int = 8
    max_body_bytes: int = 32 * 1024 * 1024
    max_queue: int = 16
    preview_every: int = Field(default=5, ge=0)
    keep_results: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> RayAppOptions:
        if self.replicas is None and self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})"
            )
        if self.max_ongoing_requests > self.max_queue + 1:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) must be at most "
                f"max_queue + 1 ({self.max_queue + 1}): one running job and a full queue"
            )
        return self

    def server_config(self) -> ServerConfig:
        """As `sdxs-rt serve` makes it from its flags of the same names."""
        return ServerConfig.from_flags(self.model_dump())

    def deployment_options(self) -> dict[str, Any]:
        """The arguments of `Deployment.options`: resources, replica count or autoscaling."""
        actor: dict[str, Any] = {"num_gpus": self.num_gpus}
        if self.num_cpus is not None:
            actor["num_cpus"] = self.num_cpus
        options: dict[str, Any] = {
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
        }
        if self.replicas is not None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
            }
        return options


class ReplicaHeader:
    """ASGI middleware: every HTTP response (streams too) names the replica that sent it."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode("latin-1"), replica.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def replica_app(runtime: ServerRuntime, replica: str) -> FastAPI:
    """`create_app(runtime)` with the replica header (the app starts and closes the runtime)."""
    app = create_app(runtime)
    app.add_middleware(ReplicaHeader, replica=replica)  # type: ignore[arg-type]
    return app


def load_runtime(options: RayAppOptions) -> ServerRuntime:
    """The model, loaded once, behind a ServerRuntime (not started: the app's lifespan does)."""
    device = options.device or ("cuda" if options.num_gpus > 0 else None)
    pipe = Pipeline.from_pretrained(
        options.model, backend=options.backend, device=device, dtype=options.precision
    )
    config = options.server_config()
    if config.output_dir is not None:
        config.output_dir.mkdir(parents=True, exist_ok=True)
    return ServerRuntime(pipe, config, model_title=str(pipe.info.get("model") or "model"))


class SdxsReplica:
    """One replica: the model loads here, once; Ray then asks for the ASGI app to serve."""

    def __init__(self, options: RayAppOptions) -> None:
        context = serve.get_replica_context()
        self.replica = context.replica_tag
        self.runtime = load_runtime(options)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return replica_app(self.runtime, self.replica)


# `serve.ingress()` without an app: Ray calls `__serve_build_asgi_app__` after the constructor.
SdxsDeployment: Deployment = serve.deployment(name=DEPLOYMENT_NAME)(serve.ingress()(SdxsReplica))


def build_app(args: dict[str, Any]) -> Application:
    """The Ray Serve application builder: `serve run sdxs_rt.serve.ray_app:build_app k=v ...`,
    a config file's `import_path`/`args`, or `serve.run(build_app({...}))`."""
    options = RayAppOptions.model_validate(args)
    deployment = SdxsDeployment.options(**options.deployment_options())
    return deployment.bind(options)


def run_app(
    args: dict[str, Any],
    *,
    name: str = DEPLOYMENT_NAME,
    route_prefix: str = "/",
    timeout_s: float = 600.0,
) -> None:
    """Deploy `build_app(args)` on the connected Ray cluster and wait, at most `timeout_s`,
    until every replica has loaded the model (TimeoutError past it; RuntimeError when the
    deployment fails, with Ray's message)."""
    target = serve.RunTarget(build_app(args), name=name, route_prefix=route_prefix)
    serve.run_many(
        [target], wait_for_ingress_deployment_creation=False, wait_for_applications_running=False
    )
    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        status = app.status if app is not None else ApplicationStatus.NOT_STARTED
        if status == ApplicationStatus.RUNNING:
            return
        if app is not None and status == ApplicationStatus.DEPLOY_FAILED:
            raise RuntimeError(f"the Ray Serve application {name!r} failed: {app.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the Ray Serve application {name!r} was not running within {timeout_s:.0f} s "
                f"(status {status.value})"
            )
        time.sleep(0.5)
