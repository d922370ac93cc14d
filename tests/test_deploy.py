"""deploy/: the container images and Kubernetes manifests, checked without Docker or a cluster.

Every manifest is validated against the Kubernetes API schemas (kubernetes-validate: offline,
strict, so an unknown or misspelled field is an error too). The flags the images and the
Deployments pass go through the server's own parser; ports, probes, the Service, the HPAs, the
API key and the grace period are checked against each other; the health check script that the
probes run is run against a live app. The images themselves are never built here (no Docker).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from types import SimpleNamespace

import kubernetes_validate
import pytest
import uvicorn
import yaml
from fastapi.testclient import TestClient

from jaxgpt.serve.__main__ import parse_args
from jaxgpt.serve.app import Backend, Settings, create_app

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
# The oldest Kubernetes the manifests are meant for (preStop `sleep` is on by default from
# 1.30) and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# Files that stand in for one in kustomization.yaml (same kind and name): apply one of the two.
ALTERNATES = {"deployment-gpu.yaml": "deployment.yaml", "hpa-queue.yaml": "hpa.yaml"}
# Each Deployment and the image it runs.
IMAGES = {"deployment.yaml": "Dockerfile", "deployment-gpu.yaml": "Dockerfile.cuda"}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
KEY = "test-key-123"
# Paths that must stay out of the Docker build context.
NOT_SENT = (
    "runs/tiny/checkpoints/1/x",
    ".git/HEAD",
    "tests/test_serve.py",
    "shared/data/x.bin",
    "deploy/k8s/deployment.yaml",
    "jaxgpt.egg-info/PKG-INFO",
    "benchmarks/serve_load.py",
    "jaxgpt/serve/__pycache__/app.cpython-311.pyc",
)


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load_module("deploy_healthcheck", DEPLOY / "healthcheck.py")
requirements = _load_module("deploy_requirements", DEPLOY / "requirements.py")


def manifests() -> dict[str, list[dict]]:
    """Every deploy/k8s file but the kustomization: file name → its YAML documents."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def one(name: str) -> dict:
    (doc,) = manifests()[name]
    return doc


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# ----- Dockerfiles -----


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = (pending + line).strip(), ""
        if text:
            word, _, rest = text.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def exec_form(path: Path, word: str) -> list[str]:
    (text,) = [rest for w, rest in final_stage(path) if w == word]
    return json.loads(text)  # the exec (JSON) form: no shell between Docker and Python


def build_args(path: Path) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in instructions(path) if word == "ARG")


def image_argv(dockerfile: str) -> list[str]:
    """The server's flags when the image runs with its default CMD."""
    path = DEPLOY / dockerfile
    return exec_form(path, "ENTRYPOINT")[3:] + exec_form(path, "CMD")


def server_args(argv: list[str], where: str):
    """Parse flags with `python -m jaxgpt.serve`'s own parser, as the container would."""
    try:
        return parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: python -m jaxgpt.serve refuses these flags: {argv}")


@pytest.mark.parametrize("dockerfile", sorted(set(IMAGES.values())))
def test_image_runs_the_server_module_with_flags_it_accepts(dockerfile):
    path = DEPLOY / dockerfile
    entry = exec_form(path, "ENTRYPOINT")
    assert entry[:3] == ["python", "-m", "jaxgpt.serve"], entry
    assert importlib.util.find_spec("jaxgpt.serve.__main__") is not None
    args = server_args(image_argv(dockerfile), f"{dockerfile} ENTRYPOINT + CMD")
    assert args.host == "0.0.0.0", "inside a container the server must listen beyond loopback"
    exposed = [rest for word, rest in final_stage(path) if word == "EXPOSE"]
    assert exposed == [str(args.port)], f"{dockerfile}: EXPOSE {exposed} vs --port {args.port}"
    user = [rest for word, rest in final_stage(path) if word == "USER"]
    assert user and not user[-1].startswith(("0", "root")), f"{dockerfile} runs as root"


@pytest.mark.parametrize("dockerfile", sorted(set(IMAGES.values())))
def test_image_extras_exist_in_pyproject(dockerfile):
    path = DEPLOY / dockerfile
    extras = build_args(path)["EXTRAS"].split(",")
    assert {"serve", "cloud"} <= set(extras)
    assert ("cuda" in extras) == dockerfile.endswith(".cuda")
    # The same resolution the image build runs (deploy/requirements.py): fails on a missing
    # extra with its name.
    reqs = requirements.requirements(REPO / "pyproject.toml", extras)
    assert any(r.startswith("fastapi") for r in reqs)
    installs = [rest for word, rest in instructions(path) if word == "RUN" and "--no-deps" in rest]
    assert installs and all(".[${EXTRAS}]" in rest for rest in installs), installs


@pytest.mark.parametrize("dockerfile", sorted(set(IMAGES.values())))
def test_image_copies_what_the_package_build_needs(dockerfile):
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "jaxgpt"}
    needed |= set(pyproject["tool"]["setuptools"].get("package-dir", {}).values())  # configs/
    rules = dockerignore()
    copied = set()
    for word, rest in instructions(DEPLOY / dockerfile):
        if word != "COPY" or rest.startswith("--from"):
            continue
        *sources, _dest = rest.split()
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile}: COPY {source}: no such path"
            assert sent(source.rstrip("/"), rules), f"{dockerfile}: .dockerignore drops {source}"
            copied.add(source.rstrip("/"))
    assert needed <= copied, f"{dockerfile} does not copy {needed - copied}"
    assert "COPY deploy/healthcheck.py /opt/jaxgpt/healthcheck.py" in [
        f"{word} {rest}" for word, rest in final_stage(DEPLOY / dockerfile)
    ]


def test_requirements_expand_self_references_and_name_a_missing_extra(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "jaxgpt"\ndependencies = ["numpy"]\n'
        '[project.optional-dependencies]\nserve = ["fastapi"]\nall = ["jaxgpt[serve]", "x"]\n'
    )
    assert requirements.requirements(pyproject, ["all"]) == ["numpy", "x", "fastapi"]
    with pytest.raises(ValueError, match=r"no extra 'cloud'.*all, serve"):
        requirements.requirements(pyproject, ["serve", "cloud"])


# ----- .dockerignore -----


def _pattern(text: str) -> re.Pattern:
    """A .dockerignore pattern as Docker reads it: Go's filepath.Match, plus `**`."""
    out, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif text.startswith("**", i):
            out, i = out + ".*", i + 2
        elif text[i] in "*?":
            out, i = out + ("[^/]*" if text[i] == "*" else "[^/]"), i + 1
        elif text[i] == "[":
            end = text.index("]", i)
            out, i = out + text[i : end + 1], end + 1
        else:
            out, i = out + re.escape(text[i]), i + 1
    return re.compile(out + "$")


def dockerignore() -> list[tuple[bool, re.Pattern]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            rules.append((keep, _pattern(line.lstrip("!").strip("/"))))
    return rules


def sent(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether Docker sends `path` in the build context: the last rule that matches the path or
    one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    keep = True
    for negated, pattern in rules:
        if any(pattern.match(p) for p in prefixes):
            keep = negated
    return keep


def test_dockerignore_sends_the_package_and_nothing_else():
    rules = dockerignore()
    package = [p for p in (REPO / "jaxgpt").rglob("*") if p.is_file()]
    package += [p for p in (REPO / "configs").rglob("*") if p.is_file()]
    for path in package:
        rel = path.relative_to(REPO).as_posix()
        assert sent(rel, rules) == ("__pycache__" not in rel), rel
    assert sent("jaxgpt/data/corpora/tinyshakespeare.txt", rules)  # package data
    for rel in NOT_SENT:
        assert not sent(rel, rules), f"{rel} would be sent to the Docker build"


# ----- Kubernetes manifests -----


def test_every_manifest_is_a_valid_kubernetes_object():
    kinds = set()
    for name, docs in manifests().items():
        for doc in docs:
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = ".".join(str(p) for p in e.path)
                    pytest.fail(f"{name} against Kubernetes {version}: {where}: {e.message}")
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds


def test_the_validator_rejects_wrong_types_and_unknown_fields():
    good = one("deployment.yaml")
    bad = copy.deepcopy(good)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError, match="'two' is not of type"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    misspelled = copy.deepcopy(good)
    c = container(misspelled)
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(misspelled, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_one_of_each_alternative():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert all((K8S / r).is_file() for r in listed), listed
    assert set(listed) | set(ALTERNATES) == set(manifests())
    for alternate, replaced in ALTERNATES.items():
        assert alternate not in listed and replaced in listed
        a, r = one(alternate), one(replaced)
        assert (a["kind"], a["metadata"]["name"]) == (r["kind"], r["metadata"]["name"])


def deployment_args(name: str):
    c = container(one(name))
    assert "command" not in c, f"{name}: keep the image's entrypoint (set `args` only)"
    return server_args(image_argv(IMAGES[name]) + c["args"], f"{name} args")


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_deployment_flags_parse_and_match_the_port(name):
    args = deployment_args(name)
    assert args.workdir.startswith(("gs://", "s3://")), "the bucket workdir is the main case"
    (port,) = container(one(name))["ports"]
    assert port["containerPort"] == args.port and args.host == "0.0.0.0"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_probes_check_health_on_the_server_port(name):
    args, c = deployment_args(name), container(one(name))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for kind in PROBES:
        probe = c[kind]
        if "httpGet" in probe:  # possible only without --api_key_env
            assert args.api_key_env is None, f"{name} {kind}: httpGet cannot send the key"
            assert probe["httpGet"]["path"] == "/health"
            assert ports.get(probe["httpGet"]["port"], probe["httpGet"]["port"]) == args.port
            continue
        command = probe["exec"]["command"]
        assert command[:2] == ["python", "/opt/jaxgpt/healthcheck.py"], command
        check = healthcheck.parse_args(command[2:])
        assert (check.port, check.api_key_env) == (args.port, args.api_key_env), kind
        assert probe["timeoutSeconds"] > check.timeout, f"{kind}: the script must answer first"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "compiling takes time"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_api_key_comes_from_a_secret(name):
    args, c = deployment_args(name), container(one(name))
    assert args.api_key_env, f"{name}: a pod reachable in the cluster should require a key"
    (var,) = [e for e in c["env"] if e["name"] == args.api_key_env]
    assert "secretKeyRef" in var["valueFrom"] and "value" not in var


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_grace_period_outlasts_the_drain(name):
    args, spec = deployment_args(name), one(name)["spec"]["template"]["spec"]
    pre_stop = container(one(name)).get("lifecycle", {}).get("preStop", {})
    waited = pre_stop.get("sleep", {}).get("seconds", 0)
    assert spec["terminationGracePeriodSeconds"] > waited + args.graceful_timeout


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_pod_runs_as_the_image_user(name):
    user = [rest for word, rest in final_stage(DEPLOY / IMAGES[name]) if word == "USER"][-1]
    security = one(name)["spec"]["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] and f"{security['runAsUser']}:{security['runAsGroup']}" == user


def test_deployments_differ_only_in_image_resources_and_placement():
    cpu, gpu = one("deployment.yaml"), one("deployment-gpu.yaml")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container(gpu)["image"].startswith("jaxgpt-serve-cuda")
    for d in (cpu, gpu):
        pod = d["spec"]["template"]["spec"]
        for key in ("tolerations", "nodeSelector"):
            pod.pop(key, None)
        for key in ("image", "resources"):
            container(d).pop(key)
    assert cpu == gpu, "keep deployment-gpu.yaml in step with deployment.yaml"


def test_service_and_disruption_budget_select_the_pods():
    deployment = one("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    service = one("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    for port in service["spec"]["ports"]:
        assert ports.get(port["targetPort"], port["targetPort"]) in ports.values(), port
    assert one("pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    assert one("serviceaccount.yaml")["metadata"]["name"] == account


def test_autoscalers_scale_the_deployment_on_metrics_that_exist():
    deployment = one("deployment.yaml")
    exported = metric_names()
    for name in ("hpa.yaml", "hpa-queue.yaml"):
        spec = one(name)["spec"]
        target = spec["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], "Deployment")
        assert target["name"] == deployment["metadata"]["name"]
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        for metric in spec["metrics"]:
            if metric["type"] == "Resource":  # a utilization target is a share of the request
                resource = metric["resource"]["name"]
                assert resource in container(deployment)["resources"]["requests"]
            else:
                assert metric["pods"]["metric"]["name"] in exported, (name, metric)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


def metric_names() -> set[str]:
    """Names in the server's GET /metrics, from the real app (no model needed)."""
    release = threading.Event()
    engine = SimpleNamespace(n_waiting=0, n_busy=0, stop=lambda timeout=None: None)

    def load(metrics):
        release.wait(10)
        return Backend(SimpleNamespace(name="tiny"), engine)

    with TestClient(create_app(Settings(), load)) as client:
        text = client.get("/metrics").text
        release.set()
    return {line.split()[0].split("{")[0] for line in text.splitlines() if line[:1].isalnum()}


# ----- deploy/healthcheck.py against a live server -----


@pytest.fixture
def live_server():
    """The real app on a loopback port, with an API key and a model that loads on request."""
    loaded = threading.Event()
    engine = SimpleNamespace(n_waiting=0, n_busy=0, stop=lambda timeout=None: None)

    def load(metrics):
        loaded.wait(30)
        return Backend(SimpleNamespace(name="tiny"), engine)

    app = create_app(Settings(api_key=KEY), load)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield SimpleNamespace(port=port, loaded=loaded)
    loaded.set()
    server.should_exit = True
    thread.join(10)


def probe(port: int, key: str | None) -> subprocess.CompletedProcess:
    """The probe as the kubelet runs it: a process, its exit status, its output."""
    env = {"PATH": "/usr/bin:/bin"} | ({"PROBE_KEY": key} if key is not None else {})
    command = [sys.executable, str(DEPLOY / "healthcheck.py"), f"--port={port}"]
    command.append("--api_key_env=PROBE_KEY")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.e2e
def test_healthcheck_follows_the_server_state(live_server):
    loading = probe(live_server.port, KEY)
    assert loading.returncode == 1 and "503" in loading.stdout, loading
    wrong = probe(live_server.port, "wrong-key")
    assert wrong.returncode == 1 and "401" in wrong.stdout, wrong
    unset = probe(live_server.port, None)
    assert unset.returncode == 1 and "$PROBE_KEY is empty or unset" in unset.stdout, unset
    live_server.loaded.set()
    deadline = time.monotonic() + 20
    while (ready := probe(live_server.port, KEY)).returncode != 0:
        assert time.monotonic() < deadline, f"never ready: {ready.stdout}"
        time.sleep(0.1)
    assert ready.stdout == ""


@pytest.mark.e2e
def test_healthcheck_fails_when_nothing_listens():
    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    refused = probe(free, KEY)
    assert refused.returncode == 1 and "no answer from 127.0.0.1" in refused.stdout, refused
