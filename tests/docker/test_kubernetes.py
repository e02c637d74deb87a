"""Kubernetes manifests (deploy/kubernetes): every overlay renders with `kubectl kustomize`, and every built-in
resource validates against the Kubernetes API schemas (kubernetes-validate, strict). KEDA's custom resources have no
schema there, so their fields are checked against the code instead: the triggers watch the streams the queue
writes and count the jobs the store holds. The pods run CLI commands that parse, from images built in docker/, as
the images' non-root user on a read-only root filesystem with every path they write mounted."""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from procs import ROOT

from nograd.cli import build_parser
from nograd.cli.service import cmd_db
from nograd.service.queue._redis import stream_key

KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.30"  # the oldest release the manifests are for
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}  # keda.sh custom resources: no schema to validate against
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
NO_PROBES = {"nograd-runner": "no port or heartbeat file; a hung runner's jobs move on when its leases expire"}
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        pytest.fail(f"{name} is not installed; `pip install -e '.[test]'` installs it")
    return path


@functools.cache
def _rendered(overlay: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [_tool("kubectl"), "kustomize", str(KUBE / "overlays" / overlay)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[dict]:
    """The overlay's resources (a fresh copy: tests may change them)."""
    return copy.deepcopy(list(_rendered(overlay)))


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pods(docs: list[dict]) -> list[tuple[dict, dict]]:
    """(workload, pod spec) of every Deployment, StatefulSet and Job."""
    return [(d, d["spec"]["template"]["spec"]) for d in docs if d["kind"] in WORKLOADS]


def containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec["containers"]


def config(docs: list[dict]) -> dict[str, str]:
    (data,) = [d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("nograd-")]
    return data


def environment(container: dict, docs: list[dict]) -> dict:
    """The container's variables: plain values as strings, Secret references as ("secret", name, key)."""
    maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    env = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        env[var["name"]] = ("secret", ref["name"], ref["key"]) if ref else var.get("value")
    return env


def argv(container: dict, docs: list[dict]) -> list[str]:
    """command + args with $(VAR) expanded as the kubelet does."""
    env = environment(container, docs)
    words = container.get("command", []) + container.get("args", [])
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], word) for word in words]


def is_nograd(container: dict) -> bool:
    return _image_name(container["image"]).startswith("nograd-")


def _image_name(image: str) -> str:
    return image.rsplit("/", 1)[-1].split(":")[0]


def test_the_overlays():
    assert OVERLAYS == ["cpu", "external-postgres", "gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_built_in_resource_validates(overlay):
    docs = render(overlay)
    for doc in docs:
        if doc["kind"] in KEDA_KINDS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget"} <= kinds
    assert "ScaledObject" in kinds
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"nograd"}


def test_the_validator_refuses_what_kubernetes_would():
    api = named(render("gpu"), "Deployment")["nograd-api"]
    api["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES_VERSION, strict=True)


def test_the_secret_template_has_every_key_the_manifests_read():
    import psycopg.conninfo
    from sqlalchemy.engine import make_url

    secret = yaml.safe_load((KUBE / "secret.example.yaml").read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    keys = set(secret["stringData"])
    for overlay in OVERLAYS:
        docs = render(overlay)
        refs = {v for _, spec in pods(docs) for c in containers(spec) for v in environment(c, docs).values()}
        refs = {ref for ref in refs if isinstance(ref, tuple)}
        refs |= {("secret", r["name"], r["key"]) for d in docs if d["kind"] == "TriggerAuthentication"
                 for r in d["spec"]["secretTargetRef"]}  # fmt: skip
        assert {name for _, name, _ in refs} == {secret["metadata"]["name"]}, overlay
        assert {key for _, _, key in refs} <= keys, overlay
    # Both URLs name the in-cluster database: nograd's from the namespace, KEDA's from its own.
    database = make_url(secret["stringData"]["database-url"])
    keda = psycopg.conninfo.conninfo_to_dict(secret["stringData"]["keda-postgres-connection"])
    assert database.drivername == "postgresql+psycopg" and database.host in named(render("gpu"), "Service")
    assert keda["host"] == f"{database.host}.{secret['metadata']['namespace']}.svc"
    assert (keda["user"], keda["dbname"], int(keda["port"])) == (database.username, database.database, database.port)


def _redis_triggers(scaled: dict) -> list[dict]:
    return [t["metadata"] for t in scaled["spec"]["triggers"] if t["type"] == "redis-streams"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_watches_the_streams_the_workers_read(overlay):
    docs = render(overlay)
    deployments, services, settings = named(docs, "Deployment"), named(docs, "Service"), config(docs)
    redis = urlsplit(settings["NOGRAD_REDIS_URL"])
    (namespace,) = {d["metadata"]["namespace"] for d in docs if d["kind"] == "ScaledObject"}
    scaled_objects = named(docs, "ScaledObject")
    assert set(scaled_objects) == {name for name in deployments if "worker" in name}
    for name, scaled in scaled_objects.items():
        assert scaled["spec"]["scaleTargetRef"]["name"] == name  # each worker Deployment has its own
        (worker,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        models = build_parser().parse_args(argv(worker, docs)[1:]).model
        triggers = _redis_triggers(scaled)
        streams = sorted(stream_key(model, settings["NOGRAD_NAMESPACE"]) for model in models)
        assert sorted(t["stream"] for t in triggers) == streams
        for trigger in triggers:
            # KEDA's operator is in another namespace: the Service the workers use, qualified with this one.
            assert trigger["address"] == f"{redis.hostname}.{namespace}.svc:{redis.port}"
            assert services[redis.hostname]["spec"]["ports"][0]["port"] == redis.port
            # streamLength mode (XLEN: batches waiting or in progress); a consumerGroup would switch KEDA to
            # pendingEntriesCount, which never exceeds the number of workers (see the test below).
            assert "consumerGroup" not in trigger and int(trigger["streamLength"]) >= 1


@pytest.mark.redis
def test_stream_length_counts_batches_waiting_and_in_progress(redis_server):
    """What the redis-streams triggers read, on the queue itself: the key `stream_key` names holds every batch
    until its result is written; the group's pending entries are only those held by a worker (one each)."""
    import asyncio

    import redis

    from nograd.service.queue import Batch, BatchResult, RedisQueue

    namespace, model = f"t{uuid.uuid4().hex[:8]}", "smollm2-135m"
    stream, raw = stream_key(model, namespace), redis.Redis.from_url(redis_server.url)

    async def scenario():
        queue = RedisQueue(redis_server.url, namespace=namespace)
        batches = [Batch(id=f"b{i}", job_id="job_1", generation=i, model=model, context="c", work={}) for i in range(3)]
        await queue.submit(batches)
        delivery = await queue.take("w1", [model], timeout=1)
        assert (raw.xlen(stream), raw.xpending(stream, "workers")["pending"]) == (3, 1)
        await queue.finish(delivery, BatchResult(batch_id=delivery.batch.id, ok=True, data={}))
        assert (raw.xlen(stream), raw.xpending(stream, "workers")["pending"]) == (2, 0)
        await queue.close()

    try:
        asyncio.run(scenario())
    finally:
        raw.close()


def test_gpu_workers_wake_from_zero_on_their_models_jobs(store):
    """The postgresql trigger's query, run on the real schema (SQLite and PostgreSQL): queued and running jobs of
    the workers' model count, finished ones and other models' do not."""
    import sqlalchemy as sa

    docs = render("gpu")
    scaled = named(docs, "ScaledObject")["nograd-worker-gpu"]
    assert scaled["spec"]["minReplicaCount"] == 0 and scaled["spec"]["cooldownPeriod"] >= 60
    (trigger,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "postgresql"]
    auth = named(docs, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert [r["parameter"] for r in auth["spec"]["secretTargetRef"]] == ["connection"]
    assert "model = 'smollm2-135m'" in trigger["metadata"]["query"]

    def job(model: str, status: str) -> None:
        row = store.create_job(tenant="t", method="bbt", task="sst2", dataset_id=None, model=model, config={}, budget=1)
        with store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE jobs SET status = :s WHERE id = :id"), {"s": status, "id": row["id"]})

    for model, status in [("smollm2-135m", "queued"), ("smollm2-135m", "running"), ("smollm2-135m", "succeeded")]:
        job(model, status)
    job("openai:gpt-4o-mini", "running")
    with store.engine.connect() as conn:
        assert conn.execute(sa.text(trigger["metadata"]["query"])).scalar() == 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_has_its_workers_and_database(overlay):
    docs = render(overlay)
    workers = {name: d for name, d in named(docs, "Deployment").items() if "worker" in name}
    assert set(workers) == {"nograd-worker-cpu" if overlay == "cpu" else "nograd-worker-gpu"}
    assert ("nograd-postgres" in named(docs, "StatefulSet")) == (overlay != "external-postgres")
    for name, deployment in workers.items():
        assert "replicas" not in deployment["spec"]  # KEDA's HPA owns the count
        spec = deployment["spec"]["template"]["spec"]
        (worker,) = spec["containers"]
        gpus = worker["resources"]["limits"].get("nvidia.com/gpu")
        device = environment(worker, docs)["NOGRAD_DEVICE"]
        if name.endswith("gpu"):
            assert gpus == 1 and device == "cuda" and spec["nodeSelector"]
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        else:
            assert gpus is None and device == "cpu"
    (scaled,) = named(docs, "ScaledObject").values()
    assert scaled["spec"]["minReplicaCount"] == (1 if overlay == "cpu" else 0)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_non_root_and_read_only(overlay):
    for workload, spec in pods(render(overlay)):
        where = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged"), (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), (where, c["name"])
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), (where, c["name"])
            assert "memory" in c["resources"]["limits"], (where, c["name"])


def _mounts(container: dict) -> set[str]:
    return {m["mountPath"] for m in container.get("volumeMounts", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_nograd_writes_is_mounted(overlay):
    """Read-only root filesystems: /tmp, the user's home, the data folder and the heartbeat file are volumes."""
    docs = render(overlay)
    for workload, spec in pods(docs):
        for c in filter(is_nograd, containers(spec)):
            env, mounts = environment(c, docs), _mounts(c)
            assert {"/tmp", "/home/nograd"} <= mounts, (workload["metadata"]["name"], c["name"])
            if "worker" in argv(c, docs):
                assert str(Path(env["NOGRAD_HEARTBEAT_FILE"]).parent) in mounts
            else:
                assert env["NOGRAD_DATA_DIR"] in mounts


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay, tmp_path):
    docs = render(overlay)
    for workload, spec in pods(docs):
        name = workload["metadata"]["name"]
        for c in spec["containers"]:
            if name in NO_PROBES:
                assert not any(k in c for k in ("livenessProbe", "readinessProbe")), name
                continue
            assert "livenessProbe" in c and "readinessProbe" in c, name
            if name == "nograd-api":
                ports = {p["name"] for p in c["ports"]}
                assert (c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]) == (
                    "/livez",
                    "/readyz",
                )
                assert {c["livenessProbe"]["httpGet"]["port"], c["readinessProbe"]["httpGet"]["port"]} <= ports
            if "worker" in name:  # the heartbeat check, run here on a fresh and on a missing file
                heartbeat = environment(c, docs)["NOGRAD_HEARTBEAT_FILE"]
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    command = c[probe]["exec"]["command"]
                    assert command[:3] == ["python", "-m", "nograd.service.healthcheck"] and command[3] == heartbeat
                    fresh = tmp_path / "beat"
                    fresh.touch()
                    run = [sys.executable, *command[1:3], str(fresh), command[4]]
                    assert subprocess.run(run, capture_output=True).returncode == 0
                    run[3] = str(tmp_path / "missing")
                    assert subprocess.run(run, capture_output=True).returncode == 1
                assert {p["containerPort"] for p in c["ports"]} == {int(config(docs)["NOGRAD_WORKER_METRICS_PORT"])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_are_the_clis_and_migrations_run_first(overlay):
    docs = render(overlay)
    deployments, settings = named(docs, "Deployment"), config(docs)
    parser = build_parser()
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        (main,) = spec["containers"]
        args = parser.parse_args(argv(main, docs)[1:])
        if name == "nograd-api":
            assert args.command == "serve" and args.no_embedded_worker and args.no_run_jobs
        elif name == "nograd-runner":
            assert args.command == "runner" and args.redis_url == settings["NOGRAD_REDIS_URL"]
        else:
            assert args.command == "worker" and args.model
        if name in ("nograd-api", "nograd-runner"):  # both refuse an older schema: the upgrade runs before them
            (migrate,) = spec["initContainers"]
            assert migrate["command"] == ["nograd", "db", "upgrade"] and migrate["image"] == main["image"]
            assert parser.parse_args(migrate["command"][1:]).func is cmd_db
            url = environment(main, docs)["NOGRAD_DATABASE_URL"]
            assert url[0] == "secret" and environment(migrate, docs)["NOGRAD_DATABASE_URL"] == url


def test_the_migration_init_container_creates_and_upgrades_the_database(tmp_path):
    """Its command with the environment the manifest gives it (SQLite standing in for PostgreSQL): the schema is at
    head afterwards, and a second run (the next pod's) is a no-op."""
    docs = render("gpu")
    (migrate,) = named(docs, "Deployment")["nograd-api"]["spec"]["template"]["spec"]["initContainers"]
    env = {k: v for k, v in environment(migrate, docs).items() if isinstance(v, str)}
    env |= {"NOGRAD_DATABASE_URL": f"sqlite:///{tmp_path / 'nograd.db'}", "NOGRAD_DATA_DIR": str(tmp_path)}
    env |= {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(tmp_path)}
    for _ in range(2):
        result = subprocess.run(argv(migrate, docs), env=env, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
    assert "already" in result.stdout
    current = subprocess.run(["nograd", "db", "current"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert current.returncode == 0, current.stdout + current.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_settings(overlay):
    """Every NOGRAD_* variable the manifests set is a field of `Settings` (a misspelt one would be ignored)."""
    from nograd.service.settings import Settings

    docs = render(overlay)
    names = {k for _, spec in pods(docs) for c in containers(spec) for k in environment(c, docs)}
    fields = {f"NOGRAD_{name.upper()}" for name in Settings.model_fields} | {"NOGRAD_HEARTBEAT_FILE"}  # a CLI default
    assert {n for n in names if n.startswith("NOGRAD_")} <= fields


def _compose_images() -> tuple[dict[str, Path], set[str]]:
    """docker-compose.yml's nograd images (name -> Dockerfile) and the other images it runs."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    built = {s["image"].split(":")[0]: ROOT / s["build"]["dockerfile"] for s in services.values() if "build" in s}
    return built, {s["image"] for s in services.values() if "build" not in s}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_ones_docker_builds(overlay):
    built, others = _compose_images()
    for workload, spec in pods(render(overlay)):
        for c in containers(spec):
            if not is_nograd(c):
                assert c["image"] in others, c["image"]  # the Compose file's Redis and PostgreSQL
                continue
            dockerfile = built[_image_name(c["image"])]
            users = re.findall(r"^USER (\S+)", dockerfile.read_text(), re.M)
            assert dockerfile.exists() and spec["securityContext"]["runAsUser"] == int(users[-1]), dockerfile
            if workload["metadata"]["name"] == "nograd-worker-gpu":
                assert dockerfile.name == "worker-cuda.Dockerfile"


def test_redis_keeps_its_append_only_file_on_a_volume():
    redis = named(render("gpu"), "StatefulSet")["nograd-redis"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "always"
    claims = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    data_dir = args[args.index("--dir") + 1]
    assert any(m["mountPath"] == data_dir and m["name"] in claims for m in container["volumeMounts"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget_and_the_api_a_service(overlay):
    docs = render(overlay)
    budgets = [b["spec"]["selector"]["matchLabels"] for b in named(docs, "PodDisruptionBudget").values()]
    for name, deployment in named(docs, "Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert sum(all(labels.get(k) == v for k, v in b.items()) for b in budgets) == 1, name
    api = named(docs, "Service")["nograd-api"]
    pod = named(docs, "Deployment")["nograd-api"]["spec"]["template"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in api["spec"]["selector"].items())
    assert {p["targetPort"] for p in api["spec"]["ports"]} <= {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
