"""The README's service examples are real: its CI snippets are valid YAML whose bdscreen commands parse."""

import re
import shlex
from pathlib import Path

import yaml

from cli.main import _parser

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def _commands(text: str) -> list[list[str]]:
    lines = text.replace("\\\n", " ").splitlines()
    return [shlex.split(line.split(" #")[0])[1:] for line in lines if line.strip().startswith("bdscreen ")]


def test_readme_ci_snippets_are_yaml_and_their_scan_commands_parse(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("model.h5", "clean.npz"):
        (tmp_path / name).write_bytes(b"")
    snippets = [yaml.safe_load(block) for block in _blocks("yaml")]
    github = next(s for s in snippets if isinstance(s, list))
    gitlab = next(s for s in snippets if isinstance(s, dict) and "screen-model" in s)
    assert gitlab["screen-model"]["allow_failure"]["exit_codes"] == [3]
    scripts = [github[0]["run"], *gitlab["screen-model"]["script"]]
    commands = [c for script in scripts for c in _commands(script)]
    assert len(commands) == 2
    for argv in commands:
        args = _parser().parse_args([a.replace('"$BDSCREEN_URL"', "http://x") for a in argv])
        assert args.command == "scan" and args.server and args.download


def test_readme_service_commands_parse():
    commands = [c for block in _blocks("sh") for c in _commands(block)
                if c[0] in ("serve", "worker", "keys") and not any(a.startswith("[") for a in c)]  # not synopses
    assert {c[0] for c in commands} == {"serve", "worker", "keys"}
    for argv in commands:
        assert _parser().parse_args(argv).command == argv[0]


def test_ci_runs_the_readme_test_command():
    """.ci/run must run exactly what the README tells a newcomer to run for the whole suite."""
    command = next(line.strip() for line in README.splitlines() if line.strip().startswith("python3 -m venv")
                   and "pytest" in line)
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert command in ci.splitlines()
