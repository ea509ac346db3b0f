"""The deployment contract of Dockerfile / docker-compose*.yml / .dockerignore / docker/.

Fast, CPU-only, no Docker needed: the files are parsed and checked for what the stack
relies on (one image, a non-root user, a /healthz healthcheck, a trainer that must
finish before the service starts, one shared store volume, GPU optional).
"""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml  # PyYAML: a hard dependency of huggingface-hub (open_clip_torch), so always installed

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
TRAINER_SCRIPT = ROOT / "docker" / "entrypoint-trainer.sh"
PORT = 8000


# ---- helpers ---------------------------------------------------------------------------------

def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    """Instructions split per build stage (the preamble before the first FROM is dropped)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def final_stage() -> list[tuple[str, str]]:
    return stages()[-1]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose_gpu() -> dict:
    return yaml.safe_load(COMPOSE_GPU.read_text())


def env_dict(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict((e.split("=", 1) + [None])[:2] for e in env)
    return env


def ignored(rel: str) -> bool:
    """Docker's .dockerignore semantics, enough for these patterns: last match wins."""
    result = False
    for pat in DOCKERIGNORE.read_text().splitlines():
        pat = pat.strip()
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = fnmatch.translate(pat).replace(".*.*/", "(.*/)?")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatch(p.rsplit("/", 1)[-1], pat[3:]) for p in prefixes)
        else:
            hit = any(re.fullmatch(regex, p) or fnmatch.fnmatch(p, pat) for p in prefixes)
        if hit:
            result = not negate
    return result


# ---- Dockerfile ------------------------------------------------------------------------------

def test_base_image_is_a_build_arg_with_a_default():
    ins = instructions()
    assert ins[0][0] == "ARG", "the first instruction must declare BASE_IMAGE (ARG before FROM)"
    name, _, default = ins[0][1].partition("=")
    assert name == "BASE_IMAGE" and default, "ARG BASE_IMAGE=<default> expected"
    first_from = next(rest for word, rest in ins if word == "FROM")
    assert first_from.split()[0] in ("${BASE_IMAGE}", "$BASE_IMAGE")


def test_final_stage_runs_as_non_root_user():
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users, "the final stage needs a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"final USER is {user}"
    # ... and no RUN/instruction after it switches back to root
    after = final_stage()[[w for w, _ in final_stage()].index("USER"):]
    assert not any(w == "RUN" for w, _ in after), "no RUN after USER (it would need root)"


def test_healthcheck_probes_healthz_without_curl():
    hc = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    assert hc, "HEALTHCHECK missing"
    assert "/healthz" in hc[-1] and f":{PORT}/" in hc[-1]
    assert "curl" not in hc[-1] and "wget" not in hc[-1], "the image ships no curl/wget; use python"


def test_serves_on_port_8000_by_default():
    stage = final_stage()
    exposed = [rest for word, rest in stage if word == "EXPOSE"]
    assert any(str(PORT) in e.split() for e in exposed)
    cmd = [rest for word, rest in stage if word == "CMD"][-1]
    assert cmd.startswith("["), "exec-form CMD (signals reach uvicorn)"
    args = yaml.safe_load(cmd)
    assert args[:2] == ["pmerge", "serve"] and "0.0.0.0" in args and str(PORT) in args


def test_store_volume_and_env():
    stage = final_stage()
    env = env_of(stage)
    assert env.get("PMERGE_STORE", "").startswith("/store")
    assert any(w == "VOLUME" and "/store" in rest for w, rest in stage)
    assert any(w == "RUN" and "chown" in rest and "/store" in rest for w, rest in stage), \
        "/store must belong to the unprivileged user (a fresh named volume copies this ownership)"


def test_no_pipe_to_shell_and_no_buildkit_only_syntax():
    text = DOCKERFILE.read_text()
    assert not re.search(r"(curl|wget)[^\n|]*\|\s*(ba|z)?sh\b", text), "no `curl | sh`"
    assert "--mount=" not in text, "RUN --mount needs BuildKit; this must build with plain docker build"
    assert not re.search(r"^\s*#\s*syntax=", text, re.M)
    assert "--chmod" not in text
    assert not re.search(r"<<-?\s*['\"]?[A-Z]+", text), "no heredocs (BuildKit only)"


def test_dependencies_get_their_own_layer_before_the_code():
    """Code changes must not re-download torch: pyproject is copied and installed first."""
    deps = [s for s in stages() if any(w == "COPY" and "pyproject.toml" in r and "trainer" not in r
                                       for w, r in s)]
    assert deps, "a stage must COPY pyproject.toml alone and install the dependencies from it"
    stage = deps[0]
    words = [w for w, _ in stage]
    first_install = next(i for i, (w, r) in enumerate(stage) if w == "RUN" and "pip install" in r
                         and "requirements" in r)
    code_copies = [i for i, (w, r) in enumerate(stage) if w == "COPY" and re.search(r"\btrainer/", r)]
    assert all(i > first_install for i in code_copies), words


def test_requirements_helper_matches_pyproject():
    import tomllib
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements-from-pyproject.py"),
                          str(ROOT / "pyproject.toml")], capture_output=True, text=True, check=True).stdout
    assert out.split() == deps
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    out = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements-from-pyproject.py"),
                          str(ROOT / "pyproject.toml"), "ray"], capture_output=True, text=True, check=True).stdout
    assert out.split() == deps + extras["ray"]
    wrong = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements-from-pyproject.py"),
                            str(ROOT / "pyproject.toml"), "rya"], capture_output=True, text=True)
    assert wrong.returncode != 0 and "unknown extras ['rya']" in wrong.stderr


def test_the_ray_serve_configs_deploy_the_service_and_agree():
    """ray/serve.yaml and the RayService's inline config are valid Serve configs of the same
    application, whose args are service settings."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from service.ray_serve import build
    local = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "ray" / "serve.yaml").read_text()))
    service = yaml.safe_load((ROOT / "ray" / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    cluster = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    for config in (local, cluster):
        (app,) = config.applications
        assert app.import_path == "service.ray_serve:build" and app.route_prefix == "/"
        assert [d.name for d in app.deployments] == ["pmerge"]
        build(app.args)  # every arg is a setting
    assert cluster.applications[0].deployments[0].ray_actor_options.num_gpus == 1
    assert service["spec"]["rayClusterConfig"]["rayVersion"] in (ROOT / "pyproject.toml").read_text()
    shown = (ROOT / "docs" / "serving.md").read_text()
    block = re.search(r"```yaml\n(apiVersion: ray.io/v1.*?)```", shown, re.S).group(1)
    assert yaml.safe_load(block) == service, "docs/serving.md's RayService is ray/rayservice.yaml"
    with pytest.raises(ValueError, match=r"unknown pmerge settings in the Serve config's args: \['stroe'\]"):
        build({"stroe": "/store"})


def test_build_context_has_what_copy_needs_and_nothing_big():
    assert DOCKERIGNORE.exists()
    for word, rest in instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        *sources, _dest = shlex.split(rest)
        for src in sources:
            if "[" in src:  # optional glob (README.m[d])
                continue
            assert (ROOT / src).exists(), f"COPY source {src} missing"
            assert not ignored(src.rstrip("/")), f"COPY source {src} is excluded by .dockerignore"
    for big in (".venv", ".git", "runs", "bench", ".venv/lib/python3.11/site-packages/torch"):
        assert ignored(big), f"{big} must not be sent to the daemon"
    for pkg in ("models_store", "trainer", "service"):
        assert not ignored(f"{pkg}/__init__.py")
    assert ignored("trainer/__pycache__/cli.cpython-311.pyc")


def test_helper_scripts_are_executable_shell():
    for script in sorted((ROOT / "docker").glob("*.sh")):
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
        subprocess.run([shell, "-n", str(script)], check=True)


def test_trainer_script_is_in_the_image_and_idempotent():
    copied = [r for w, r in final_stage() if w == "COPY" and "entrypoint-trainer.sh" in r]
    assert copied, "the final image must contain the trainer entrypoint"
    text = TRAINER_SCRIPT.read_text()
    assert "manifest.json" in text and "PMERGE_STORE" in text
    assert "pmerge zoo --demo" in text and "pmerge train" in text
    assert re.search(r"^set -[a-z]*e", text, re.M), "the trainer must fail loudly (set -e)"


def test_trainer_script_skips_when_a_family_exists(tmp_path):
    """Run the real script with a fake `pmerge` on PATH: no training when a family is there."""
    store, zoo, bin_ = tmp_path / "families", tmp_path / "zoo", tmp_path / "bin"
    (store / "fam1").mkdir(parents=True)
    (store / "fam1" / "manifest.json").write_text("{}")
    bin_.mkdir()
    log = tmp_path / "calls"
    fake = bin_ / "pmerge"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PMERGE_STORE": str(store),
           "PMERGE_ZOO": str(zoo)}
    subprocess.run(["sh", str(TRAINER_SCRIPT)], env=env, check=True, capture_output=True)
    assert not log.exists(), "trainer ran pmerge although a family exists"

    # empty store: builds the zoo then trains; a fake train that publishes nothing is an error
    (store / "fam1" / "manifest.json").unlink()
    r = subprocess.run(["sh", str(TRAINER_SCRIPT)], env=env, capture_output=True, text=True)
    calls = log.read_text().splitlines()
    assert calls[0].startswith("zoo --demo --out " + str(zoo))
    assert calls[1].startswith(f"train --zoo {zoo} --store {store}")
    assert r.returncode != 0, "a train that published no family must fail the trainer"
    # PMERGE_TRAIN_ARGS may name the learner: it comes first, as `pmerge train LEARNER` wants it
    log.unlink()
    subprocess.run(["sh", str(TRAINER_SCRIPT)], env=env | {"PMERGE_TRAIN_ARGS": "map --budget 20"}, capture_output=True)
    assert log.read_text().splitlines()[-1] == f"train map --budget 20 --zoo {zoo} --store {store}"


# ---- docker-compose.yml -----------------------------------------------------------------------

def test_two_services_from_one_image(compose):
    assert "version" not in compose or str(compose["version"]).startswith("3")
    services = compose["services"]
    assert set(services) == {"trainer", "service"}
    images = {s["image"] for s in services.values()}
    assert len(images) == 1, "trainer and service must run the same image"
    for svc in services.values():
        build = svc["build"]
        assert build["context"] == "." and build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert re.fullmatch(r"\$\{BASE_IMAGE:-[^}]+\}", build["args"]["BASE_IMAGE"])


def test_shared_store_volume(compose):
    assert "store" in compose["volumes"]
    store_paths = {env_dict(s)["PMERGE_STORE"] for s in compose["services"].values()}
    assert len(store_paths) == 1, "the service must read where the trainer writes"
    (store_path,) = store_paths
    for name, svc in compose["services"].items():
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in svc["volumes"]]
        assert any(m.split(":")[:2] == ["store", "/store"] for m in mounts), f"{name}: store:/store"
        assert store_path.startswith("/store")
    assert env_dict(compose["services"]["service"])["PMERGE_STORE"] == env_of(final_stage())["PMERGE_STORE"], \
        "the image's default PMERGE_STORE and compose's must agree"


def test_service_waits_for_trainer_success(compose):
    dep = compose["services"]["service"]["depends_on"]
    assert isinstance(dep, dict), "long-form depends_on with a condition"
    assert dep["trainer"]["condition"] == "service_completed_successfully"
    assert compose["services"]["trainer"]["restart"] == "no"
    assert compose["services"]["service"]["restart"] in ("unless-stopped", "always")


def test_trainer_runs_the_bootstrap_script(compose):
    cmd = compose["services"]["trainer"]["command"]
    cmd = cmd if isinstance(cmd, list) else shlex.split(cmd)
    target = [r for w, r in final_stage() if w == "COPY" and "entrypoint-trainer.sh" in r][0].split()[-1]
    assert cmd[0] in (target, Path(target).name)
    assert compose["services"]["trainer"].get("healthcheck", {}).get("disable") is True


def test_service_port_and_healthcheck(compose):
    svc = compose["services"]["service"]
    targets = [int(str(p).rsplit(":", 1)[-1]) if not isinstance(p, dict) else int(p["target"])
               for p in svc["ports"]]
    assert PORT in targets
    test = svc["healthcheck"]["test"]
    test = " ".join(test) if isinstance(test, list) else test
    assert f"127.0.0.1:{PORT}/healthz" in test or f"localhost:{PORT}/healthz" in test
    cmd = svc.get("command")
    if cmd:
        assert cmd[:2] == ["pmerge", "serve"] and str(PORT) in cmd


def test_the_service_has_room_for_its_shared_memory(compose):
    """Docker gives a container 64 MiB of /dev/shm; the front ends' arenas take PMERGE_SHARED_MEMORY_BYTES."""
    from service.settings import Settings
    size = str(compose["services"]["service"]["shm_size"]).lower()
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    nbytes = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    assert nbytes >= Settings.fields()["shared_memory_bytes"].default + (64 << 20)


def test_a_stop_leaves_the_service_time_to_drain(compose):
    """docker stop and a Kubernetes rollout send SIGTERM, then SIGKILL after a grace period (docker's
    default 10 s): it must outlast the drain, or requests in flight are cut."""
    from service.runtime.processes import DRAIN_S
    grace = str(compose["services"]["service"]["stop_grace_period"])
    assert grace.endswith("s") and int(grace[:-1]) > DRAIN_S
    kserve = yaml.safe_load((ROOT / "kserve" / "inferenceservice.yaml").read_text())
    assert kserve["spec"]["predictor"]["terminationGracePeriodSeconds"] > DRAIN_S


def test_api_key_is_passed_through_not_hard_coded(compose):
    env = env_dict(compose["services"]["service"])
    assert "PMERGE_API_KEY" in env
    value = env["PMERGE_API_KEY"]
    assert value is None or re.fullmatch(r"\$\{PMERGE_API_KEY(:?-)?\}", value), value


def test_gpu_is_optional(compose, compose_gpu):
    """A GPU reservation makes `up` fail on a host without the nvidia runtime; it lives in an override."""
    for name, svc in compose["services"].items():
        assert "devices" not in str(svc.get("deploy", {})), f"{name}: GPU reservation in the base file"
    devices = compose_gpu["services"]["service"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert set(compose_gpu["services"]) <= set(compose["services"])


# ---- kserve/inferenceservice.yaml ----------------------------------------------------------------

def test_the_kserve_inferenceservice_runs_the_service_on_its_port_with_its_probes():
    """A custom predictor: the image's `pmerge serve` on the port KServe routes to, probed on the
    protocol's health routes, its environment pmerge settings, a GPU, the store and shared memory."""
    from service.settings import Settings
    service = yaml.safe_load((ROOT / "kserve" / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    predictor = service["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # the name KServe routes a custom predictor's traffic to
    command = container["command"]
    assert command[:2] == ["pmerge", "serve"]
    port = int(command[command.index("--port") + 1])
    assert container["ports"] == [{"containerPort": port, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    settings = {f"PMERGE_{name.upper()}" for name in Settings.fields()}
    assert {e["name"] for e in container["env"]} <= settings
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert set(mounts) == set(volumes) and mounts["shm"] == "/dev/shm"
    store = next(e["value"] for e in container["env"] if e["name"] == "PMERGE_STORE")
    assert store.startswith(mounts["store"] + "/") and volumes["store"]["persistentVolumeClaim"]["claimName"]


def kserve_object(data, type_name: str):
    """`data` as the kserve SDK's model `type_name`: kserve's own models for its resources, the
    kubernetes client's for the pod spec inside; a key either does not know is an error."""
    import json as json_

    import kserve.models
    import kubernetes.client
    if data is None:
        return None
    if type_name.startswith("list["):
        return [kserve_object(x, type_name[5:-1]) for x in data]
    if type_name.startswith("dict("):
        value_type = type_name[5:-1].split(", ", 1)[1]
        return {k: kserve_object(v, value_type) for k, v in data.items()}
    model = getattr(kserve.models, type_name, None)
    if model is not None and hasattr(model, "openapi_types"):
        fields = {model.attribute_map[a]: a for a in model.openapi_types}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"{type_name} has no field {', '.join(unknown)}")
        return model(**{fields[k]: kserve_object(v, model.openapi_types[fields[k]]) for k, v in data.items()})
    if hasattr(kubernetes.client, type_name):
        client = kubernetes.client.ApiClient()
        built = client.deserialize(json_.dumps(data), type_name, "application/json")
        if client.sanitize_for_serialization(built) != data:  # the client drops what it does not know
            raise ValueError(f"{type_name} does not keep {data}: a field it does not have, or a wrong type")
        return built
    return data


def test_the_kserve_inferenceservice_is_one_for_the_kserve_sdk():
    service = yaml.safe_load((ROOT / "kserve" / "inferenceservice.yaml").read_text())
    built = kserve_object(service, "V1beta1InferenceService")
    container = built.spec.predictor.containers[0]
    assert type(container).__name__ == "V1Container" and container.readiness_probe.http_get.path == "/v2/health/ready"
    assert built.spec.predictor.volumes[1].empty_dir.medium == "Memory"
    misspelled = yaml.safe_load((ROOT / "kserve" / "inferenceservice.yaml").read_text().replace("volumeMounts",
                                                                                                 "volumeMount"))
    with pytest.raises(ValueError, match="V1Container does not keep .*volumeMount"):  # the check sees a typo
        kserve_object(misspelled, "V1beta1InferenceService")
    with pytest.raises(ValueError, match="V1beta1PredictorSpec has no field replicas"):
        kserve_object({**service, "spec": {"predictor": {"replicas": 2}}}, "V1beta1InferenceService")
