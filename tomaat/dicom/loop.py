"""The PACS loop: a series from the hospital's archive to a prediction server, and its labels back as DICOM SEG.

Only voxels and geometry travel to the prediction server (the volume is rebuilt from the DICOM files in a
confined decoder, sent as MHA with no DICOM header); names, IDs and dates stay between the PACS and this
process. Everything that can fail is done before the first byte is stored: the SEGs of all label outputs
are built first, then stored in one STOW-RS request, so a failure leaves the PACS as it was.

One deadline (the PACS's, the command's --timeout) bounds the whole run: the PACS's exchanges take what is
left of it (web.py), and so do the prediction server's, whose client is given what is left before each call.
The confined decoders have their own limit (series.py); the deadline is checked after them, and a run past it
stores nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from ..client.errors import ClientError, ValidationError
from .web import Deadline, Pacs, TimedOut

SEG_SERIES_NUMBER = 9900  # high, as derived series usually are, so viewers list the SEGs after the scans


def new_uid() -> str:
    """A DICOM UID from a random UUID (PS3.5 B.2: the 2.25 root needs no registered organisation)."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass
class Stored:
    """What one run stored and wrote: the SEGs' SeriesInstanceUIDs (by output), and the other outputs' files."""

    segs: dict[str, str] = field(default_factory=dict)
    written: list[tuple[str, str]] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)


def volume_destination(info, given: dict) -> str:
    """The service's volume input the series goes to: the only one that --input does not fill."""
    volumes = [e.destination for e in info.inputs if e.wire_type == "volume"]
    open_ = [name for name in volumes if name not in given]
    if len(open_) == 1:
        return open_[0]
    if not volumes:
        raise ValidationError("this service takes no volume input, so a DICOM series cannot be sent to it")
    if not open_:
        raise ValidationError(
            f"every volume input ({', '.join(volumes)}) is given with --input; leave one for the series"
        )
    raise ValidationError(
        f"this service takes {len(open_)} volumes ({', '.join(open_)}); give all but one with --input NAME=PATH, "
        "and the series goes to the one left"
    )


def seg_description(info, field_name: str, label: str) -> str:
    """SeriesDescription (DICOM LO, 64 characters): the service, its version and the output."""
    name = str(info.metadata.get("name") or "tomaat service")
    version = str(info.metadata.get("version") or "")
    what = label or field_name
    return " ".join(part for part in (name, version, f"({what})") if part)[:64]


def _seg(info, output, element, series, index: int, uid: str) -> bytes:
    from .series import write_seg

    return write_seg(
        series,
        output.value,
        list(element.segments) if element is not None else None,
        series_uid=uid,
        series_description=seg_description(info, output.name, output.label),
        series_number=SEG_SERIES_NUMBER + index,
        service_name=str(info.metadata.get("name") or "tomaat service")[:64],
        service_version=str(info.metadata.get("version") or "")[:64],
    )


def _label_elements(info) -> dict:
    return {e.field: e for e in info.outputs if e.output_type == "LabelVolume"}


def segs_for(result, info, series, say: Callable[[str], None]) -> list[tuple[str, str, bytes]]:
    """(field, SeriesInstanceUID, SEG bytes) for each LabelVolume output; nothing is stored yet."""
    import SimpleITK as sitk

    described = _label_elements(info)
    made = []
    for index, output in enumerate(result.of_type("LabelVolume")):
        element = described.get(output.name)
        if not (element is not None and element.segments) and not sitk.GetArrayViewFromImage(output.value).any():
            say(f"'{output.name}' labels no voxel: no SEG of it is stored")
            continue
        uid = new_uid()
        seg = _seg(info, output, element, series, index, uid)
        say(f"made a DICOM SEG of '{output.name}' ({_size(len(seg))})")
        made.append((output.name, uid, seg))
    return made


def write_seg_files(result, info, sources: dict, out: str, say: Callable[[str], None]) -> list[tuple[str, str]]:
    """`<field>.dcm` beside each label output of a prediction on local DICOM series (`tomaat predict`).

    A label goes with the series its LabelVolume names as `grid`, else with the only series sent; one
    that is not on that series' grid (a service that resamples) gets no SEG, and a line saying why.
    """
    import os

    from .errors import DicomError

    described = _label_elements(info)
    written = []
    for index, output in enumerate(result.of_type("LabelVolume")):
        element = described.get(output.name)
        grid = element.grid if element is not None and element.grid else None
        series = sources.get(grid) if grid else next(iter(sources.values())) if len(sources) == 1 else None
        if series is None:
            continue
        try:
            seg = _seg(info, output, element, series, index, new_uid())
        except DicomError as error:
            say(f"no DICOM SEG for '{output.name}': {error}")
            continue
        path = os.path.join(out, f"{output.name}.dcm")
        with open(path, "wb") as handle:
            handle.write(seg)
        written.append((path, f"DICOM SEG on the series {series.series_uid}"))
    return written


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 100_000 else f"{count / 1e3:.0f} kB"


def _on_time(deadline: Deadline, what: str) -> None:
    if deadline.left() <= 0:
        raise TimedOut(f"{deadline} passed before {what}; nothing was stored")


def _served(client, deadline: Deadline, what: str, call):
    """A prediction server call within what is left of the deadline; running out of it is said as such.

    The blocking client takes its timeouts when made, so what is left is set on its AsyncClient (`timeout`
    per exchange, `result_timeout` for the prediction, sending included) right before the call.
    """
    _on_time(deadline, what)
    bound = getattr(client, "_async", client)
    left = deadline.left()
    bound.timeout = min(bound.timeout, left)
    bound.result_timeout = left
    try:
        return call()
    except ClientError as problem:
        if isinstance(problem, ValidationError) or deadline.left() > 0.1:  # a timeout fires at the deadline
            raise
        raise TimedOut(f"the prediction server {client.url} did not answer {what} within {deadline}; "
                       "nothing was stored") from None  # fmt: skip


def run(
    client,
    pacs: Pacs,
    study: str,
    *,
    series: str | None = None,
    modality: str | None = None,
    given: dict | None = None,
    out: str | None = None,
    volume_format: str = "nii.gz",
    say: Callable[[str], None] = lambda text: None,
    progress=None,
) -> Stored:
    """Find, retrieve, rebuild, predict, build the SEGs, then store them, all within pacs.deadline.

    `progress` is the command line's.
    """
    from .series import read_series

    deadline = pacs.deadline
    given = dict(given or {})
    info = _served(client, deadline, "asking for its interface", client.info)
    destination = volume_destination(info, given)
    found = pacs.choose(study, series, modality)
    say(f"series {found.describe()}")
    wanted = info.metadata.get("modality")
    if isinstance(wanted, str) and wanted and wanted.lower() not in ("any", found.modality.lower()):
        say(f"note: the service is for {wanted[:40]!r}, the series is {found.modality or 'of no modality'}")
    instances = pacs.retrieve(study, found.uid, progress.retrieved if progress else None)
    say(f"retrieved {len(instances)} instances ({_size(sum(map(len, instances)))})")
    names = [f"instance {k} of {len(instances)} as the PACS sent them" for k in range(1, len(instances) + 1)]
    volume = read_series(instances, names=names)
    if volume.study_uid != study or volume.series_uid != found.uid:
        raise ValidationError(f"the PACS sent instances of another series than {found.uid}; nothing was stored")
    size = "x".join(map(str, volume.image.GetSize()))
    spacing = "x".join(f"{s:g}" for s in volume.image.GetSpacing())
    say(f"volume {size} voxels of {spacing} mm, sent as '{destination}'")
    result = _served(
        client,
        deadline,
        "the prediction",
        lambda: client.predict(
            **{destination: volume.image},
            **given,
            progress=progress.upload if progress else None,
            on_sent=progress.sent if progress else None,
        ),
    )
    if progress:
        progress.close()
    stored = Stored(texts=[(o.label or o.name, o.value) for o in result.texts])
    segs = segs_for(result, info, volume, say)
    others = [o for o in result if o.type != "LabelVolume"]
    if others and out:
        from ..client.results import Result

        stored.written = Result(others).save(out, volume_format)
    elif others:
        say(f"not saved (give --out FOLDER): {', '.join(o.name for o in others)}")
    if segs:
        _on_time(deadline, "storing the segmentation")
        say(f"storing {len(segs)} SEG(s) in study {study}")
        pacs.store(study, [seg for _, _, seg in segs])
        stored.segs = {name: uid for name, uid, _ in segs}
    else:
        say("no label volume to store: nothing was stored in the PACS")
    return stored
