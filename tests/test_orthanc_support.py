"""The test PACS and the synthetic series: what the PACS loop's tests stand on.

The series' geometry is checked against SimpleITK's GDCM reader (no PACS needed); the rest runs against the
real Orthanc instances of scripts/orthanc.sh and is skipped without them (tests/orthanc_support.py).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from orthanc_support import (
    AUTH,
    DICOMWEB_AUTH_URL,
    DICOMWEB_URL,
    hu_volume,
    make_ct_series,
    needs_orthanc,
    needs_orthanc_auth,
    orthanc_root,
    series_uids,
    store,
    to_bytes,
    web_client,
)

SERIES_UID = "0020000E"


def read_with_gdcm(series):
    """The series as SimpleITK's GDCM series reader sees it, from files in a temp folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="ct-series-") as folder:
        for number, dataset in enumerate(series.datasets):  # file names in list order, not slice order
            with open(os.path.join(folder, f"{number:03d}.dcm"), "wb") as handle:
                handle.write(to_bytes(dataset))
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, series.series_uid)
        assert len(names) == len(series.datasets)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(names)
        return reader.Execute()


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_make_ct_series_reads_back_with_gdcm(shuffle):
    series = make_ct_series(shuffle=shuffle, seed=3)
    positions = [float(np.dot(np.array(ds.ImagePositionPatient, float), series.normal)) for ds in series.datasets]
    assert (positions == sorted(positions)) is not shuffle  # the shuffled case really is out of order

    image = read_with_gdcm(series)

    assert image.GetSize() == (24, 20, 12)
    np.testing.assert_allclose(image.GetSpacing(), (1.0, 0.8, 2.5), atol=1e-6)
    np.testing.assert_allclose(series.spacing, (1.0, 0.8, 2.5))
    np.testing.assert_allclose(image.GetOrigin(), (-120.5, 33.25, 410.0), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), series.origin, atol=1e-9)
    np.testing.assert_allclose(image.GetDirection(), series.direction, atol=1e-9)
    direction = np.array(series.direction).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    assert np.abs(direction - np.round(direction)).max() > 0.1  # oblique, not a permutation of the axes
    pixels = sitk.GetArrayFromImage(image)
    np.testing.assert_array_equal(pixels, series.volume)
    assert series.volume.min() >= -1000 and series.volume.max() >= 300
    assert len({bytes(plane) for plane in series.volume}) == 12  # every slice differs


def test_make_ct_series_sizes_and_spacing_follow_the_arguments():
    series = make_ct_series(cols=7, rows=5, slices=3, pixel_spacing=(2.0, 0.5), slice_spacing=4.0, rotation_deg=(0, 0))
    image = read_with_gdcm(series)
    assert image.GetSize() == (7, 5, 3)
    np.testing.assert_allclose(image.GetSpacing(), (0.5, 2.0, 4.0), atol=1e-6)  # x from the column spacing
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-12)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), series.volume)
    assert {ds.StudyInstanceUID for ds in series.datasets} == {series.study_uid}
    assert len({ds.SOPInstanceUID for ds in series.datasets}) == 3
    other = make_ct_series(study_uid=series.study_uid)
    assert other.study_uid == series.study_uid and other.series_uid != series.series_uid


def test_orthanc_root():
    assert orthanc_root("http://127.0.0.1:18042/dicom-web") == "http://127.0.0.1:18042"
    assert orthanc_root("http://127.0.0.1:18042/dicom-web/") == "http://127.0.0.1:18042"
    with pytest.raises(ValueError):
        orthanc_root("http://127.0.0.1:18042/")


@needs_orthanc
def test_series_round_trip_through_the_pacs():
    series = make_ct_series(shuffle=True, seed=11)
    assert series.series_uid not in series_uids(DICOMWEB_URL)
    # Datasets and Part 10 bytes alike.
    store(DICOMWEB_URL, series.datasets[:6] + [to_bytes(ds) for ds in series.datasets[6:]])
    assert series_uids(DICOMWEB_URL, series.study_uid) == {series.series_uid}
    assert series.series_uid in series_uids(DICOMWEB_URL)

    client = web_client(DICOMWEB_URL)
    found = client.search_for_series(series.study_uid)
    assert [match[SERIES_UID]["Value"][0] for match in found] == [series.series_uid]

    retrieved = client.retrieve_series(series.study_uid, series.series_uid)
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(series.slice_uids)
    np.testing.assert_array_equal(hu_volume(retrieved), series.volume)
    by_uid = {ds.SOPInstanceUID: ds for ds in retrieved}
    for original in series.datasets:
        copy = by_uid[original.SOPInstanceUID]
        assert copy.PixelData == original.PixelData
        assert [float(v) for v in copy.ImagePositionPatient] == [float(v) for v in original.ImagePositionPatient]


@needs_orthanc
def test_a_second_series_joins_its_study():
    first = make_ct_series(slices=2)
    second = make_ct_series(slices=3, study_uid=first.study_uid)
    store(DICOMWEB_URL, first.datasets)
    assert series_uids(DICOMWEB_URL, first.study_uid) == {first.series_uid}
    store(DICOMWEB_URL, second.datasets)
    assert series_uids(DICOMWEB_URL, first.study_uid) == {first.series_uid, second.series_uid}
    store(DICOMWEB_URL, second.datasets[:1])  # again: Orthanc answers AlreadyStored
    found = web_client(DICOMWEB_URL).search_for_series(first.study_uid)
    assert {match[SERIES_UID]["Value"][0] for match in found} == {first.series_uid, second.series_uid}


@needs_orthanc_auth
def test_the_auth_instance_refuses_without_credentials():
    studies = DICOMWEB_AUTH_URL.rstrip("/") + "/studies"
    assert requests.get(studies, timeout=10).status_code == 401
    assert requests.get(studies, auth=(AUTH[0], AUTH[1] + "-wrong"), timeout=10).status_code == 401
    assert requests.get(studies, auth=AUTH, timeout=10).status_code == 200
    with pytest.raises(requests.HTTPError) as refused:
        web_client(DICOMWEB_AUTH_URL).search_for_studies()
    assert refused.value.response.status_code == 401

    series = make_ct_series(slices=2)
    root = orthanc_root(DICOMWEB_AUTH_URL)
    answer = requests.post(f"{root}/instances", data=to_bytes(series.datasets[0]), timeout=10)
    assert answer.status_code == 401
    assert series_uids(DICOMWEB_AUTH_URL, series.study_uid, auth=AUTH) == set()  # nothing was added


@needs_orthanc_auth
def test_the_auth_instance_works_with_credentials():
    series = make_ct_series(slices=4, shuffle=True)
    store(DICOMWEB_AUTH_URL, series.datasets, auth=AUTH)
    assert series_uids(DICOMWEB_AUTH_URL, series.study_uid, auth=AUTH) == {series.series_uid}

    client = web_client(DICOMWEB_AUTH_URL, auth=AUTH)
    found = client.search_for_series(series.study_uid)
    assert [match[SERIES_UID]["Value"][0] for match in found] == [series.series_uid]
    retrieved = client.retrieve_series(series.study_uid, series.series_uid)
    np.testing.assert_array_equal(hu_volume(retrieved), series.volume)
