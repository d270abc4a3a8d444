"""The KubeRay `RayService` example builds the app through `app_builder`, with flags `flux2-serve` accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from diffusion_client.serve.flags import build_parser
from diffusion_client.serve.ray_deployment import app_builder

ROOT = Path(__file__).resolve().parents[2]


def serve_application() -> dict:  # type: ignore[type-arg]
    document = yaml.safe_load((ROOT / "deploy" / "rayservice.yaml").read_text())
    config = yaml.safe_load(document["spec"]["serveConfigV2"])
    return config["applications"][0]  # type: ignore[no-any-return]


def test_the_rayservice_flags_are_flux2_serve_flags():
    application = serve_application()
    assert application["import_path"] == "diffusion_client.serve.ray_deployment:app_builder"
    args = build_parser().parse_args(application["args"]["flags"])
    assert args.model == Path("/models/FLUX.2-dev") and args.tokens_file == Path("/etc/flux2/callers/tokens")


def test_app_builder_binds_the_replica_with_checked_settings(tiny_snapshot, tmp_path):
    built = app_builder({"flags": f"--model {tiny_snapshot} --out-dir {tmp_path / 'images'} --name tiny"})
    deployment = built._bound_deployment
    assert deployment.name == "ImageReplica"
    settings = built._bound_deployment.init_args[0]
    assert settings.model_id == "tiny" and settings.out_dir == (tmp_path / "images").resolve()
