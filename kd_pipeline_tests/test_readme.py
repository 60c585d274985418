"""The README's quick start is what CI runs: its two set-up commands appear, character for
character, as lines of `.ci/run` (so editing one without the other fails here)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The one-line bash blocks of the README's quick start, in order."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Quick start")
    end = readme.index("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", readme[start:end], flags=re.S)
    return [b.strip() for b in blocks if len(b.strip().splitlines()) == 1]


def test_ci_runs_the_readme_set_up_commands_exactly() -> None:
    commands = quick_start_commands()
    assert len(commands) >= 2, commands
    main_job, tests = commands[0], commands[1]
    assert main_job.endswith("kd-pipeline materialize") and tests.endswith(".venv/bin/pytest")
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    for command in (main_job, tests):
        assert command in ci_lines, f".ci/run does not run the README command: {command}"
