"""Shared fixtures: every test runs against temporary folders, never the user's data home."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import datasets
import huggingface_hub
import pytest
from huggingface_hub import constants, file_download

from kd_pipeline_tests.sample_exports import BuiltExports, build_mixture, build_sample_exports

# pytester: test_readme.py runs pytest on a skipped test; servers: the PostgreSQL and S3
# servers on loopback (fixtures postgres_server, s3_server)
pytest_plugins = ["pytester", "kd_pipeline_tests.servers"]
TIMEOUT = 5


@pytest.fixture(scope="session", autouse=True)
def _session_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data home for the session (the sample mirror is generated once into it)."""
    home = tmp_path_factory.mktemp("kd_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KD_PIPELINE_HOME", str(home))
        for key in ("KD_PIPELINE_LAKE", "KD_PIPELINE_MIRROR", "KD_PIPELINE_SOURCE", "DAGSTER_HOME"):
            mp.delenv(key, raising=False)
        yield home


@pytest.fixture(scope="session", autouse=True)
def _runs_load_the_code_location_afresh() -> Iterator[None]:
    """A run launched for real starts in a process that loads the code location, so its
    resources come from the environment it starts in. In-process runs here reuse the `defs`
    imported when the tests were collected, and tests set variables after that: each
    in-process run of a `defs` job runs that job of a code location loaded at that moment
    (`build_definitions()`, about 0.1 s), as a fresh process would. Jobs not from `defs`
    (`dg.materialize`) run as they are."""
    from kd_pipeline.definitions import build_definitions, defs

    loaded = defs.get_repository_def()
    execute = dg.JobDefinition.execute_in_process

    def execute_as_freshly_loaded(self, *args, **kwargs):
        if loaded.has_job(self.name) and loaded.get_job(self.name) is self:
            self = build_definitions().get_repository_def().get_job(self.name)
        return execute(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dg.JobDefinition, "execute_in_process", execute_as_freshly_loaded)
        yield


@pytest.fixture(autouse=True)
def lake_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh lake per test."""
    lake = tmp_path / "lake"
    monkeypatch.setenv("KD_PIPELINE_LAKE", str(lake))
    return lake


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep huggingface_hub inside tmp_path, online, without telemetry and with short timeouts."""
    home = tmp_path / "hf_home"
    env = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": str(TIMEOUT),
        "HF_HUB_DOWNLOAD_TIMEOUT": str(TIMEOUT),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    # huggingface_hub reads its environment once at import: patch the parsed values as well.
    patched = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_ETAG_TIMEOUT": TIMEOUT,
        "HF_HUB_DOWNLOAD_TIMEOUT": TIMEOUT,
    }
    for key, value in patched.items():
        monkeypatch.setattr(constants, key, value)
    yield
    # drop keep-alive connections to the stopped server (huggingface_hub < 1.0: reset_sessions)
    close = getattr(huggingface_hub, "close_session", None) or huggingface_hub.utils.reset_sessions
    close()


def point_pipeline_at_hub(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """KD_PIPELINE_SOURCE=hub against endpoint, as if HF_ENDPOINT had been set before
    huggingface_hub was imported (it reads its environment once, at import)."""
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    # huggingface_hub < 1.0 formats download URLs from its own import-time copy
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("KD_PIPELINE_SOURCE", "hub")


@pytest.fixture(scope="session")
def sample_exports(tmp_path_factory: pytest.TempPathFactory) -> BuiltExports:
    """Every family and every export of the sample, built once through Dagster."""
    return build_sample_exports(tmp_path_factory.mktemp("sample_exports") / "lake")


@pytest.fixture(scope="session")
def mixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake holding the DenseON-LateON mixture over the 73 sample configs and its export
    (exports/pointwise/pointwise_denseon_lateon), built once (see build_mixture)."""
    return build_mixture(tmp_path_factory.mktemp("mixture"))


@pytest.fixture
def offline_consumers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumers read local folders only: the Hub is off (a stray download fails at
    once instead of waiting on the network) and `datasets` caches under tmp_path."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    # both libraries read these once, at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets_cache")


# ---- no test passes by being skipped -------------------------------------------------------
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember every skipped test (an expected failure is not a skip)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skipped test fails the session: the set-up command installs everything the tests
    need, so a skip means something is missing (deselecting with -k or -m is not a skip)."""
    if _SKIPPED and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _SKIPPED:
        terminalreporter.write_line(
            f"{len(_SKIPPED)} test(s) skipped, which fails the run (nothing may be skipped; "
            f"run `bash kd_pipeline_tests/setup-test-env.sh`): {', '.join(_SKIPPED[:5])}",
            red=True,
        )
