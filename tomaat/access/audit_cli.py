"""`tomaat audit verify`: the operator's check of an audit log's chain, for cron or by hand.

Exit codes keep "the log was tampered with" (1) apart from "the log could not be read" (2), so a script can
page someone for the first and retry the second.
"""

from __future__ import annotations

import click

from .audit import AuditError, Problem, chain_files, verify


@click.group()
def audit():
    """Check the service's tamper-evident audit log (docs/security.md)."""


@audit.command("verify")
@click.argument("files", nargs=-1, required=True)
def verify_command(files):
    """Check the hash chain of FILE and its rotated siblings (FILE.1, FILE.2, ...), or of several FILEs, oldest
    first, in the order given.

    Prints "ok: ..." and exits 0 when the chain is intact, one "FILE:LINE: what" per problem and exits 1 when it
    is not, and exits 2 when a file cannot be read."""
    try:
        paths = chain_files(files[0]) if len(files) == 1 else list(files)
        notes: list[Problem] = []
        checked, problems = verify(paths, notes=notes)
    except AuditError as error:
        click.echo(f"error: {error}", err=True)
        click.get_current_context().exit(2)
    for note in notes:
        click.echo(f"{note.path}:{note.line}: note: {note.what}", err=True)
    if problems:
        for problem in problems:
            click.echo(f"{problem.path}:{problem.line}: {problem.what}")
        click.echo(f"{len(problems)} problem(s) in {checked} records in {len(paths)} file(s)", err=True)
        click.get_current_context().exit(1)
    click.echo(f"ok: {checked} records in {len(paths)} file(s), chain intact")
