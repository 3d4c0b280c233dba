"""The Procfile: its processes, and one process's command as an argument list.

The run command (`app/launch.py`) starts every process of it; the benchmark and the tests
start its `web:` command through `command_of`, so they serve the way a deployment does.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
_ENV_DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def read_procfile(path: Path = PROCFILE) -> dict[str, str]:
    """Each process's name and its command line (comment lines skipped)."""
    processes: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


def command_of(name: str, env: Mapping[str, str], *overrides: str) -> list[str]:
    """Process `name`'s command with `${VAR:-default}` expanded from `env`, `uvicorn` run
    by this interpreter (whatever PATH says), and `overrides` appended: with uvicorn's
    CLI a later option wins, so `--host 127.0.0.1 --port N` replaces the Procfile's."""
    try:
        command = read_procfile()[name]
    except KeyError:
        raise LookupError(f"no {name}: line in {PROCFILE}") from None
    args = shlex.split(_ENV_DEFAULT.sub(lambda m: env.get(m[1], m[2]), command))
    if args and args[0] == "uvicorn":
        args = [sys.executable, "-m", "uvicorn", *args[1:]]
    return [*args, *overrides]


def option_of(name: str, option: str) -> str:
    """The value the Procfile gives `option` in process `name`'s command (`--http`...)."""
    args = command_of(name, {})
    try:
        return args[args.index(option) + 1]
    except (ValueError, IndexError):
        raise LookupError(f"no {option} in the {name}: line of {PROCFILE}") from None
