"""Project promises: the README's quickstart is exactly what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.strip().splitlines() if line.strip()]


def test_readme_opens_with_two_quickstart_commands_that_ci_runs_verbatim() -> None:
    commands = quickstart_commands()
    assert len(commands) == 2
    assert "sdxs-rt generate" in commands[0] and "pytest" in commands[1]
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    for command in commands:
        assert command in ci_lines


def test_every_python_package_is_listed_for_installation() -> None:
    """A subpackage missing from pyproject's `packages` would vanish from a plain pip install."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    listed = set(config["setuptools"]["packages"])
    found = set()
    for name, folder in config["setuptools"]["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *relative)))
    assert found == listed


def _lower_bounds(requirements: list[str]) -> dict[str, str]:
    """{name: version} of every `name>=version` requirement (markers and upper bounds aside)."""
    import re

    bounds = {}
    for requirement in requirements:
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([^,;\s]+)", requirement)
        if match:
            bounds[match.group(1).lower().replace("_", "-")] = match.group(2)
    return bounds


def test_the_lowest_versions_job_installs_exactly_the_declared_lower_bounds() -> None:
    """Declared ranges are tested ranges: the second CI job pins what pyproject claims."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _lower_bounds(project["dependencies"] + project["optional-dependencies"]["torch"])
    lines = (ROOT / ".ci" / "lowest-versions.txt").read_text(encoding="utf-8").splitlines()
    pinned = dict(line.lower().replace("_", "-").split("==") for line in lines if "==" in line)
    from packaging.version import Version

    assert {k: Version(v) for k, v in pinned.items()} == {
        k: Version(v) for k, v in declared.items()
    }
    assert ".ci/lowest-versions.txt" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
