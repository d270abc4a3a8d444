"""`flux2-serve --ray`: the same app as a Ray Serve deployment, one replica per GPU, each with its own pipeline and
encoder client (all calling the one shared `flux2-encoder`), behind Ray Serve's HTTP proxy.

Ray Serve routes each request to a replica with room (`max_ongoing_requests`), autoscales on ongoing requests
between `--min-replicas` and `--max-replicas`, restarts a replica whose `check_health` fails or whose process
died, and gives a stopping replica `DRAIN_S` to finish its image. Each replica keeps its own fair queue.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ray import serve

from diffusion_client.serve.app import create_app
from diffusion_client.serve.runtime import ServeRuntime, ServeSettings

APP_NAME = "flux2-serve"
DRAIN_S = 300.0
TARGET_ONGOING = 2  # requests per replica Ray Serve's autoscaler aims for: one denoising, one waiting its turn


@serve.ingress()
class ImageReplica:
    """One replica: a `ServeRuntime` (pipeline loading in the background) and the app over it."""

    def __init__(self, settings: ServeSettings) -> None:
        # Loaded before the constructor returns: Ray Serve routes nothing to a replica until then, so a new or
        # restarted replica never answers "loading" while others could serve.
        self.runtime = ServeRuntime(settings, load_in_background=False)

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self.runtime.state)

    def check_health(self) -> None:
        """Ray Serve replaces a replica whose GPU worker has died."""
        service = self.runtime.state.service
        if service is None or not service.alive:
            raise RuntimeError("the replica's GPU worker is not running")

    def __del__(self) -> None:
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            runtime.drain(DRAIN_S)
            runtime.close()


def deployment_options(args: argparse.Namespace, settings: ServeSettings, gpus: float) -> dict[str, Any]:
    """`serve.deployment` options from the flags: a fixed count, or autoscaling between two."""
    limits = settings.service_limits
    options: dict[str, Any] = {
        "name": "ImageReplica",
        # Ray Serve's own routing sends a replica no more than this; the replica's fair queue holds the rest.
        "max_ongoing_requests": limits.max_queue + 1,
        "graceful_shutdown_timeout_s": DRAIN_S,
        "health_check_period_s": 10.0,
        "ray_actor_options": {"num_gpus": gpus, "num_cpus": 1},
    }
    if args.min_replicas is not None or args.max_replicas is not None:
        low = args.min_replicas if args.min_replicas is not None else 1
        high = args.max_replicas if args.max_replicas is not None else max(low, 1)
        if high < max(low, 1):
            from diffusion_client.errors import InputError

            raise InputError(f"--max-replicas {high} is under --min-replicas {low}")
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": TARGET_ONGOING,
        }
    else:
        options["num_replicas"] = args.replicas or 1
    return options


def serve_on_ray(settings: ServeSettings, args: argparse.Namespace, warning: str | None) -> int:
    """Deploy on the cluster at `--ray` and serve until SIGINT or SIGTERM; then the deployment is taken down."""
    from diffusion_client.batch.runner import cluster
    from diffusion_client.commands import note

    with cluster(args.ray, args.connect_timeout) as ray:
        gpus = args.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0
        options = deployment_options(args, settings, gpus)
        serve.start(http_options={"host": args.host, "port": args.port})
        deployment = serve.deployment(ImageReplica).options(**options)  # type: ignore[attr-defined]
        serve.run(deployment.bind(settings), name=APP_NAME, route_prefix="/", blocking=False)
        if warning:
            note(warning, "flux2-serve")
        replicas = options.get("num_replicas") or options["autoscaling_config"]
        print(
            f"flux2-serve: serving {settings.model_id} on http://{args.host}:{args.port}/v1 through Ray Serve "
            f"(replicas: {replicas})",
            file=sys.stderr,
            flush=True,
        )
        stopping = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopping.set())
        stopping.wait()
        print("flux2-serve: stopping: replicas finish the image in flight", file=sys.stderr, flush=True)
        serve.shutdown()
    return 0


def app_builder(config: dict[str, Any]) -> Any:
    """A Ray Serve application builder, for a KubeRay `RayService`'s `serveConfigV2` (`import_path:
    diffusion_client.serve.ray_deployment:app_builder`): `args.flags` holds `flux2-serve`'s flags as a list (or one
    string), checked as the command checks them. Replicas, autoscaling and the HTTP port are the RayService's."""
    import shlex

    from diffusion_client.serve.flags import build_parser, settings_from_args

    flags = config.get("flags", [])
    argv = shlex.split(flags) if isinstance(flags, str) else [str(flag) for flag in flags]
    args = build_parser().parse_args(argv)
    settings = settings_from_args(args)
    return serve.deployment(ImageReplica).bind(settings)  # type: ignore[attr-defined]
