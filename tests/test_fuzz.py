"""Property-based fuzzing: the field parser and announcement validation raise only their own errors."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_protocol_inputs import decode_field

from tomaat.errors import RequestError
from tomaat.files.limits import Allowance, Limits
from tomaat.protocol.elements import Checkbox, Fiducials, RadioButton, Slider, Transform, Volume
from tomaat.registry.announcement import check_announcement, check_withdrawal, read_object

ELEMENTS = [
    Volume("images"),
    Slider("threshold", 0, 1000),
    Checkbox("flag"),
    RadioButton("choice", "Choose", ["a", "b"]),
    Fiducials("points"),
    Transform("transform"),
]
PREFIXES = [b"", b"NRRD0004\n", b"ObjectType = Image\n", b"\x1f\x8b", b"\\\x01\x00\x00", b"ElementDataFile = LOCAL\n"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.sampled_from(ELEMENTS), st.sampled_from(PREFIXES), st.binary(max_size=600))
def test_decode_field_raises_only_request_errors(element, prefix, raw):
    try:
        decode_field(element, prefix + raw, Allowance(Limits(max_voxels=10**6)))
    except RequestError as error:
        assert error.message and 400 <= error.status < 500


@FUZZ
@given(st.integers(1, 7), st.lists(st.integers(-(2**15), 2**15 - 1), min_size=7, max_size=7), st.integers(-8, 128))
def test_decode_field_survives_any_nifti_dimensions(ndim, dims, bitpix):
    import struct

    header = bytearray(352)
    header[0:4] = struct.pack("<i", 348)
    header[40:56] = struct.pack("<8h", ndim, *dims)
    header[72:74] = struct.pack("<h", bitpix)
    header[108:112] = struct.pack("<f", 352.0)
    header[344:348] = b"n+1\x00"
    try:
        decode_field(Volume("images"), bytes(header) + bytes(64), Allowance(Limits(max_voxels=10**6)))
    except RequestError as error:
        assert 400 <= error.status < 500


JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=80),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(["api_key", "prediction_url", "interface_url", "name", "modality", "anatomy", "task"])


@FUZZ
@given(st.dictionaries(FIELDS | st.text(max_size=10), JSON | st.from_regex(r"(https?|file|javascript):.{0,40}")))
def test_announcement_validation_collects_problems_and_never_raises(data):
    for check in (check_announcement, check_withdrawal):
        checked = check(data)
        assert all(isinstance(problem, str) and problem for problem in checked.problems)
        assert checked.problems or checked.api_key


@FUZZ
@given(st.binary(max_size=300) | JSON.map(lambda value: json.dumps(value).encode()))
def test_read_object_raises_only_value_error(body):
    try:
        assert isinstance(read_object(body), dict)
    except ValueError as error:
        assert "expected a JSON object" in str(error)
