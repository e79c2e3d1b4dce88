"""The client's commands for the `tomaat` command line: discover, interface, predict.

Every failure the user can act on (no connection, an input that does not fit,
the server's refusal, a changed certificate) ends the command with one line on
stderr and a non-zero status, never a traceback.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import sys
from collections import defaultdict

import click

from ..protocol.metadata import LINES, describe_result
from ..protocol.text import printable
from .credentials import ENVIRONMENT
from .errors import ClientError, ServerError, ValidationError

DEFAULT_REGISTRY = "http://localhost:8001"
EXIT = {ValidationError: 2, ServerError: 3}  # anything else a client error: 1
MODEL = (
    ("licence", "licence"),
    ("intended_use", "intended use"),
    ("disclaimer", "disclaimer"),
    ("citation", "cite as"),
)


def inline(text) -> str:
    """A server's or registry's text shown inside one line of ours (a label, a name, a description): its line
    breaks and controls removed too, so it cannot print a line of its own that looks like ours."""
    return printable(str(text))


def say(text: str, err: bool = False) -> None:
    """Print text that may come from a server: no terminal escapes, no bidi tricks, lines kept."""
    click.echo(printable(str(text), keep_lines=True), err=err)


def fail(error: ClientError):
    kind = next((code for cls, code in EXIT.items() if isinstance(error, cls)), 1)
    label = {2: "invalid input", 3: "the server refused"}.get(kind, "error")
    say(f"tomaat: {label}: {' '.join(str(error).split())}", err=True)
    sys.exit(kind)


def _labelled(indent: str, label: str, value: str, lines: bool) -> str:
    """label: value, further lines indented under the value, so server text cannot pose as a line of ours."""
    text = printable(value, keep_lines=lines).splitlines() or [""]
    return f"{indent}{label}: " + ("\n" + indent + " " * (len(label) + 2)).join(text)


def _model_lines(model: dict, indent: str) -> list[str]:
    """The model metadata a server or registry entry states (tomaat.protocol.metadata.parse), for people."""
    lines = [_labelled(indent, label, model[name], name in LINES) for name, label in MODEL if model[name]]
    if model["accuracy"]:
        lines.append(f"{indent}accuracy:")
        lines.extend(f"{indent}  {printable(describe_result(result))}" for result in model["accuracy"])
    return lines


def trust_options(function):
    function = click.option(
        "--insecure", is_flag=True, help="Accept any TLS certificate and remember nothing (explicit choice only)."
    )(function)
    function = click.option(
        "--trust", "fingerprint", metavar="FINGERPRINT", help="Pin the server's SHA-256 certificate fingerprint."
    )(function)
    return function


def credential_options(prefix: str = ""):
    """--token, --token-file, --client-cert, --client-key (each after `--{prefix}` where another service's
    options already hold those names, as `tomaat dicomweb predict` does for its PACS), handed to the command as
    one `credentials` dict of AsyncClient keywords. TOMAAT_TOKEN is read when neither token option is given."""

    def decorate(function):
        @functools.wraps(function)
        def command(*args, service_token, service_token_file, client_cert, client_key, **kwargs):
            return function(
                *args,
                credentials=_credentials(service_token, service_token_file, client_cert, client_key, prefix),
                **kwargs,
            )

        token, cert = f"--{prefix}token", f"--{prefix}client-cert"
        options = (
            click.option(
                token,
                "service_token",
                metavar="TEXT",
                help=f"Bearer token for the service; others see a command line, so prefer {token}-file or ${ENVIRONMENT}.",
            ),
            click.option(
                f"{token}-file", "service_token_file", metavar="PATH", help=f"A file whose first line is the {token}."
            ),
            click.option(
                cert, "client_cert", metavar="PEM", help="Client certificate for mutual TLS (its chain may follow it)."
            ),
            click.option(
                f"--{prefix}client-key", "client_key", metavar="PEM", help=f"The unencrypted PEM key of {cert}."
            ),
        )
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _credentials(token, token_file, cert, key, prefix: str) -> dict:
    from .credentials import ClientCertificate, resolve_token

    if token is not None and token_file is not None:
        raise click.UsageError(f"give --{prefix}token or --{prefix}token-file, not both")
    if bool(cert) != bool(key):
        raise click.UsageError(f"--{prefix}client-cert and --{prefix}client-key go together: give both or neither")
    try:
        return {
            "token": resolve_token(token, token_file, warn=lambda line: say(line, err=True)),
            "client_cert": ClientCertificate(cert, key) if cert else None,
        }
    except ClientError as error:
        fail(error)
        raise  # unreachable: fail() exits


def access_line(methods, required=()) -> str | None:
    """`access: token, oidc (predict, metrics need an identity)` from a service's /info or registry entry; None
    for an open service. The values come from the network, so only text is shown, and inline."""
    methods = [inline(m) for m in methods if isinstance(m, str) and m.strip()] if isinstance(methods, list) else []
    required = [inline(r) for r in required if isinstance(r, str) and r.strip()] if isinstance(required, list) else []
    if not methods:
        return None
    needs = f" ({', '.join(required)} {'needs' if len(required) == 1 else 'need'} an identity)" if required else ""
    return f"access: {', '.join(methods)}{needs}"


@click.command()
@click.argument("registry_url", default=DEFAULT_REGISTRY, required=False)
@click.option("--modality", help="Only services for this modality (case-insensitive).")
@click.option("--anatomy", help="Only services for this anatomy.")
@click.option("--task", help="Only services doing this task.")
@click.option("--json", "as_json", is_flag=True, help="Print the services as JSON.")
@trust_options
@credential_options()
def discover(registry_url, modality, anatomy, task, as_json, fingerprint, insecure, credentials):
    """List the services a registry knows, grouped by modality, anatomy and task."""
    from .blocking import discover as find

    try:
        services = find(
            registry_url, modality, anatomy, task, fingerprint=fingerprint, insecure=insecure, **credentials
        )
    except ClientError as error:
        fail(error)
    if as_json:
        say(json.dumps(services, indent=2))
        return
    if not services:
        say(f"no services at {registry_url}" + (" match the filters" if modality or anatomy or task else ""))
        return
    groups = defaultdict(list)
    for service in services:
        groups[(service.get("modality", ""), service.get("anatomy", ""), service.get("task", ""))].append(service)
    for (mod, ana, tsk), members in sorted(groups.items(), key=lambda g: tuple(s.lower() for s in g[0])):
        say(f"{inline(mod)} / {inline(ana)} / {inline(tsk)}")
        for service in sorted(members, key=lambda s: s.get("name", "")):
            name, url, sid = (
                inline(service.get(key, default))
                for key, default in (("name", "?"), ("prediction_url", ""), ("SID", ""))
            )
            say(f"  {name:<24} {url}  SID {sid}")
            if service.get("description"):
                say(f"  {'':<24} {inline(service['description'])}")
            indent = f"  {'':<24} "
            if service["version"]:
                say(_labelled(indent, "version", service["version"], False))
            for line in _model_lines(service, indent):
                say(line)
            access = access_line(service.get("access"))
            if access:
                say(indent + access)


def _show_interface(info) -> None:
    from .requests import default, describe

    meta = info.metadata
    if info.protocol >= 2:
        say(f"{inline(meta.get('name', '?'))} {inline(meta.get('version', ''))}".rstrip())
        say(
            f"  {inline(meta.get('modality', ''))} / {inline(meta.get('anatomy', ''))} / {inline(meta.get('task', ''))}"
        )
        if meta.get("description"):
            say(f"  {inline(meta['description'])}")
        for line in _model_lines(info.model, "  "):
            say(line)
        if meta.get("tls_fingerprint"):
            say(f"  TLS fingerprint: {meta['tls_fingerprint']}")
        access = meta.get("access")
        shown = access_line(access.get("methods"), access.get("required")) if isinstance(access, dict) else None
        if shown:
            say(f"  {shown}")
    else:
        say("a v1 server (no /info): only its inputs are known")
    say("inputs:")
    for element in info.inputs:
        filled = default(element)
        suffix = (
            f" [default {filled:g}]"
            if isinstance(filled, float)
            else f" [default {filled}]"
            if filled is not None
            else ""
        )
        say(f"  {describe(element)}{suffix}")
    if info.outputs:
        say("outputs:")
        for element in info.outputs:
            label = f" ({inline(element.label)})" if element.label else ""
            say(f"  '{inline(element.field)}' {element.output_type}{label}")


@click.command()
@click.argument("url")
@trust_options
@credential_options()
def interface(url, fingerprint, insecure, credentials):
    """Show a server's metadata and the inputs it accepts."""
    from .blocking import Client

    try:
        _show_interface(Client(url, fingerprint=fingerprint, insecure=insecure, **credentials).info())
    except ClientError as error:
        fail(error)


def pairs(values, option: str) -> dict:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise click.UsageError(f"{option} {value!r}: expected NAME=VALUE")
        pairs[name.strip()] = rest
    return pairs


def _variations(values, option: str) -> list[dict]:
    """One {name: value} per combination: a name given several times takes each of its values in turn.

    `--set threshold=300 --set threshold=500 --set mode=fast` is two predictions; a value repeated counts
    once. Values are never split at commas: a radio button's option may hold one.
    """
    given: dict[str, list[str]] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            raise click.UsageError(f"{option} {value!r}: expected NAME=VALUE")
        chosen = given.setdefault(name.strip(), [])
        if rest not in chosen:
            chosen.append(rest)
    names = list(given)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*given.values())]


def _folder_names(variations: list[dict]) -> list[str]:
    """Each variation's subfolder of --out, named by the settings that vary (`threshold=300`, `a=1,b=x`)."""
    varied = [name for name in variations[0] if len({v[name] for v in variations}) > 1]
    names, used = [], set()
    for variation in variations:
        base = ",".join(f"{name}={variation[name]}" for name in varied)
        base = re.sub(r"[^A-Za-z0-9_.,=+-]+", "_", base).strip(".") or "variation"
        name, number = base, 2
        while name in used:
            name, number = f"{base}_{number}", number + 1
        used.add(name)
        names.append(name)
    return names


class Progress:
    """An upload bar, then a spinner while the server works (rich, on stderr; quiet when not a terminal)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        self.console = Console(stderr=True)
        self.bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = None
        self.status = None

    def upload(self, sent: int, total: int) -> None:
        if not self.console.is_terminal:
            return  # a log or a pipe gets the summary, not animation frames
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("uploading", total=total)
        self.bar.update(self.task, completed=sent, total=total)  # a volume to the store, then the request

    def sent(self, prepared) -> None:
        if self.task is not None:
            self.bar.stop()
            self.task = None
        if not self.console.is_terminal:
            return
        self.status = self.console.status("the server is working…")
        self.status.start()

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()
        if self.status is not None:
            self.status.stop()


@click.command()
@click.argument("url")
@click.option("--input", "inputs", multiple=True, metavar="NAME=PATH", help="A volume, fiducials or transform file.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="A slider, checkbox or option value. A name given several times makes one prediction per value "
    "(per combination), each written to its own folder of --out; the volume is uploaded once.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the outputs into.")
@click.option("--async", "prefer_async", is_flag=True, help="Ask for a delayed response and poll /responses.")
@click.option(
    "--format", "volume_format", type=click.Choice(["nii.gz", "mha", "nrrd"]), default="nii.gz", show_default=True
)
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait for the result.")
@click.option(
    "--compress/--no-compress",
    default=None,
    help="Compress volumes for the upload, or not [default: when it pays: a server not on this machine, "
    "a volume of 256 KiB or more that shrinks to 60% or less].",
)
@trust_options
@credential_options()
def predict(
    url, inputs, settings, out, prefer_async, volume_format, timeout, compress, fingerprint, insecure, credentials
):
    """Send inputs to the server at URL and write each output into --out."""
    from .blocking import Client

    files = pairs(inputs, "--input")
    variations = _variations(settings, "--set")
    folders = [out] if len(variations) == 1 else [os.path.join(out, name) for name in _folder_names(variations)]
    done = []
    try:
        series = _dicom_folders(files)
        several = len(variations) > 1
        options = {"fingerprint": fingerprint, "insecure": insecure, "result_timeout": timeout, "compress": compress}
        options.update(credentials)
        client = Client(url, reuse=True if several else None, **options)
        try:
            for variation, folder in zip(variations, folders, strict=True):
                progress = Progress()
                try:
                    given = {**files, **variation}
                    result = client.predict(
                        prefer_async=prefer_async, progress=progress.upload, on_sent=progress.sent, **given
                    )
                finally:
                    progress.close()
                written = result.save(folder, volume_format)
                if series:
                    from ..dicom.loop import write_seg_files

                    written += write_seg_files(result, client.info(), series, folder, lambda text: say(text, err=True))
                done.append((variation, folder, result, written))
                if several:
                    _report(result, written, folder, ", ".join(f"{k}={v}" for k, v in variation.items()))
            volumes = len(result.request.volumes())
        finally:
            client.close()  # the volumes it stored on the server are deleted there
    except ClientError as error:
        fail(error)
    if several:
        say(f"{len(done)} predictions; {client.uploads} volume upload(s) for {volumes} volume input(s)")
        return
    _report(*done[0][2:4], out)


def _report(result, written, folder: str, heading: str = "") -> None:
    if heading:
        say(f"[{heading}]")
    for name, value in result.request.filled:
        shown = f"{value:g}" if isinstance(value, float) else value
        say(f"default used for '{name}': {shown}")
    for output in result.texts:
        say(f"{inline(output.label or output.name)}: {output.value}")  # a PlainText's own lines stay lines
    say(f"wrote {len(written)} file(s) to {folder}:")
    for path, what in written:
        say(f"  {path}  ({what})")


def _dicom_folders(given: dict) -> dict:
    """Read each --input that is a DICOM folder as tomaat.dicom does (confined, exact geometry), so its labels
    can go back as DICOM SEG; without the tomaat[dicom] extra, the folder is read by GDCM as before, no SEG."""
    import importlib.util
    import os

    folders = {name: path for name, path in given.items() if isinstance(path, str) and os.path.isdir(path)}
    if not folders or not all(importlib.util.find_spec(m) for m in ("pydicom", "highdicom")):
        return {}
    from ..dicom import folder_paths, read_folder, read_series

    series = {}
    for name, path in folders.items():
        names = [os.path.join(path, relative) for relative in folder_paths(path)]
        series[name] = read_series(read_folder(path), names=names)
        given[name] = series[name].image
    return series


COMMANDS = (discover, interface, predict)
