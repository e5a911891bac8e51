"""docker/ and k8s/: linted, schema-checked, and their lmdeploy command lines parse."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmdeploy.adapters.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cpu"]
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def _entrypoint(dockerfile: Path) -> list[str]:
    (line,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile.read_text(), re.M)
    return json.loads(line)


def _resources() -> dict[tuple[str, str], dict]:
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_dockerfiles_pass_hadolint():
    result = _run("hadolint", *map(str, DOCKERFILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_match_the_kubernetes_schemas():
    assert MANIFESTS, "no manifests under k8s/"
    result = _run("kubernetes-validate", "--strict", "--quiet", *map(str, MANIFESTS))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_entrypoint_is_the_api_server(dockerfile):
    command = _entrypoint(dockerfile)
    assert command[:3] == ["lmdeploy", "serve", "api_server"]
    args = build_parser().parse_args(command[1:])
    assert f"EXPOSE {args.server_port}" in dockerfile.read_text()


def test_api_servers_join_the_proxy_service_and_are_probed_on_health():
    resources = _resources()
    container = _container(resources[("Deployment", "lmdeploy-api-server")])
    argv = _entrypoint(DOCKERFILES[0])[1:] + container["args"]
    args = build_parser().parse_args([a.replace("$(POD_IP)", "10.0.0.7") for a in argv])
    proxy_port = resources[("Service", "lmdeploy-proxy")]["spec"]["ports"][0]["port"]
    assert args.proxy_url == f"http://lmdeploy-proxy:{proxy_port}"
    assert container["ports"][0]["containerPort"] == args.server_port
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    proxy = _container(resources[("Deployment", "lmdeploy-proxy")])
    assert proxy["command"] + proxy["args"] == [
        "lmdeploy",
        "serve",
        "proxy",
        "--server-name",
        "0.0.0.0",
        "--server-port",
        str(proxy_port),
        "--strategy",
        "min_expected_latency",
    ]
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/health"
