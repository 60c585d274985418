"""The README's quick start is what CI runs: its two set-up commands appear, character for
character, as lines of `.ci/run` (so editing one without the other fails here). The test
command installs what the tests need, from the constraints file whose versions the README
states; the consumer calls the README quotes are lines of the tests that run them; and a
skipped test fails the run."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "kd_pipeline_tests"
CONSTRAINTS = TESTS / "consumers-constraints.txt"
SETUP = TESTS / "setup-test-env.sh"
CONSUMERS_SECTION = "### Consumers the tests train on the exports"


def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def section(heading: str) -> str:
    """The README text from heading to the next heading of any level."""
    text = readme()
    start = text.index(heading)
    return text[start : re.search(r"\n#{2,3} ", text[start + 1 :]).start() + start + 1]


def quick_start_commands() -> list[str]:
    """The one-line bash blocks of the README's quick start, in order."""
    text = readme()
    start = text.index("## Quick start")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)
    return [b.strip() for b in blocks if len(b.strip().splitlines()) == 1]


def pins() -> dict[str, str]:
    """package name (normalised) -> pinned version, from the constraints file."""
    found = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, pinned = line.split("==")
            found[re.sub(r"[-_.]+", "-", name).lower()] = pinned
    return found


def test_ci_runs_the_readme_set_up_commands_exactly() -> None:
    commands = quick_start_commands()
    assert len(commands) >= 2, commands
    main_job, tests = commands[0], commands[1]
    assert main_job.endswith("kd-pipeline materialize") and tests.endswith(".venv/bin/pytest")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in (main_job, tests):
        assert command in ci_lines, f".ci/run does not run the README command: {command}"


def test_the_test_command_installs_the_consumers_from_the_constraints() -> None:
    tests = quick_start_commands()[1]
    assert tests.startswith(f"bash {SETUP.relative_to(REPO)} && ")
    script = SETUP.read_text()
    constraints = f"constraints={CONSTRAINTS.relative_to(REPO)}"
    assert constraints in script
    assert """pip install -q -c "$constraints" -e '.[dev,consumers]'""" in script
    assert 'pip install -q --no-deps -c "$constraints" pylate fastkmeans light-splade beir' in (
        script
    )


def test_the_installed_consumers_are_the_pinned_versions() -> None:
    """The environment the tests ran in is the one the constraints (and the README) state."""
    for name, pinned in pins().items():
        installed = Version(version(name))
        assert installed.public == Version(pinned).public, (name, str(installed), pinned)


def test_the_readme_states_the_pinned_versions() -> None:
    table = section(CONSUMERS_SECTION)
    stated = {
        "sentence-transformers": "sentence-transformers",
        "pylate": "PyLate",
        "light-splade": "light-splade",
        "lightning-ir": "lightning-ir",
        "tevatron": "tevatron",
        "transformers": "transformers",
        "datasets": "`datasets`",
    }
    for package, label in stated.items():
        assert f"{label} {pins()[package]}" in table, (package, pins()[package])


def test_the_consumer_calls_quoted_in_the_readme_are_in_the_tests() -> None:
    blocks = re.findall(r"```python\n(.*?)```", section(CONSUMERS_SECTION), flags=re.S)
    assert len(blocks) == 5
    for block in blocks:
        header, *lines = block.strip().splitlines()
        test_file = REPO / header.removeprefix("# ").strip()
        assert test_file.name.startswith("test_train_"), header
        code = [line.strip() for line in test_file.read_text().splitlines()]
        for line in lines:
            assert any(line.strip() in c for c in code), (test_file.name, line)


def test_a_skipped_test_fails_the_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest((TESTS / "conftest.py").read_text())
    pytester.makepyfile(
        test_some="import pytest\n\n"
        "def test_needs_a_consumer():\n    pytest.skip('consumer not installed')\n\n"
        "def test_fine():\n    pass\n"
    )
    skipped = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert skipped.ret == pytest.ExitCode.TESTS_FAILED
    skipped.stdout.fnmatch_lines(["*1 test(s) skipped, which fails the run*test_needs_a_consumer*"])
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "fine").ret == 0


def architecture_map() -> str:
    """The code block of the README's Architecture section."""
    section = readme().split("## Architecture\n", 1)[1]
    return section.split("```\n", 2)[1]


def test_the_architecture_map_names_every_module() -> None:
    block = architecture_map()
    modules = sorted(
        path.relative_to(REPO / "kd_pipeline")
        for path in (REPO / "kd_pipeline").rglob("*.py")
        if path.name != "__init__.py"
    )
    assert len(modules) > 60  # the walk found the package
    missing = [str(m) for m in modules if m.name not in block]
    folders = {str(m.parent) for m in modules if str(m.parent) != "."}
    unmapped = [f for f in folders if f.split("/")[-1] + "/" not in block]
    assert (missing, unmapped) == ([], [])
