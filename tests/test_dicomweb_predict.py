"""The PACS loop end to end: a real Orthanc, a real prediction server, `tomaat dicomweb predict` as a user runs it.

A CT series made in the test (int16, oblique, offset origin, 1 x 0.8 x 2.5 mm, stored in shuffled order) is
put in the PACS; the command finds it, retrieves it, sends it, and stores the labels back as a DICOM SEG that
is read here with highdicom and checked frame by frame against the source instances.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from browser_support import ROOT, Served
from orthanc_support import (
    AUTH,
    COMPRESSORS,
    DICOMWEB_AUTH_URL,
    DICOMWEB_URL,
    compressed,
    make_ct_series,
    needs_orthanc,
    needs_orthanc_auth,
    series_uids,
    store,
    web_client,
)

THRESHOLD = 300
CORE = 360  # the box is 300 HU plus a gradient of up to 116 HU: its upper part is the "core"

SEGMENTED = """
import numpy as np
import SimpleITK as sitk
from tomaat import LabelVolume, PlainText, Segment, Slider, TomaatApp, Volume

class Box(TomaatApp):
    name = "Box finder"
    version = "2.1"
    modality = "CT"
    input_interface = [Volume("images"), Slider("threshold", 0, 1000)]
    output_interface = [
        LabelVolume("labels", "Box", segments=[Segment(1, "box", type=("10200004", "SCT", "Liver")), Segment(3, "core")]),
        PlainText("summary", "Summary"),
    ]

    def inference(self, data):
        array = sitk.GetArrayFromImage(data["images"])
        labels = np.where(array >= CORE, 3, np.where(array >= data["threshold"], 1, 0)).astype(np.uint8)
        image = sitk.GetImageFromArray(labels)
        image.CopyInformation(data["images"])
        data["labels"] = image
        data["summary"] = f"{int((labels > 0).sum())} voxels"
        return data
""".replace("CORE", str(CORE))


@pytest.fixture(scope="module")
def box_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("box")
    (folder / "app.py").write_text(textwrap.dedent(SEGMENTED))
    served = Served(str(folder / "app.py"), folder)
    yield served
    served.stop()


def dicomweb(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tomaat", "dicomweb", "predict", *arguments]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TOMAAT_DICOMWEB_")}
    return subprocess.run(
        command, cwd=ROOT, env={**environment, **(env or {})}, capture_output=True, text=True, timeout=180
    )


def put(series, url=DICOMWEB_URL, auth=None):
    store(url, series.datasets, auth=auth)
    return series


def read_seg(url: str, study: str, uid: str, auth=None):
    import highdicom

    (dataset,) = web_client(url, auth).retrieve_series(study, uid)
    return highdicom.seg.Segmentation.from_dataset(dataset)


def expected_labels(volume: np.ndarray) -> np.ndarray:
    return np.where(volume >= CORE, 3, np.where(volume >= THRESHOLD, 1, 0)).astype(np.uint8)


@needs_orthanc()
def test_a_series_is_segmented_and_its_labels_stored_next_to_it_as_a_dicom_seg(box_server, tmp_path):
    series = put(make_ct_series(shuffle=True, seed=7))
    before = series_uids(DICOMWEB_URL, series.study_uid)

    done = dicomweb(
        box_server.url,
        "--dicomweb",
        DICOMWEB_URL,
        "--study",
        series.study_uid,
        "--set",
        f"threshold={THRESHOLD}",
        "--out",
        str(tmp_path / "out"),
    )

    assert done.returncode == 0, done.stderr
    uid = done.stdout.strip()
    assert done.stdout == uid + "\n" and uid.startswith("2.25.")  # the SEG's SeriesInstanceUID and nothing else
    assert series_uids(DICOMWEB_URL, series.study_uid) == before | {uid}
    assert "retrieved 12 instances" in done.stderr and "Summary:" in done.stderr
    assert (tmp_path / "out" / "summary.txt").read_text().strip().endswith("voxels")

    seg = read_seg(DICOMWEB_URL, series.study_uid, uid)
    assert (
        seg.StudyInstanceUID == series.study_uid and seg.FrameOfReferenceUID == series.datasets[0].FrameOfReferenceUID
    )
    assert seg.SeriesDescription == "Box finder 2.1 (Box)" and seg.Modality == "SEG"
    assert seg.PatientID == series.datasets[0].PatientID  # the SEG belongs to the same patient and study
    names = {d.SegmentNumber: (d.SegmentLabel, d.SegmentedPropertyTypeCodeSequence[0].CodeMeaning)
             for d in seg.SegmentSequence}  # fmt: skip
    assert names == {1: ("box", "Liver"), 2: ("core", "Tissue")}  # label values 1 and 3 are segments 1 and 2

    # Every frame refers to the source slice it was cut from and holds that slice's voxels of its segment;
    # rebuilt on the source grid, the SEG is exactly the label volume the server answers for the series.
    assert_frames_match(seg, series, expected_labels(series.volume))
    answered = sitk.GetArrayFromImage(server_labels(box_server.url, series, tmp_path))
    np.testing.assert_array_equal(answered, expected_labels(series.volume))
    np.testing.assert_array_equal(seg_on_source_grid(seg, series), answered)


def frames(seg, series):
    """(slice index in the source's order, label value, frame pixels) for each frame of the SEG."""
    value = {int(d.SegmentNumber): {"box": 1, "core": 3}[d.SegmentLabel] for d in seg.SegmentSequence}
    by_uid = {uid: k for k, uid in enumerate(series.slice_uids)}
    pixels = seg.pixel_array.reshape(-1, *series.volume.shape[1:])
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        yield by_uid[source], value[segment], pixels[index]


def assert_frames_match(seg, series, labels: np.ndarray) -> None:
    seen = set()
    for k, value, pixels in frames(seg, series):
        np.testing.assert_array_equal(pixels, (labels[k] == value).astype(np.uint8), err_msg=f"slice {k}, {value}")
        seen.add((k, value))
    present = {(k, v) for v in (1, 3) for k in range(labels.shape[0]) if (labels[k] == v).any()}
    assert present <= seen  # no slice with labels is missing a frame


def seg_on_source_grid(seg, series) -> np.ndarray:
    """The SEG's label map (label values, not segment numbers) stacked in the source's slice order."""
    labels = np.zeros(series.volume.shape, np.uint8)
    for k, value, pixels in frames(seg, series):
        labels[k][pixels > 0] = value
    return labels


def server_labels(url: str, series, folder) -> sitk.Image:
    """The server's own answer for the series' volume, asked with `tomaat predict` from a file."""
    image = sitk.GetImageFromArray(series.volume)
    image.SetSpacing(series.spacing)
    image.SetOrigin(series.origin)
    image.SetDirection(series.direction)
    sitk.WriteImage(image, str(folder / "volume.mha"))
    command = [sys.executable, "-m", "tomaat", "predict", url, "--input", f"images={folder / 'volume.mha'}"]
    done = subprocess.run(
        [*command, "--set", f"threshold={THRESHOLD}", "--out", str(folder / "direct")], cwd=ROOT, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    return sitk.ReadImage(str(folder / "direct" / "labels.nii.gz"))


@needs_orthanc()
def test_labels_with_no_voxel_store_nothing_and_say_so(tmp_path):
    series = put(make_ct_series(seed=15))
    before = series_uids(DICOMWEB_URL, series.study_uid)
    served = Served("examples/threshold.py", tmp_path)  # no segments described: an empty label is no SEG
    try:
        done = dicomweb(served.url, "--dicomweb", DICOMWEB_URL, "--study", series.study_uid, "--set", "threshold=1000")
    finally:
        served.stop()
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert "'labels' labels no voxel: no SEG of it is stored" in done.stderr
    assert "nothing was stored in the PACS" in done.stderr
    assert series_uids(DICOMWEB_URL, series.study_uid) == before


# ---- compressed series: fetched as the PACS stores them --------------------------------------------------


@needs_orthanc()
@pytest.mark.parametrize("how", sorted(COMPRESSORS))
def test_a_compressed_series_is_fetched_byte_for_byte_as_the_pacs_stores_it(how, tmp_path):
    series = make_ct_series(seed=31)
    files = compressed(series.datasets, how)
    store(DICOMWEB_URL, files)
    # Debian's Orthanc cannot transcode JPEG 2000: asking for the default transfer syntax is HTTP 500 there.
    # In a process of its own, as the command runs it: the Pacs waits on crochet's reactor thread, which
    # pytest-twisted's reactor in this process rules out.
    fetch = (
        "import sys\nfrom tomaat.dicom.web import Deadline, Pacs\n"
        "parts = Pacs(sys.argv[1], deadline=Deadline(60)).retrieve(sys.argv[2], sys.argv[3])\n"
        "for k, part in enumerate(parts):\n    open(f'{sys.argv[4]}/{k}.dcm', 'wb').write(part)\n"
    )
    command = [sys.executable, "-c", fetch, DICOMWEB_URL, series.study_uid, series.series_uid, str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fetched = [path.read_bytes() for path in tmp_path.glob("*.dcm")]
    assert sorted(fetched) == sorted(files)


@needs_orthanc()
@pytest.mark.parametrize("how", sorted(COMPRESSORS))
def test_a_compressed_series_is_segmented_and_its_labels_are_those_of_the_uncompressed_one(box_server, how):
    """Waits on the confined decoder's compressed pixel data (tomaat/dicom/decoder_process.py, slices.py)."""
    series = make_ct_series(shuffle=True, seed=32)
    store(DICOMWEB_URL, compressed(series.datasets, how))
    before = series_uids(DICOMWEB_URL, series.study_uid)

    done = dicomweb(box_server.url, "--dicomweb", DICOMWEB_URL, "--study", series.study_uid, "--set", "threshold=300")

    assert done.returncode == 0, done.stderr
    uid = done.stdout.strip()
    assert series_uids(DICOMWEB_URL, series.study_uid) == before | {uid}
    seg = read_seg(DICOMWEB_URL, series.study_uid, uid)
    assert_frames_match(seg, series, expected_labels(series.volume))
    np.testing.assert_array_equal(seg_on_source_grid(seg, series), expected_labels(series.volume))


# ---- what goes wrong: one line, the right exit status, nothing stored ---------------------------------------


def refused(done: subprocess.CompletedProcess, status: int, *words: str) -> str:
    assert done.returncode == status, (done.returncode, done.stderr)
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    for word in words:
        assert word in last, last
    return last


def missing_slice(series):
    del series.datasets[5]


def duplicate_slice(series):
    series.datasets[3].ImagePositionPatient = series.datasets[4].ImagePositionPatient


def uneven_spacing(series):
    moved = np.array(series.datasets[6].ImagePositionPatient, float) + 0.7 * series.normal
    series.datasets[6].ImagePositionPatient = [round(float(v), 6) for v in moved]


def mixed_orientation(series):
    series.datasets[2].ImageOrientationPatient = [1, 0, 0, 0, 1, 0]


@needs_orthanc()
@pytest.mark.parametrize("spoil", [missing_slice, duplicate_slice, uneven_spacing, mixed_orientation])
def test_a_series_that_is_not_one_volume_is_refused_and_nothing_is_stored(box_server, spoil):
    series = make_ct_series(seed=11)  # in slice order, so the spoilt slices are the ones named
    spoil(series)
    put(series)
    before = series_uids(DICOMWEB_URL, series.study_uid)
    done = dicomweb(box_server.url, "--dicomweb", DICOMWEB_URL, "--study", series.study_uid, "--set", "threshold=300")
    refused(done, 2, "tomaat: invalid input:")
    assert series_uids(DICOMWEB_URL, series.study_uid) == before


@needs_orthanc()
def test_unknown_studies_and_series_and_non_image_series_are_refused_naming_them(box_server):
    series = put(make_ct_series(seed=12))
    report = series.datasets[0].copy()
    for keyword in (
        "PixelData",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "PixelSpacing",
        "RescaleIntercept",
        "RescaleSlope",
    ):
        delattr(report, keyword)  # fmt: skip
    report.Modality, report.SOPClassUID = "SR", pydicom.uid.BasicTextSRStorage
    report.SeriesInstanceUID = report.SOPInstanceUID = pydicom.uid.generate_uid()
    report.file_meta.MediaStorageSOPInstanceUID, report.file_meta.MediaStorageSOPClassUID = (
        report.SOPInstanceUID, report.SOPClassUID)  # fmt: skip
    store(DICOMWEB_URL, [report])
    before = series_uids(DICOMWEB_URL, series.study_uid)
    common = (box_server.url, "--dicomweb", DICOMWEB_URL, "--set", "threshold=300")

    refused(dicomweb(*common, "--study", "1.2.3.999"), 2, "has no study 1.2.3.999")
    refused(dicomweb(*common, "--study", series.study_uid, "--series", "1.2.3.4"), 2, "has no series 1.2.3.4")
    refused(dicomweb(*common, "--study", series.study_uid, "--series", report.SeriesInstanceUID), 2, "SR series")
    refused(dicomweb(*common, "--study", series.study_uid, "--modality", "MR"), 2, "holds no MR series")
    assert series_uids(DICOMWEB_URL, series.study_uid) == before


@needs_orthanc()
def test_a_pacs_or_server_that_cannot_be_reached_is_one_line_and_status_1(box_server, tmp_path):
    from browser_support import free_port

    series = put(make_ct_series(seed=13))
    before = series_uids(DICOMWEB_URL, series.study_uid)
    down = f"http://127.0.0.1:{free_port()}"
    refused(
        dicomweb(box_server.url, "--dicomweb", down + "/dicom-web", "--study", series.study_uid),
        1,
        "could not be reached",
    )
    refused(dicomweb(down, "--dicomweb", DICOMWEB_URL, "--study", series.study_uid), 1, "tomaat: error:")
    assert series_uids(DICOMWEB_URL, series.study_uid) == before


@needs_orthanc_auth()
def test_with_basic_authentication_it_works_with_credentials_and_says_so_without(box_server):
    series = put(make_ct_series(seed=14), DICOMWEB_AUTH_URL, AUTH)
    before = series_uids(DICOMWEB_AUTH_URL, series.study_uid, AUTH)
    common = (box_server.url, "--dicomweb", DICOMWEB_AUTH_URL, "--study", series.study_uid, "--set", "threshold=300")

    last = refused(dicomweb(*common), 2, "HTTP 401", "needs credentials")
    wrong = refused(dicomweb(*common, "--user", AUTH[0], "--password", "wrong"), 2, "credentials were refused")
    assert "wrong" not in wrong and AUTH[1] not in last  # no password is ever repeated back
    assert series_uids(DICOMWEB_AUTH_URL, series.study_uid, AUTH) == before

    user, password = AUTH
    done = dicomweb(*common, env={"TOMAAT_DICOMWEB_USER": user, "TOMAAT_DICOMWEB_PASSWORD": password})
    assert done.returncode == 0, done.stderr
    assert password not in done.stderr + done.stdout
    assert series_uids(DICOMWEB_AUTH_URL, series.study_uid, AUTH) == before | {done.stdout.strip()}
