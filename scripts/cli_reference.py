"""Print the CLI reference (every command's --help) as Markdown.

COLUMNS=100 python scripts/cli_reference.py > docs/cli.md
"""

from __future__ import annotations

import os
import subprocess
import sys

COMMANDS = [
    "",
    "check",
    "trace",
    "export",
    "plot flow",
    "attend",
    "eval",
    "score",
    "build",
    "plot avg-attention",
    "plot text-heatmap",
    "plot image-heatmap",
    "tiny",
    "demo",
]


def main() -> None:
    print("# CLI reference\n\nGenerated from the CLI with `python scripts/cli_reference.py > docs/cli.md`.\n")
    for command in COMMANDS:
        completed = subprocess.run(
            [sys.executable, "-m", "vistrace.cli", *command.split(), "--help"],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "100"},
            check=True,
        )
        body = "\n".join(line.rstrip() for line in completed.stdout.splitlines())
        print(f"## vistrace {command}\n\n```\n{body}\n```\n")


if __name__ == "__main__":
    main()
