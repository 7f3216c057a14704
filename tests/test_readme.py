"""README.rst cannot rot: its Python examples run, its commands parse, CI runs its set-up commands.

Conventions in README.rst, all RST comments (invisible once rendered):

- ``.. test: run`` just before a ``.. code-block:: python`` marks it runnable: it is executed
  here, in a fresh namespace holding ``dsn`` (the test server's DSN), with tracebacks pointing
  at README.rst's own line numbers. ``.. test: skip (why)`` marks one that cannot run as it is.
  Every Python block carries one or the other.
- ``.. test: quickstart-output`` marks the quickstart's output as the README shows it; it must
  match what ``tests/test_examples.py`` expects the quickstart to print.
- ``.. ci: quickstart-command`` and ``.. ci: test-command`` precede the code blocks holding the
  two set-up commands. ``.ci/run`` extracts and runs those very lines; this test checks that
  what it extracts is what the README shows.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

import pgpubsub_dispatch
from pgpubsub_dispatch import cli, compat, devserver, prometheus, triggers

from .support.programs import QUICKSTART_OUTPUT
from .support.rst import Block, read_blocks, run, unmarked
from .support.waiting import BOUND

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.rst"
CI_RUN = ROOT / ".ci" / "run"


BLOCKS = read_blocks(README)
PYTHON = [block for block in BLOCKS if block.language == "python"]
RUNNABLE = [block for block in PYTHON if block.marker == ".. test: run"]


def test_every_python_example_is_marked_to_run_or_to_skip_with_a_reason() -> None:
    missing = unmarked(PYTHON)
    assert not missing, f"mark these '.. test: run' or '.. test: skip (why)': {missing}"
    assert len(RUNNABLE) >= 10


@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_readme_example_runs(block: Block, dsn: str) -> None:
    assert not run(block, dsn, BOUND), f"{block} left a dispatcher running"


def test_readme_shows_what_the_quickstart_prints() -> None:
    [shown] = [block for block in BLOCKS if block.marker == ".. test: quickstart-output"]
    expected = "\n".join(QUICKSTART_OUTPUT) + "\n"
    assert re.fullmatch(expected, shown.code), f"{shown} differs from the quickstart's output"


def test_readme_names_every_public_name() -> None:
    text = README.read_text(encoding="utf-8")
    public = {
        *pgpubsub_dispatch.__all__,
        *triggers.__all__,
        *devserver.__all__,
        *prometheus.__all__,
        *(n for n in vars(prometheus.DispatcherCollector) if not n.startswith("_")),
        *(n for n in vars(pgpubsub_dispatch.Dispatcher) if not n.startswith("_")),
        *(n for n in vars(compat.PubSub) if not n.startswith("_")),
        "get_backend_pid",
    }
    # Constants only the implementation needs to share.
    public -= {"LIBPQ_SELECTORS", "NOTIFY_FUNC_NAME", "TRIGGER_SUFFIX"}
    # As code: ``name``, ``name(...)``, or an attribute such as bus.name or devserver.name.
    missing = sorted(name for name in public if not re.search(rf"(``|\.){name}\b|\b{name}\(", text))
    assert not missing, f"README.rst does not mention: {missing}"


def shell_commands() -> list[list[str]]:
    """The arguments of every ``pgpubsub-dispatch`` command shown in the README's shell blocks."""
    found = []
    for block in BLOCKS:
        if block.language != "console":
            continue
        for line in block.code.splitlines():
            if not line.startswith("$ "):
                continue
            command = line[2:].split("|")[-1]  # what the last command of a pipe runs
            words = shlex.split(command, comments=True)
            if words[:1] == ["pgpubsub-dispatch"]:
                found.append(words[1:])
            elif words[:3] == ["python", "-m", "pgpubsub_dispatch"]:
                found.append(words[3:])
    return found


def test_readme_command_lines_parse() -> None:
    commands = shell_commands()
    assert len(commands) >= 4
    for arguments in commands:
        try:
            cli.build_parser().parse_args(arguments)
        except SystemExit:
            pytest.fail(f"README.rst shows an invalid command: pgpubsub-dispatch {arguments}")


def readme_setup_commands() -> dict[str, str]:
    """The single line of the code block after each ``.. ci: NAME`` marker."""
    commands = {}
    for block in BLOCKS:
        marker = re.fullmatch(r"\.\. ci: (?P<name>[\w-]+)", block.marker or "")
        if marker is None:
            continue
        assert block.code.count("\n") == 1, f"{block}: one command on one line"
        assert marker["name"] not in commands, f"{block}: marker used twice"
        commands[marker["name"]] = block.code.strip()
    return commands


def test_the_setup_commands_are_the_ones_ci_runs() -> None:
    readme = readme_setup_commands()
    assert set(readme) == {"quickstart-command", "test-command"}
    assert readme["quickstart-command"].startswith("python3 -m venv .venv && ")
    assert readme["quickstart-command"].endswith(" examples/quickstart.py")
    assert readme["test-command"].endswith(" -m pytest")
    printed = subprocess.run(
        ["bash", str(CI_RUN), "--print-readme-commands"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=True,
    ).stdout
    assert printed.splitlines() == [readme["quickstart-command"], readme["test-command"]]


def test_readme_is_valid_restructured_text() -> None:
    """PyPI renders README.rst as the package's page: a malformed table or title breaks it."""
    import docutils.core
    import docutils.utils

    text = README.read_text(encoding="utf-8")
    try:
        docutils.core.publish_string(
            text, writer="null", settings_overrides={"report_level": 2, "halt_level": 2}
        )
    except docutils.utils.SystemMessage as exc:
        pytest.fail(f"README.rst does not render: {exc}")
