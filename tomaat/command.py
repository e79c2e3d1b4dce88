"""The `tomaat` command's entry point: what happens before the command line is even imported.

`tomaat serve` restarts itself with huge pages first (net/huge_pages.py), so nothing may be loaded yet;
`tomaat.cli.main`, which tests and click's runner call from Python, never restarts anything.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        from .net.huge_pages import restart_with_huge_pages

        restart_with_huge_pages()
    from .cli import main as command_line

    command_line()
