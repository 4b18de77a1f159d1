"""Every command's --help ends with examples, and each example is a command line the command
accepts: its options exist and take the values given (parsed by the command's own parser,
nothing run)."""

from __future__ import annotations

import importlib
import shlex

import click
import pytest

from conftest import run_cmd

from ims.asm.imsasm import parse_args as imsasm_parse_args
from ims.errors import UsageError

# command -> the module holding its click command (None: not a click command)
COMMANDS = {
    "imsbackup": "ims.cli.imsbackup",
    "imsrestore": "ims.cli.imsrestore",
    "configutil": "ims.cli.configutil",
    "reconstruct": "ims.cli.reconstruct",
    "mkbackupdir": "ims.mkbackupdir.cli",
}


def examples(help_text: str) -> list[str]:
    """The command lines of the Examples block, which must end the help."""
    head, found, block = help_text.rpartition("Examples:\n")
    assert found, "no Examples block"
    lines = [line.strip() for line in block.splitlines() if line.strip()]
    assert lines, "the Examples block is empty"
    assert all(line.startswith(("#", "  ")) or line == line.strip() for line in lines)
    commands = [line for line in lines if not line.startswith("#")]
    assert len(commands) >= 1
    return commands


def invocation(line: str, name: str) -> list[str]:
    """The arguments given to ``name`` in an example line (pipes and redirections cut off)."""
    for segment in line.split("|"):
        words = shlex.split(segment.split(">")[0].split("<")[0].split("&&")[0])
        if words and words[0] == name:
            return words[1:]
    raise AssertionError(f"{line!r} does not run {name}")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_ends_with_examples_the_command_accepts(name):
    result = run_cmd(name, "--help")
    assert result.returncode == 0, result.stderr
    lines = examples(result.stdout.decode())
    command = importlib.import_module(COMMANDS[name]).command
    for line in lines:
        args = invocation(line, name)
        try:
            command.make_context(name, list(args), resilient_parsing=False)
        except click.UsageError as exc:
            raise AssertionError(f"{line!r}: {exc.format_message()}") from None


def test_imsasm_help_ends_with_examples_it_accepts():
    result = run_cmd("imsasm", "--help")
    assert result.returncode == 0, result.stderr
    for line in examples(result.stdout.decode()):
        try:
            imsasm_parse_args(invocation(line, "imsasm"))
        except UsageError as exc:
            raise AssertionError(f"{line!r}: {exc}") from None
