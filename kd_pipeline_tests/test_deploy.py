"""deploy/ (the cluster deployment) against the installed dagster, dagster-k8s and
dagster-postgres, so a key the libraries do not know or a value of the wrong type fails here,
not at `helm upgrade` or in the first run pod.

- `deploy/dagster-instance.yaml` goes through Dagster's own instance loader (the schema of
  dagster.yaml), then the storage, run coordinator and run launcher sections through the
  config schema of the class each names (dagster-postgres, dagster-k8s);
- `deploy/helm-values.yaml` is turned into what the official chart makes of it (the parts of
  its dagster.yaml template and of its user-deployment container context this project sets),
  and that goes through the same loaders; a real `K8sRunLauncher` is then built from it and
  the Kubernetes Job of one run is assembled by dagster-k8s, so the test reads the run pod's
  image, resources, environment and secrets as the cluster would get them;
- `deploy/Dockerfile` installs the package, runs as a non-root user and serves the code
  location on the port and module the Helm values name (read from the values, not repeated).
Each file has refused cases (a misspelled key, a wrong type), so the checks can fail.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
import yaml
from dagster import DagsterInvalidConfigError
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.instance.ref import InstanceRef
from dagster._core.launcher import RunLauncher
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._serdes import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job
from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import pg_url_from_config
from kubernetes.client import V1Job
from kubernetes.utils import parse_quantity

from kd_pipeline import settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
INSTANCE_FILE = DEPLOY / "dagster-instance.yaml"
HELM_VALUES = DEPLOY / "helm-values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"

RELEASE = "dagster"  # `helm upgrade --install dagster ...`
NAMESPACE = "kd-pipeline"  # `--namespace kd-pipeline`

# What the instance file reads from the environment, as a machine of the deployment has it.
INSTANCE_ENV = {
    "DAGSTER_PG_HOST": "dagster.db.example.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_DB": "dagster",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_K8S_INSTANCE_CONFIG_MAP": "dagster-instance",
    "DAGSTER_K8S_PG_PASSWORD_SECRET": "dagster-postgresql-secret",
    "DAGSTER_K8S_JOB_NAMESPACE": NAMESPACE,
}


# --------------------------------------------------------------------------- instance files


def class_config_problems(data: ConfigurableClassData | None) -> list[str]:
    """The errors of one configurable section of an instance (storage, run launcher, run
    coordinator) against the config schema of the class it names (`config_type()`), with
    `env:` values resolved from the environment; [] when the class accepts it."""
    if data is None:
        return []
    klass = getattr(importlib.import_module(data.module_name), data.class_name, None)
    if klass is None:
        return [f"{data.module_name} has no class {data.class_name}"]
    result = process_config(klass.config_type(), yaml.safe_load(data.config_yaml) or {})
    if result.success:
        return []
    return [f"{data.class_name}: {error.message}" for error in result.errors]


def load_instance_ref(config: Mapping[str, Any], home: Path) -> InstanceRef:
    """`config` written as `home/dagster.yaml` and loaded by Dagster's instance loader (the
    dagster.yaml schema, storage and concurrency rules); DagsterInvalidConfigError if refused."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(dict(config)))
    return InstanceRef.from_dir(str(home))


def instance_problems(config: Mapping[str, Any], home: Path) -> list[str]:
    """Every reason the deployment's Dagster would refuse this dagster.yaml: the instance
    schema first, then each storage / launcher / coordinator section against its class."""
    try:
        ref = load_instance_ref(config, home)
    except DagsterInvalidConfigError as error:
        return [str(error)]
    sections = (
        ref.storage_data,
        ref.run_storage_data,
        ref.event_storage_data,
        ref.schedule_storage_data,
        ref.run_coordinator_data,
        ref.run_launcher_data,
    )
    return [problem for data in sections for problem in class_config_problems(data)]


@pytest.fixture
def instance_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)
    return INSTANCE_ENV


def instance_file() -> dict[str, Any]:
    return yaml.safe_load(INSTANCE_FILE.read_text())


def test_instance_file_is_accepted_by_dagster_dagster_k8s_and_dagster_postgres(
    instance_env: dict[str, str], tmp_path: Path
) -> None:
    assert instance_problems(instance_file(), tmp_path / "home") == []
    ref = load_instance_ref(instance_file(), tmp_path / "home")
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == (
        "dagster_postgres",
        "DagsterPostgresStorage",
    )
    assert ref.run_launcher_data is not None
    assert ref.run_launcher_data.class_name == "K8sRunLauncher"
    assert ref.run_coordinator_data is not None
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    # the storage reaches the database named by the environment, not one written in the file
    storage = process_config(
        DagsterPostgresStorage.config_type(), yaml.safe_load(ref.storage_data.config_yaml)
    )
    postgres_db = storage.value["postgres_db"]
    assert (postgres_db["hostname"], postgres_db["port"], postgres_db["password"]) == (
        instance_env["DAGSTER_PG_HOST"],
        int(instance_env["DAGSTER_PG_PORT"]),
        instance_env["DAGSTER_PG_PASSWORD"],
    )
    concurrency = ref.settings["concurrency"]
    assert concurrency["runs"]["max_concurrent_runs"] >= 1
    assert concurrency["pools"]["default_limit"] >= 1


def storage_driver(storage_config: Mapping[str, Any]) -> str:
    """The DB-API driver SQLAlchemy loads for a dagster-postgres storage config: the URL
    dagster-postgres builds from it, turned into an engine (which imports the driver and
    connects to nothing). ModuleNotFoundError when that driver is not installed."""
    value = process_config(DagsterPostgresStorage.config_type(), dict(storage_config)).value
    return sqlalchemy.create_engine(pg_url_from_config(value)).dialect.driver


def test_storage_names_the_driver_dagster_postgres_installs(
    instance_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, which dagster-postgres does
    not bring: the storage, in both files, names psycopg2."""
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "set-by-the-chart-from-its-secret")
    assert storage_driver(instance_file()["storage"]["postgres"]) == "psycopg2"
    assert storage_driver(helm_postgres_config(helm_values())) == "psycopg2"
    other = instance_file()["storage"]["postgres"]
    other["postgres_db"]["scheme"] = "postgresql+pg8000"  # a driver no one installed
    with pytest.raises(ModuleNotFoundError):
        storage_driver(other)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a config: the key at the dotted `path` set to `value`."""

    def change(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            config = config[key]
        config[last] = value

    return change


def _rename(path: str, new_name: str) -> Callable[[dict[str, Any]], None]:
    """A change to a config: the key at the dotted `path` renamed (a misspelling)."""

    def change(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for key in parents:
            config = config[key]
        config[new_name] = config.pop(last)

    return change


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_rename("storage.postgres.postgres_db.hostname", "hostnme"), "hostnme"),
        (_set("storage.postgres.postgres_db.port", "five"), "port"),
        (_rename("concurrency.runs.max_concurrent_runs", "max_concurent_runs"), "max_concurent"),
        (_set("concurrency.runs.max_concurrent_runs", "eight"), "max_concurrent_runs"),
        (_set("concurrency.pools.granularity", "partition"), "granularity"),
        (_rename("run_launcher.config.job_namespace", "job_namspace"), "job_namspace"),
        (_set("run_launcher.config.resources", "2 cpu"), "resources"),
        (_set("run_launcher.config.env_secrets", "kd-pipeline-secrets"), "env_secrets"),
        (_set("run_launcher.config.load_incluster_config", "yes"), "load_incluster_config"),
        (_set("run_launcher.class", "K8sRunLaunchr"), "K8sRunLaunchr"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_instance_file_with_a_misspelled_key_or_wrong_type_is_refused(
    instance_env: dict[str, str],
    tmp_path: Path,
    change: Callable[[dict[str, Any]], None],
    named: str,
) -> None:
    config = instance_file()
    change(config)
    problems = instance_problems(config, tmp_path / "home")
    assert problems, "the changed instance file was accepted"
    assert named in "\n".join(problems)


# ------------------------------------------------------------------------------ Helm values


def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text())


def _names(entries: list[Mapping[str, Any]] | None, where: str) -> list[str]:
    """`[{name: x}, ...]` (the chart's ConfigMap / Secret references) as `[x, ...]`; an entry
    without `name` is refused as the chart's values schema refuses it."""
    names = []
    for entry in entries or []:
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValueError(f"helm-values.yaml: {where}: {entry!r} has no `name`")
        names.append(entry["name"])
    return names


def _image(image: Mapping[str, Any]) -> str:
    return f"{image['repository']}:{image['tag']}"


# chart key -> K8sRunLauncher field, as templates/helpers/instance/_run-launcher.tpl maps them
HELM_RUN_LAUNCHER_KEYS = {
    "loadInclusterConfig": "load_incluster_config",
    "kubeconfigFile": "kubeconfig_file",
    "jobNamespace": "job_namespace",
    "imagePullPolicy": "image_pull_policy",
    "envVars": "env_vars",
    "volumeMounts": "volume_mounts",
    "volumes": "volumes",
    "labels": "labels",
    "resources": "resources",
    "failPodOnRunFailure": "fail_pod_on_run_failure",
    "schedulerName": "scheduler_name",
    "securityContext": "security_context",
}
HELM_RUN_K8S_CONFIG_KEYS = {
    "containerConfig": "container_config",
    "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata",
    "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}
HELM_NAME_LISTS = {"envConfigMaps": "env_config_maps", "envSecrets": "env_secrets"}


def helm_run_launcher_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The `run_launcher.config` the chart writes into its dagster.yaml for
    `runLauncher.config.k8sRunLauncher`: camelCase keys to dagster-k8s fields, `{name: x}`
    lists to names, plus what the chart adds itself (namespace default, service account,
    DAGSTER_HOME, instance ConfigMap, PostgreSQL password Secret, image pull secrets).
    A key the chart does not have is refused (its values schema forbids extra keys)."""
    if values["runLauncher"]["type"] != "K8sRunLauncher":
        raise ValueError("helm-values.yaml: runLauncher.type: expected K8sRunLauncher")
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    global_ = values.get("global", {})
    config: dict[str, Any] = {
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "service_account_name": global_.get("serviceAccountName") or RELEASE,
        "dagster_home": global_.get("dagsterHome", "/opt/dagster/dagster_home"),
        "instance_config_map": f"{RELEASE}-instance",
        "postgres_password_secret": global_.get(
            "postgresqlSecretName", "dagster-postgresql-secret"
        ),
    }
    if values.get("imagePullSecrets"):
        config["image_pull_secrets"] = values["imagePullSecrets"]
    for key, value in launcher.items():
        if key in HELM_RUN_LAUNCHER_KEYS:
            if value is not None and key != "jobNamespace":
                config[HELM_RUN_LAUNCHER_KEYS[key]] = value
        elif key in HELM_NAME_LISTS:
            config[HELM_NAME_LISTS[key]] = _names(value, f"k8sRunLauncher.{key}")
        elif key == "image":
            config["job_image"] = _image(value)
        elif key == "runK8sConfig":
            unknown = set(value) - set(HELM_RUN_K8S_CONFIG_KEYS)
            if unknown:
                raise ValueError(f"helm-values.yaml: runK8sConfig: unknown key(s) {unknown}")
            config["run_k8s_config"] = {HELM_RUN_K8S_CONFIG_KEYS[k]: v for k, v in value.items()}
        else:
            raise ValueError(
                f"helm-values.yaml: runLauncher.config.k8sRunLauncher.{key}: not a key of the chart"
            )
    return config


def helm_postgres_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The storage config the chart writes for `postgresql` (templates/helpers/instance/
    _postgresql.tpl): the password from DAGSTER_PG_PASSWORD, which the chart sets from its
    PostgreSQL Secret."""
    postgresql = values["postgresql"]
    postgres_db = {
        "username": postgresql["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": postgresql["postgresqlHost"],
        "db_name": postgresql["postgresqlDatabase"],
        "port": postgresql["service"]["port"],
        "params": postgresql.get("postgresqlParams", {}),
    }
    if postgresql.get("postgresqlScheme"):
        postgres_db["scheme"] = postgresql["postgresqlScheme"]
    return {"postgres_db": postgres_db}


# chart key -> instance key under `concurrency` (templates/helpers/instance/_concurrency.tpl)
HELM_CONCURRENCY_KEYS = {
    "pools": {
        "defaultLimit": "default_limit",
        "granularity": "granularity",
        "opGranularityRunBuffer": "op_granularity_run_buffer",
    },
    "runs": {
        "maxConcurrentRuns": "max_concurrent_runs",
        "tagConcurrencyLimits": "tag_concurrency_limits",
    },
}
HELM_QUEUED_RUN_COORDINATOR_KEYS = {
    "maxConcurrentRuns": "max_concurrent_runs",
    "tagConcurrencyLimits": "tag_concurrency_limits",
    "dequeueIntervalSeconds": "dequeue_interval_seconds",
    "dequeueUseThreads": "dequeue_use_threads",
    "dequeueNumWorkers": "dequeue_num_workers",
}


def _mapped(section: Mapping[str, Any], keys: Mapping[str, str], where: str) -> dict[str, Any]:
    unknown = set(section) - set(keys)
    if unknown:
        raise ValueError(f"helm-values.yaml: {where}: not a key of the chart: {sorted(unknown)}")
    return {keys[key]: value for key, value in section.items() if value is not None}


def helm_instance_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The dagster.yaml the chart renders from these values (templates/configmap-instance.yaml),
    for the sections this project sets: PostgreSQL storage, the K8sRunLauncher, the queued run
    coordinator, concurrency (runs and pools), run monitoring, telemetry."""
    storage = helm_postgres_config(values)
    config: dict[str, Any] = {
        "run_storage": {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": storage,
        },
        "event_log_storage": {
            "module": "dagster_postgres.event_log",
            "class": "PostgresEventLogStorage",
            "config": storage,
        },
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": storage,
        },
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": helm_run_launcher_config(values),
        },
        "telemetry": {"enabled": values.get("telemetry", {}).get("enabled", True)},
    }
    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    if daemon["enabled"] and coordinator["enabled"]:
        if coordinator["type"] != "QueuedRunCoordinator":
            raise ValueError("helm-values.yaml: expected the QueuedRunCoordinator")
        queued = _mapped(
            coordinator["config"].get("queuedRunCoordinator") or {},
            HELM_QUEUED_RUN_COORDINATOR_KEYS,
            "queuedRunCoordinator",
        )
        config["run_coordinator"] = {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            **({"config": queued} if queued else {}),
        }
    if daemon["enabled"] and daemon.get("runMonitoring", {}).get("enabled"):
        config["run_monitoring"] = {"enabled": True}
    concurrency = values.get("concurrency", {})
    if concurrency.get("enabled"):
        unknown = set(concurrency) - {"enabled", *HELM_CONCURRENCY_KEYS}
        if unknown:
            raise ValueError(f"helm-values.yaml: concurrency: not a key of the chart: {unknown}")
        config["concurrency"] = {
            part: _mapped(concurrency[part], keys, f"concurrency.{part}")
            for part, keys in HELM_CONCURRENCY_KEYS.items()
            if concurrency.get(part)
        }
    return config


def the_user_deployment(values: Mapping[str, Any]) -> dict[str, Any]:
    """The one code location of the values (`dagster-user-deployments.deployments[0]`)."""
    deployments = values["dagster-user-deployments"]
    assert deployments["enabled"]
    (deployment,) = deployments["deployments"]
    return deployment


def helm_container_context(values: Mapping[str, Any]) -> dict[str, Any]:
    """The container context the chart hands to every run launched from the user deployment
    (`includeConfigInLaunchedRuns`, charts/dagster-user-deployments/templates/helpers/
    _helpers.tpl): its image pull policy, env, env ConfigMaps and Secrets, resources, labels."""
    deployment = the_user_deployment(values)
    if not deployment.get("includeConfigInLaunchedRuns", {"enabled": True})["enabled"]:
        return {}
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [
            f"{RELEASE}-{deployment['name']}-user-env",
            *_names(deployment.get("envConfigMaps"), "envConfigMaps"),
        ],
        "namespace": NAMESPACE,
        "service_account_name": f"{RELEASE}-user-deployments",
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = _names(deployment["envSecrets"], "envSecrets")
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    for key in ("resources", "labels", "volumeMounts", "volumes"):
        if deployment.get(key):
            k8s[re.sub(r"([A-Z])", r"_\1", key).lower()] = deployment[key]
    return {"k8s": k8s}


KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "users": [{"name": "u", "user": {"token": "not-a-token"}}],
    "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "c",
}


@pytest.fixture
def run_launcher(tmp_path: Path) -> K8sRunLauncher:
    """The K8sRunLauncher the chart's dagster.yaml configures, built by Dagster from it; only
    the cluster credentials differ (a kubeconfig file instead of the in-cluster service
    account, as outside a pod). Nothing connects to a cluster."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    config = helm_instance_config(helm_values())["run_launcher"]
    config["config"] |= {"load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    data = ConfigurableClassData(
        config["module"], config["class"], yaml.safe_dump(config["config"])
    )
    return data.rehydrate(RunLauncher)


def run_pod_job(launcher: K8sRunLauncher, values: Mapping[str, Any]) -> V1Job:
    """The Kubernetes Job of one run of the code location, assembled as K8sRunLauncher does:
    the run launcher's settings merged with the container context the code server reports,
    the image the code server reports, dagster-k8s's Job construction."""
    deployment = the_user_deployment(values)
    origin = JobPythonOrigin(
        job_name="lighton_partitioned",
        repository_origin=RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=ModuleCodePointer("kd_pipeline.definitions", "defs", None),
            container_image=_image(deployment["image"]),
            container_context=helm_container_context(values),
        ),
    )
    run = DagsterRun(job_name="lighton_partitioned", run_id="0" * 36, job_code_origin=origin)
    context = launcher.get_container_context_for_run(run)
    return construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(
            job_image=origin.repository_origin.container_image, run_launcher=launcher
        ),
        args=["dagster", "api", "execute_run", "{}"],
        job_name="dagster-run-0",
        pod_name="dagster-run-0",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
    )


def test_helm_values_render_an_instance_dagster_k8s_and_dagster_postgres_accept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "set-by-the-chart-from-its-secret")
    config = helm_instance_config(helm_values())
    assert instance_problems(config, tmp_path / "home") == []
    launcher = config["run_launcher"]["config"]
    assert launcher["job_namespace"] == NAMESPACE
    # one run per pod, sized for one partition
    assert parse_quantity(launcher["resources"]["requests"]["cpu"]) >= 1
    assert parse_quantity(launcher["resources"]["limits"]["memory"]) >= parse_quantity("1Gi")
    ref = load_instance_ref(config, tmp_path / "home")
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"
    assert ref.settings["concurrency"]["runs"]["tag_concurrency_limits"]


def test_the_run_pod_gets_the_code_location_image_lake_settings_secret_and_resources(
    run_launcher: K8sRunLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = helm_values()
    deployment = the_user_deployment(values)
    # the container context the chart passes is one dagster-k8s accepts
    K8sContainerContext.create_from_config(helm_container_context(values))
    job = run_pod_job(run_launcher, values)
    pod = job.spec.template.spec
    (container,) = pod.containers
    assert container.image == _image(deployment["image"])
    assert container.image_pull_policy == deployment["image"]["pullPolicy"]
    launcher_resources = values["runLauncher"]["config"]["k8sRunLauncher"]["resources"]
    assert container.resources.to_dict()["requests"] == launcher_resources["requests"]
    assert container.resources.to_dict()["limits"] == launcher_resources["limits"]
    env = {var.name: var.value for var in container.env}
    assert env["KD_PIPELINE_LAKE"].startswith("s3://")
    assert env["KD_PIPELINE_CATALOG"].startswith("postgres:")
    assert "password" not in env["KD_PIPELINE_CATALOG"].lower()
    secrets = {source.secret_ref.name for source in container.env_from if source.secret_ref}
    assert set(_names(deployment["envSecrets"], "envSecrets")) <= secrets
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    # DuckDB's settings in the pod are ones kd-pipeline accepts, its memory under the limit
    monkeypatch.setenv(settings.MEMORY_LIMIT_ENV, env[settings.MEMORY_LIMIT_ENV])
    monkeypatch.setenv(settings.THREADS_ENV, env[settings.THREADS_ENV])
    # DuckDB's 6GB is 6 * 1000**3 bytes, Kubernetes' 6G the same (and 6GiB / 6Gi alike)
    duckdb_bytes = parse_quantity(settings.duckdb_memory_limit().removesuffix("B"))
    assert duckdb_bytes < parse_quantity(launcher_resources["limits"]["memory"])
    assert settings.duckdb_threads() <= parse_quantity(launcher_resources["requests"]["cpu"])


K8S = "runLauncher.config.k8sRunLauncher"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        # a key the chart does not have: refused by name, as the chart's values schema does
        (_rename(f"{K8S}.jobNamespace", "jobNamspace"), "jobNamspace"),
        (_rename("concurrency.pools.defaultLimit", "defaultLimt"), "defaultLimt"),
        # a value of the wrong type: refused by dagster-k8s / dagster-postgres / dagster
        (_set(f"{K8S}.resources", "2 cpu"), "resources"),
        (_set(f"{K8S}.loadInclusterConfig", "yes"), "load_incluster_config"),
        (_set(f"{K8S}.imagePullPolicy", ["IfNotPresent"]), "image_pull_policy"),
        (_set(f"{K8S}.envVars", "KD_PIPELINE_LAKE"), "env_vars"),
        (_set(f"{K8S}.envSecrets", [{"nme": "kd-pipeline-secrets"}]), "envSecrets"),
        (_set("postgresql.service.port", "five"), "port"),
        (_set("postgresql.postgresqlHost", ["a", "b"]), "hostname"),
        (_set("concurrency.runs.maxConcurrentRuns", "eight"), "max_concurrent_runs"),
        (_set("concurrency.pools.granularity", "partition"), "granularity"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_helm_values_with_a_misspelled_key_or_wrong_type_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[dict[str, Any]], None],
    named: str,
) -> None:
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "set-by-the-chart-from-its-secret")
    values = helm_values()
    change(values)
    try:
        problems = instance_problems(helm_instance_config(values), tmp_path / "home")
    except ValueError as error:
        problems = [str(error)]
    assert problems, "the changed values were accepted"
    assert named in "\n".join(problems)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_set("envSecrets", [{"nme": "kd-pipeline-secrets"}]), "envSecrets"),
        (_set("env", [{"value": "s3://bucket/prefix"}]), "name"),
        (_set("resources", {"requests": ["2", "8Gi"]}), "requests"),
        (_set("image.pullPolicy", ["IfNotPresent"]), "image_pull_policy"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_user_deployment_dagster_k8s_cannot_pass_to_its_runs_is_refused(
    change: Callable[[dict[str, Any]], None], named: str
) -> None:
    values = helm_values()
    change(the_user_deployment(values))
    with pytest.raises((DagsterInvalidConfigError, ValueError)) as refused:
        K8sContainerContext.create_from_config(helm_container_context(values))
    described = str(refused.value) + "".join(
        error.message for error in getattr(refused.value, "errors", [])
    )
    assert named in described


# ------------------------------------------------------------------------------ Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments) pairs: comments and blank lines dropped,
    backslash continuations joined."""
    joined = re.sub(r"\\\n", " ", re.sub(r"(?m)^\s*#.*\n", "", text))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def _env_names(arguments: str) -> list[str]:
    return [token.partition("=")[0] for token in shlex.split(arguments)]


SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PGPASS", re.IGNORECASE)


def dockerfile_problems(text: str, port: int, module: str) -> list[str]:
    """What keeps the image from being the code location the Helm values deploy: the package
    not installed from the repo, a root user, the port or module not the values' ones, an
    ENTRYPOINT (the chart passes the whole command as args), a credential baked in, a COPY
    of something not in the repo. [] when none."""
    instructions = dockerfile_instructions(text)
    by_kind: dict[str, list[str]] = {}
    for instruction, arguments in instructions:
        by_kind.setdefault(instruction, []).append(arguments)
    problems = []
    if not by_kind.get("FROM", [""])[0].startswith("python:3.11-slim"):
        problems.append("FROM: expected python:3.11-slim")
    installs = [
        shlex.split(run) for run in by_kind.get("RUN", []) if re.search(r"pip\s+install", run)
    ]
    if not any(t == "." or t.startswith(".[") for tokens in installs for t in tokens):
        problems.append("RUN: no `pip install .` of the repository")
    for copy_args in by_kind.get("COPY", []):
        sources = [s for s in shlex.split(copy_args) if not s.startswith("--")][:-1]
        problems += [f"COPY {s}: not in the repository" for s in sources if not (REPO / s).exists()]
    users = by_kind.get("USER", [])
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append("USER: the image must end as a non-root user")
    if str(port) not in " ".join(by_kind.get("EXPOSE", [])).split():
        problems.append(f"EXPOSE: the values' port {port} is not exposed")
    if "ENTRYPOINT" in by_kind:
        problems.append("ENTRYPOINT: the chart's args would be appended to it")
    command = json.loads(by_kind.get("CMD", ["[]"])[-1])
    serves = command[:3] == ["dagster", "code-server", "start"] or command[:3] == [
        "dagster",
        "api",
        "grpc",
    ]
    if not serves or "-p" not in command or command[command.index("-p") + 1] != str(port):
        problems.append(f"CMD: does not serve the code location on port {port}")
    if "-m" not in command or command[command.index("-m") + 1] != module:
        problems.append(f"CMD: does not load {module}")
    env_names = [name for env in by_kind.get("ENV", []) for name in _env_names(env)]
    if "KD_PIPELINE_HOME" not in env_names:
        problems.append("ENV: KD_PIPELINE_HOME not set")
    arg_names = [arg.partition("=")[0] for arg in by_kind.get("ARG", [])]
    problems += [
        f"ENV/ARG {n}: a credential in the image"
        for n in env_names + arg_names
        if SECRET_NAME.search(n)
    ]
    return problems


def code_location_module() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["dagster"]["module_name"]


def test_dockerfile_builds_the_code_location_the_helm_values_deploy() -> None:
    deployment = the_user_deployment(helm_values())
    module = code_location_module()
    args = deployment["codeServerArgs"]
    assert args[args.index("-m") + 1] == module
    assert dockerfile_problems(DOCKERFILE.read_text(), deployment["port"], module) == []


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda text, port: text.replace(f"EXPOSE {port}", f"EXPOSE {port + 1}"), "EXPOSE"),
        (lambda text, port: text.replace(f'"{port}"', f'"{port + 1}"'), "CMD"),
        (lambda text, port: text + "USER root\n", "USER"),
        (lambda text, port: text + "ENV AWS_SECRET_ACCESS_KEY=abc\n", "AWS_SECRET_ACCESS_KEY"),
        (lambda text, port: text + 'ENTRYPOINT ["tini", "--"]\n', "ENTRYPOINT"),
        (lambda text, port: text.replace("'.[cluster]'", "kd-pipeline"), "pip"),
        (lambda text, port: text.replace("kd_pipeline.definitions", "kd_pipeline.defs"), "CMD"),
    ],
    ids=["port-exposed", "port-served", "root", "secret", "entrypoint", "not-the-repo", "module"],
)
def test_dockerfile_that_departs_from_the_values_is_refused(
    change: Callable[[str, int], str], named: str
) -> None:
    port = the_user_deployment(helm_values())["port"]
    text = DOCKERFILE.read_text()
    changed = change(text, port)
    assert changed != text
    problems = dockerfile_problems(changed, port, code_location_module())
    assert problems
    assert named in "\n".join(problems)


def test_values_and_instance_file_set_the_same_run_limits() -> None:
    """The two ways of deploying agree on the limits a reader of either would tune."""
    values = helm_values()
    instance = instance_file()
    helm_runs = helm_instance_config(values)["concurrency"]
    assert helm_runs == instance["concurrency"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert launcher["resources"] == instance["run_launcher"]["config"]["resources"]
