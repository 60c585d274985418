"""The operated system, end to end: the real `dagster-webserver` and `dagster-daemon` on
loopback against a temporary instance, a run launched through GraphQL (as the UI launches
it), the asset graph, checks and automation read back through GraphQL, and the lineage page
rendered in headless Chromium (marker `browser`; screenshot in `test-artifacts/`).

Chromium is Debian's `chromium` package (`.ci/run` installs it) or `KD_PIPELINE_CHROMIUM`;
without it the browser test fails and says so. `pytest -m "not browser"` deselects it (the
GraphQL test still runs the servers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from kd_pipeline.fetch import sample_mirror
from kd_pipeline.lake import Lake

ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = ROOT / "workspace.yaml"
ARTIFACTS = ROOT / "test-artifacts"
SCREENSHOT = ARTIFACTS / "ui-lineage-lighton.png"

LOCATION = "kd_pipeline"
REPOSITORY = "__repository__"  # the repository name Dagster gives a `Definitions` object
JOB = "lighton_partitions"
PARTITION = "agnews"
LINEAGE_PATH = f"/locations/{LOCATION}/asset-groups/lighton"  # the group's lineage graph
LIGHTON_ASSETS = [
    "raw",
    "recommended",
    "top35",
    "similarity_3",
    "denseon_lateon",
    "custom",
    "custom_union",
]

SERVER_START_TIMEOUT = 90.0
RUN_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0

CHROMIUM_ENV = "KD_PIPELINE_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Headless, as root, on a machine whose network is closed: no sandbox, no GPU, and none of
# the background connections (updates, sync, QUIC) that would be refused anyway.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
WINDOW = (1600, 1700)  # tall enough for the whole lighton group at the UI's default zoom
# The UI is a JavaScript app: virtual time lets it fetch and lay out the graph before the
# screenshot and the DOM dump (virtual time waits while network fetches are pending).
RENDER_BUDGETS_MS = (15_000, 30_000, 45_000)
CHROMIUM_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Service:
    """A server process in its own process group (it spawns code servers and run workers)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(
                f"{self.name} exited with {self.proc.returncode}; log tail:\n{tail(self.log)}",
                pytrace=False,
            )

    def terminate(self) -> None:
        """SIGTERM to the whole group (start_new_session: the group id is the leader's pid)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def reap(self, deadline: float) -> None:
        """Wait for the group to be gone until deadline, then SIGKILL whatever is left."""
        while time.monotonic() < deadline:
            self.proc.poll()
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stop_all(services: list[Service]) -> None:
    for service in services:
        service.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for service in services:
        service.reap(deadline)


def start_service(name: str, args: list[str], env: dict[str, str], log: Path) -> Service:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, proc, log)


@dataclass
class DagsterUI:
    port: int
    services: list[Service]
    lake: Path
    dagster_home: Path
    env: dict[str, str]
    run_id: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} log tail:\n{tail(s.log)}" for s in self.services)

    def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        assert not payload.get("errors"), payload["errors"]
        return payload["data"]

    def wait_until_loaded(self) -> None:
        """The server answers and the code location has loaded (bounded)."""
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        last = "no answer yet"
        while time.monotonic() < deadline:
            for service in self.services:
                service.check_alive()
            try:
                entries = self.gql(WORKSPACE_QUERY)["workspaceOrError"]["locationEntries"]
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                last = repr(exc)
            else:
                entry = next((e for e in entries if e["name"] == LOCATION), None)
                loaded = entry and entry["locationOrLoadError"]
                if loaded and loaded["__typename"] == "PythonError":
                    pytest.fail(f"code location failed to load: {loaded['message']}")
                if entry and entry["loadStatus"] == "LOADED" and loaded:
                    return
                last = f"location entry: {entry}"
            time.sleep(0.5)
        pytest.fail(
            f"webserver not ready after {SERVER_START_TIMEOUT:.0f}s ({last})\n{self.logs()}",
            pytrace=False,
        )

    def launch_partition_run(self, job: str, partition: str) -> str:
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "jobName": job,
            },
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
        }
        result = self.gql(LAUNCH_RUN, {"params": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def wait_for_run(self, run_id: str) -> str:
        """Poll until the run ends (the daemon dequeues it; a run worker executes it)."""
        deadline = time.monotonic() + RUN_TIMEOUT
        status = "?"
        while time.monotonic() < deadline:
            for service in self.services:
                service.check_alive()
            status = self.gql(RUN_STATUS, {"runId": run_id})["runOrError"]["status"]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                return status
            time.sleep(1)
        pytest.fail(
            f"run {run_id} still {status} after {RUN_TIMEOUT:.0f}s\n{self.logs()}", pytrace=False
        )


WORKSPACE_QUERY = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}"""

LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN_STATUS = """
query Status($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { status } } }"""

GROUP_GRAPH = """
query Group($group: AssetGroupSelector!) {
  assetNodes(group: $group) {
    assetKey { path }
    dependencyKeys { path }
    isPartitioned
  }
}"""

ASSET_STATE = """
query Asset($key: AssetKeyInput!, $partitions: [String!]) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode {
      assetMaterializations(partitions: $partitions, limit: 1) { runId partition }
      assetChecksOrError {
        __typename
        ... on AssetChecks {
          checks {
            name
            blocking
            executionForLatestMaterialization {
              status
              runId
              evaluation { success severity }
            }
          }
        }
      }
    }
  }
}"""

AUTOMATION = """
query Automation($repo: RepositorySelector!) {
  schedulesOrError(repositorySelector: $repo) {
    __typename
    ... on Schedules { results { name cronSchedule scheduleState { status } } }
  }
  sensorsOrError(repositorySelector: $repo) {
    __typename
    ... on Sensors { results { name sensorState { status } } }
  }
}"""

REPO_SELECTOR = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    """Webserver + daemon on a temporary instance, with one LightOn partition materialised
    by a run launched through GraphQL."""
    dagster_home = tmp_path_factory.mktemp("ui_dagster_home")
    lake = tmp_path_factory.mktemp("ui_lake")
    logs = tmp_path_factory.mktemp("ui_logs")
    shutil.copyfile(ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    # The "Join the Dagster community" dialog, as if a person had dismissed it once: it
    # would otherwise cover the graph in the screenshot.
    (dagster_home / ".nux").mkdir()
    (dagster_home / ".nux" / "nux.yaml").write_text("seen: 1\n")

    # Create the instance's SQLite storage here: the webserver and the daemon both migrate
    # an empty storage on start, and two migrations at once collide ("more than one head").
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        instance.get_runs(limit=1)

    kd_home = os.environ["KD_PIPELINE_HOME"]  # the session's temporary data home (conftest)
    sample_mirror()  # generate the sample here, once, rather than inside the first step

    env = dict(os.environ)
    for key in ("KD_PIPELINE_MIRROR", "KD_PIPELINE_SOURCE", "KD_PIPELINE_REFRESH_CRON"):
        env.pop(key, None)
    pythonpath = [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        DAGSTER_HOME=str(dagster_home),
        KD_PIPELINE_HOME=kd_home,
        KD_PIPELINE_LAKE=str(lake),
        PYTHONPATH=os.pathsep.join(pythonpath),
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    services: list[Service] = []
    try:
        services.append(
            start_service(
                "dagster-webserver",
                [
                    sys.executable,
                    "-m",
                    "dagster_webserver",
                    "-w",
                    str(WORKSPACE),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                ],
                env,
                logs / "webserver.log",
            )
        )
        services.append(
            start_service(
                "dagster-daemon",
                # `python -m dagster._daemon` is what the `dagster-daemon` script runs; this
                # form needs no script next to the interpreter.
                [sys.executable, "-m", "dagster._daemon", "run", "-w", str(WORKSPACE)],
                env,
                logs / "daemon.log",
            )
        )
        ui = DagsterUI(port=port, services=services, lake=lake, dagster_home=dagster_home, env=env)
        ui.wait_until_loaded()
        ui.run_id = ui.launch_partition_run(JOB, PARTITION)
        status = ui.wait_for_run(ui.run_id)
        assert status == "SUCCESS", f"run {ui.run_id} ended {status}\n{ui.logs()}"
        yield ui
    finally:
        stop_all(services)


def key_str(node: dict[str, Any]) -> str:
    return "/".join(node["path"])


def test_run_launched_through_graphql_materialises_graph_and_checks(dagster_ui: DagsterUI):
    ui = dagster_ui
    nodes = ui.gql(
        GROUP_GRAPH,
        {"group": {"groupName": "lighton", **REPO_SELECTOR}},
    )["assetNodes"]
    graph = {key_str(n["assetKey"]): {key_str(d) for d in n["dependencyKeys"]} for n in nodes}
    assert {f"lighton/{name}" for name in LIGHTON_ASSETS} <= set(graph)
    assert graph["lighton/raw"] == set()
    for name in LIGHTON_ASSETS[1:]:
        assert graph[f"lighton/{name}"] == {"lighton/raw"}, name

    raw = ui.gql(ASSET_STATE, {"key": {"path": ["lighton", "raw"]}, "partitions": [PARTITION]})
    raw_node = raw["assetNodeOrError"]
    assert raw_node["assetMaterializations"] == [{"runId": ui.run_id, "partition": PARTITION}]
    checks = {c["name"]: c for c in raw_node["assetChecksOrError"]["checks"]}
    finite = checks["finite_similarity"]
    assert finite["blocking"] is True
    execution = finite["executionForLatestMaterialization"]
    assert execution["status"] == "SUCCEEDED", execution
    assert execution["runId"] == ui.run_id
    assert execution["evaluation"] == {"success": True, "severity": "ERROR"}
    assert {
        name: c["executionForLatestMaterialization"]["status"] for name, c in checks.items()
    } == {name: "SUCCEEDED" for name in checks}

    recommended = ui.gql(
        ASSET_STATE, {"key": {"path": ["lighton", "recommended"]}, "partitions": [PARTITION]}
    )["assetNodeOrError"]
    assert recommended["assetMaterializations"] == [{"runId": ui.run_id, "partition": PARTITION}]
    assert Lake(ui.lake).is_published(("lighton", "recommended"), PARTITION)

    automation = ui.gql(AUTOMATION, {"repo": REPO_SELECTOR})
    schedules = {
        s["name"]: s["scheduleState"]["status"] for s in automation["schedulesOrError"]["results"]
    }
    sensors = {
        s["name"]: s["sensorState"]["status"] for s in automation["sensorsOrError"]["results"]
    }
    assert schedules["lighton_weekly_refresh"] == "STOPPED"
    assert sensors["lighton_upstream_changes"] == "STOPPED"
    assert sensors["kd_automation"] == "RUNNING"


CHECK_STATES = """
query ($key: AssetKeyInput!, $check: String!, $partition: String) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            partitionStatuses {
              __typename
              ... on AssetCheckDefaultPartitionStatuses { succeededPartitions failedPartitions }
            }
          }
        }
      }
    }
  }
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 5, partition: $partition) {
    runId
    status
    partition
    evaluation {
      success
      severity
      partition
      metadataEntries {
        label
        ... on IntMetadataEntry { intValue }
        ... on TextMetadataEntry { text }
      }
    }
  }
}"""


def test_failed_checks_of_a_blocked_publish_show_per_partition(dagster_ui: DagsterUI, tmp_path):
    """A run whose blocking check fails publishes nothing, and the UI (its GraphQL API) shows
    that check failed for that partition, with the rule's metadata; every other check of the
    run is evaluated for the partition too (none left "Not Evaluated"), and the partition
    materialised earlier still shows its checks succeeded."""
    import hashlib
    import math

    from kd_pipeline_tests.helpers import lighton_repo, pairs, write_pairs

    bad_partition = "quora"
    rows = pairs(10)
    rows[3]["similarity"] = math.nan
    mirror = tmp_path / "mirror"
    write_pairs(lighton_repo(mirror) / bad_partition / "train-0.parquet", rows)
    env = {**dagster_ui.env, "KD_PIPELINE_MIRROR": str(mirror)}
    proc = subprocess.run(
        [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--partition", bad_partition],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert not Lake(dagster_ui.lake).is_published(("lighton", "raw"), bad_partition)

    key = {"path": ["lighton", "raw"]}
    data = dagster_ui.gql(
        CHECK_STATES, {"key": key, "check": "finite_similarity", "partition": bad_partition}
    )
    statuses = {
        c["name"]: c["partitionStatuses"]
        for c in data["assetNodeOrError"]["assetChecksOrError"]["checks"]
    }
    assert bad_partition in statuses["finite_similarity"]["failedPartitions"]
    assert PARTITION in statuses["finite_similarity"]["succeededPartitions"]
    for name, status in statuses.items():
        if name != "finite_similarity":
            assert bad_partition in status["succeededPartitions"], (name, status)
    (execution,) = data["assetCheckExecutions"]
    assert execution["status"] == "FAILED" and execution["partition"] == bad_partition
    evaluation = execution["evaluation"]
    assert evaluation["success"] is False and evaluation["severity"] == "ERROR"
    assert evaluation["partition"] == bad_partition
    metadata = {m["label"]: m.get("intValue", m.get("text")) for m in evaluation["metadataEntries"]}
    assert metadata["violations"] == 1
    assert metadata["first_offenders"] == hashlib.md5(b"query 3").hexdigest()


class VisibleText(HTMLParser):
    """The text nodes of a DOM dump, without scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.skipping = 0
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.skipping += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skipping = max(0, self.skipping - 1)

    def handle_data(self, data: str) -> None:
        if not self.skipping and data.strip():
            self.texts.append(data.strip())


def visible_texts(dom: str) -> list[str]:
    parser = VisibleText()
    parser.feed(dom)
    return parser.texts


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def chromium() -> str:
    explicit = os.environ.get(CHROMIUM_ENV, "").strip()
    if explicit:
        if not (Path(explicit).is_file() and os.access(explicit, os.X_OK)):
            pytest.fail(f"{CHROMIUM_ENV}={explicit}: not an executable file", pytrace=False)
        return explicit
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is needed for the UI screenshot test and none was found "
        f"(looked for {', '.join(CHROMIUM_NAMES)} on PATH). Install it, e.g. "
        "`sudo apt-get install chromium` on Debian/Ubuntu (.ci/run does this), or point "
        f"{CHROMIUM_ENV} at a Chrome/Chromium binary; or deselect the test with "
        "`pytest -m 'not browser'`.",
        pytrace=False,
    )


def render(chromium: str, url: str, screenshot: Path, budget_ms: int) -> str:
    """Load url once in a fresh headless profile: write the screenshot, return the DOM."""
    with tempfile.TemporaryDirectory(prefix="kd-chromium-") as profile:
        args = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ]
        try:
            proc = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=CHROMIUM_TIMEOUT,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT:.0f}s: {args}")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.browser
def test_lineage_page_renders_the_lighton_graph(
    chromium: str, dagster_ui: DagsterUI, capsys: pytest.CaptureFixture[str]
) -> None:
    ui = dagster_ui
    # raw's node counts the checks with no failed partition: all of them, unless the
    # blocked-publish test above has already failed one for its partition (the page must
    # show what the API reports, whichever test ran first).
    raw_checks = ui.gql(
        CHECK_STATES,
        {"key": {"path": ["lighton", "raw"]}, "check": "finite_similarity", "partition": None},
    )["assetNodeOrError"]["assetChecksOrError"]["checks"]
    green = [c for c in raw_checks if not c["partitionStatuses"]["failedPartitions"]]
    passed = f"{len(green)} / {len(raw_checks)} Passed"
    expected = [*LIGHTON_ASSETS, passed, "73 partitions"]

    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    url = ui.base_url + LINEAGE_PATH
    missing: list[str] = expected
    for budget in RENDER_BUDGETS_MS:  # a loaded machine may need more time to lay out
        texts = visible_texts(render(chromium, url, SCREENSHOT, budget))
        missing = [text for text in expected if text not in texts]
        if not missing:
            break
    assert not missing, f"{url} did not show {missing}; it showed {texts[:80]} ({SCREENSHOT})"
    assert png_size(SCREENSHOT) == WINDOW
    with capsys.disabled():
        print(f"\nlineage screenshot of {url}: {SCREENSHOT}")
