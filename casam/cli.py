"""The `casam` command: a thin dispatcher to one module per sub-command in `casam.commands`.

Each sub-command module exposes `main(argv: list[str]) -> int` and owns its own argument parser,
so that `casam train --help` shows only what training needs.
"""

from __future__ import annotations

import argparse
import importlib
import sys


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags get one line naming the problem, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")

COMMANDS = {
    "data": "inspect a data set and its label noise before training on it",
    "train": "train a classifier on noisily-labelled data",
    "plot": "compare runs in one PNG (accuracy, selection precision, memorisation)",
    "bench": "run a grid of methods x noises x seeds in parallel and write the results table",
}


def _usage() -> str:
    lines = ["usage: casam COMMAND [options]   (casam COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<7} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from casam import __version__

        print(f"casam {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"casam: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"casam.commands.{name}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
