"""The registry's front page: the live services for people, grouped as clients group them.

Every announced value comes from whoever holds a key, so every one of them is
escaped, attribute values included; the URLs in links were already checked to
be http(s) when announced, so no javascript: link can appear.
"""

from __future__ import annotations

import datetime
from html import escape
from itertools import groupby

from ..protocol.metadata import describe_result

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }
h2 { border-bottom: 1px solid #ccc; margin-top: 1.5em; }
h3 { margin: 1em 0 0.3em 1em; } h4 { margin: 0.6em 0 0.3em 2em; color: #555; }
ul { margin-left: 2em; } li { margin-bottom: 0.8em; }
.description { white-space: pre-wrap; margin: 0.2em 0; } .meta, code { color: #666; font-size: 0.9em; }
.model { white-space: pre-wrap; margin: 0.2em 0; font-size: 0.9em; } .disclaimer { font-weight: bold; }
ul.accuracy { margin: 0.2em 0 0.2em 1em; font-size: 0.9em; } ul.accuracy li { margin: 0; }
"""

GROUPS = ("modality", "anatomy", "task")
MODEL = (("licence", "licence"), ("intended_use", "intended use"), ("citation", "cite as"))


def _key(value: str) -> str:
    return value.casefold()


def sort_services(services: list[dict]) -> list[dict]:
    """By modality, anatomy, task, then name, ignoring case: the order of /discover and of the page."""
    return sorted(services, key=lambda s: (*(_key(s[name]) for name in GROUPS), _key(s["name"]), s["sid"]))


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _model(service: dict) -> str:
    """The model metadata the service stated, each value escaped like everything announced."""
    parts = [f'<div class="model">{label}: {escape(service[name])}</div>' for name, label in MODEL if service.get(name)]
    if service.get("disclaimer"):
        parts.append(f'<div class="model disclaimer">{escape(service["disclaimer"])}</div>')
    results = service.get("accuracy") or []
    if results:
        items = "".join(f"<li>{escape(describe_result(result))}</li>" for result in results)
        parts.append(f'<div class="model">accuracy:</div><ul class="accuracy">{items}</ul>')
    return "".join(parts)


def _access(service: dict) -> str:
    """How the service asks its clients to prove who they are; nothing for an open service."""
    methods = service.get("access") or []
    if not methods:
        return ""
    return f'<div class="meta access">access: {escape(", ".join(methods))}</div>'


def _page_link(prediction_url: str) -> str:
    """The browser page every tomaat prediction server serves beside /predict; older servers have none."""
    if not prediction_url.endswith("/predict"):
        return ""
    page = escape(prediction_url[: -len("predict")] + "app/", quote=True)
    return f' · <a class="page" href="{page}" rel="nofollow noopener noreferrer">open in the browser</a>'


def _service(service: dict) -> str:
    url = escape(service["prediction_url"], quote=True)
    description = escape(service["description"])
    version = escape(service.get("version", ""))
    return (
        f"<li><strong>{escape(service['name'])}</strong>"
        + (f" {version}" if version else "")
        + f" <code>SID {escape(service['sid'])}</code><br>"
        f'<a href="{url}" rel="nofollow noopener noreferrer">{url}</a>'
        + _page_link(service["prediction_url"])
        + (f'<div class="description">{description}</div>' if description else "")
        + _model(service)
        + _access(service)
        + f'<div class="meta">last announced {_when(service["announced"])}</div></li>'
    )


def _grouped(services: list[dict], level: int) -> list[str]:
    if level == len(GROUPS):
        return ["<ul>", *(_service(s) for s in services), "</ul>"]
    name = GROUPS[level]
    parts = []
    for _, group in groupby(services, key=lambda s: _key(s[name])):
        members = list(group)
        # the group is titled as its first member spells it: "MRI" and "mri" are one group
        parts.append(f"<h{level + 2}>{escape(members[0][name])}</h{level + 2}>")
        parts.extend(_grouped(members, level + 1))
    return parts


def render_page(services: list[dict], expiry: float) -> bytes:
    services = sort_services(services)
    count = f"{len(services)} service{'s' if len(services) != 1 else ''}"
    body = _grouped(services, 0) if services else ["<p>No service has announced itself recently.</p>"]
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>TOMAAT registry</title><style>{_STYLE}</style></head><body>",
        "<h1>TOMAAT services</h1>",
        f"<p>{count} announced in the last {expiry:g} seconds, by modality, anatomy and task. "
        'The same list as JSON: <a href="discover">/discover</a>.</p>',
        *body,
        "</body></html>",
    ]
    return "\n".join(page).encode("utf-8")
