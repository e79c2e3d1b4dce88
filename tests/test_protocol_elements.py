"""Interface elements: the exact v1 dicts of PROTOCOL.md, normalisation of plain dicts, refusal of bad interfaces."""

import dataclasses
import json

import pytest

from tomaat.protocol.elements import (
    Checkbox,
    Fiducials,
    InterfaceError,
    LabelVolume,
    PlainText,
    RadioButton,
    Slider,
    Transform,
    TransformBSpline,
    TransformGrid,
    TransformLinear,
    Volume,
    VTKMesh,
    input_interface,
    output_interface,
)

# --- inputs: each element is exactly its v1 dict -------------------------------------------------

INPUT_CASES = [
    (Volume("images"), {"type": "volume", "destination": "images"}),
    (Slider("threshold", 0, 1000), {"type": "slider", "destination": "threshold", "minimum": 0, "maximum": 1000}),
    (Slider("sigma", 0.5, 2.5), {"type": "slider", "destination": "sigma", "minimum": 0.5, "maximum": 2.5}),
    (
        Checkbox("smooth", "Smooth the result"),
        {"type": "checkbox", "destination": "smooth", "text": "Smooth the result"},
    ),
    (
        RadioButton("organ", "Organ", ["liver", "spleen"]),
        {"type": "radiobutton", "destination": "organ", "text": "Organ", "options": ["liver", "spleen"]},
    ),
    (Fiducials("points"), {"type": "fiducials", "destination": "points"}),
    (Transform("initial"), {"type": "transform", "destination": "initial"}),
]


@pytest.mark.parametrize(("element", "wire"), INPUT_CASES, ids=lambda v: getattr(v, "wire_type", None))
def test_input_element_is_exactly_its_v1_dict(element, wire):
    assert element.to_dict() == wire
    # the wire form survives JSON unchanged (lists, not tuples; numbers stay numbers)
    assert json.loads(json.dumps(element.to_dict())) == wire


@pytest.mark.parametrize(("element", "wire"), INPUT_CASES, ids=lambda v: getattr(v, "wire_type", None))
def test_plain_v1_dict_is_normalised_to_the_same_element(element, wire):
    (normalised,) = input_interface([wire])
    assert type(normalised) is type(element)
    assert normalised == element
    assert normalised.to_dict() == wire


def test_radiobutton_options_are_kept_in_order_and_immutable():
    element = RadioButton("organ", "Organ", ["b", "a", "c"])
    assert element.options == ("b", "a", "c")
    assert element.to_dict()["options"] == ["b", "a", "c"]
    hash(element)  # frozen and hashable even when declared with a list
    with pytest.raises(dataclasses.FrozenInstanceError):
        element.options = ("x",)


def test_slider_default_is_the_midpoint():
    assert Slider("t", 0, 1000).default == 500
    assert Slider("t", -1.0, 0.0).default == -0.5


def test_checkbox_dict_without_text_gets_an_empty_text():
    (element,) = input_interface([{"type": "checkbox", "destination": "flag"}])
    assert element.to_dict() == {"type": "checkbox", "destination": "flag", "text": ""}


def test_input_interface_mixes_objects_and_dicts_and_keeps_order():
    result = input_interface(
        [
            Volume("images"),
            {"type": "slider", "destination": "threshold", "minimum": 0, "maximum": 10},
            Checkbox("smooth"),
        ]
    )
    assert isinstance(result, tuple)
    assert [e.destination for e in result] == ["images", "threshold", "smooth"]
    assert isinstance(result[1], Slider)
    assert input_interface(None) == ()


# --- outputs ------------------------------------------------------------------------------------

OUTPUT_CLASSES = [LabelVolume, VTKMesh, PlainText, Fiducials, TransformGrid, TransformBSpline, TransformLinear]


@pytest.mark.parametrize("cls", OUTPUT_CLASSES, ids=lambda c: c.output_type)
def test_output_element_is_type_and_field(cls):
    assert cls("result").to_output_dict() == {"type": cls.output_type, "field": "result"}
    assert cls("result", "My result").to_output_dict() == {
        "type": cls.output_type,
        "field": "result",
        "label": "My result",
    }


def test_output_type_names_are_the_v1_names():
    assert [c.output_type for c in OUTPUT_CLASSES] == [
        "LabelVolume",
        "VTKMesh",
        "PlainText",
        "Fiducials",
        "TransformGrid",
        "TransformBSpline",
        "TransformLinear",
    ]


@pytest.mark.parametrize(
    "wire",
    [
        {"type": "LabelVolume", "field": "labels"},
        {"type": "PlainText", "field": "summary", "label": "Summary"},
        {"type": "Fiducials", "field": "landmarks", "label": "Landmarks"},
        {"type": "TransformLinear", "field": "affine"},
    ],
)
def test_plain_output_dict_is_normalised(wire):
    (element,) = output_interface([wire])
    assert element.output_type == wire["type"]
    assert element.field == wire["field"]
    assert element.label == wire.get("label", "")
    assert element.to_output_dict() == wire


def test_fiducials_is_both_an_input_and_an_output():
    element = Fiducials("landmarks", "Landmarks")
    assert element.destination == element.field == "landmarks"
    assert input_interface([element])[0].to_dict() == {"type": "fiducials", "destination": "landmarks"}
    assert output_interface([element])[0].to_output_dict() == {
        "type": "Fiducials",
        "field": "landmarks",
        "label": "Landmarks",
    }


# --- invalid interfaces ---------------------------------------------------------------------------


def test_duplicate_destination_is_refused_naming_it():
    with pytest.raises(InterfaceError, match="share the destination 'images'"):
        input_interface([Volume("images"), {"type": "slider", "destination": "images", "minimum": 0, "maximum": 1}])


def test_slider_minimum_above_maximum_is_refused():
    with pytest.raises(InterfaceError, match=r"slider 'level': minimum 5 is greater than maximum 1"):
        input_interface([Slider("level", 5, 1)])
    with pytest.raises(InterfaceError, match="greater than maximum"):
        input_interface([{"type": "slider", "destination": "level", "minimum": 5, "maximum": 1}])


def test_equal_slider_bounds_are_allowed():
    (element,) = input_interface([Slider("fixed", 3, 3)])
    assert element.default == 3


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "slider", "destination": "level", "maximum": 1},  # v1 sliders always carry both bounds
        {"type": "slider", "destination": "level", "minimum": "0", "maximum": 1},
        {"type": "slider", "destination": "level", "minimum": 0, "maximum": float("inf")},
        {"type": "slider", "destination": "level", "minimum": True, "maximum": 1},
    ],
)
def test_slider_bounds_must_be_finite_numbers(spec):
    with pytest.raises(InterfaceError, match=r"slider 'level': m(in|ax)imum must be a finite number"):
        input_interface([spec])


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "radiobutton", "destination": "organ", "text": "Organ"},
        {"type": "radiobutton", "destination": "organ", "text": "Organ", "options": []},
    ],
)
def test_radiobutton_without_options_is_refused(spec):
    with pytest.raises(InterfaceError, match="radiobutton 'organ' needs at least one option"):
        input_interface([spec])
    with pytest.raises(InterfaceError, match="needs at least one option"):
        input_interface([RadioButton("organ", "Organ")])


def test_radiobutton_options_must_be_distinct_non_empty_strings():
    with pytest.raises(InterfaceError, match="lists an option twice"):
        input_interface([RadioButton("organ", "Organ", ["a", "a"])])
    with pytest.raises(InterfaceError, match="non-empty strings"):
        input_interface([RadioButton("organ", "Organ", ["a", ""])])
    with pytest.raises(InterfaceError, match="must be a list of strings"):
        input_interface([{"type": "radiobutton", "destination": "organ", "options": "ab"}])


def test_unknown_input_type_is_refused_listing_the_known_ones():
    with pytest.raises(InterfaceError) as caught:
        input_interface([{"type": "dropdown", "destination": "x"}])
    message = str(caught.value)
    assert "unknown input element type 'dropdown'" in message
    for known in ("volume", "slider", "checkbox", "radiobutton", "fiducials", "transform"):
        assert known in message


def test_unknown_output_type_is_refused_listing_the_known_ones():
    with pytest.raises(InterfaceError) as caught:
        output_interface([{"type": "Segmentation", "field": "x"}])
    message = str(caught.value)
    assert "unknown output type 'Segmentation'" in message
    assert "LabelVolume" in message and "TransformLinear" in message


@pytest.mark.parametrize("bad", [{"type": "volume"}, {"type": "volume", "destination": ""}, Volume("")])
def test_input_needs_a_destination(bad):
    with pytest.raises(InterfaceError, match="non-empty 'destination'"):
        input_interface([bad])


def test_output_needs_a_field_and_no_duplicates():
    with pytest.raises(InterfaceError, match="non-empty 'field'"):
        output_interface([{"type": "LabelVolume"}])
    with pytest.raises(InterfaceError, match="output 'labels' of type LabelVolume is declared twice"):
        output_interface([LabelVolume("labels"), {"type": "LabelVolume", "field": "labels", "label": "again"}])
    # the same field may feed two different item types
    assert len(output_interface([LabelVolume("x"), PlainText("x")])) == 2


def test_elements_of_the_wrong_side_are_refused():
    with pytest.raises(InterfaceError, match="not an input element"):
        input_interface([LabelVolume("labels")])
    with pytest.raises(InterfaceError, match="not an output element"):
        output_interface([Volume("images")])
    with pytest.raises(InterfaceError, match="not an input element"):
        input_interface(["volume"])


def test_interface_error_is_a_value_error():
    # TomaatService and `tomaat serve` report ValueError at start; InterfaceError must be one.
    assert issubclass(InterfaceError, ValueError)


# --- segment descriptions of a LabelVolume (for DICOM SEG) ---------------------------------------


def test_segments_go_through_the_info_dict_and_back_with_their_codes():
    from tomaat import Segment

    liver = Segment(1, "liver", ("10200004", "SCT", "Liver"), ("10200004", "SCT", "Liver"))
    element = LabelVolume("labels", segments=[Segment(3, "tumour"), liver])
    wire = json.loads(json.dumps(element.to_output_dict()))
    assert [s["value"] for s in wire["segments"]] == [1, 3]  # by value, whatever order they were given in
    assert wire["segments"][0]["category"] == {"code": "10200004", "scheme": "SCT", "meaning": "Liver"}
    (back,) = output_interface([wire])
    assert back == element and back.segments[1].type == ("85756007", "SCT", "Tissue")  # the default type
    assert LabelVolume("labels", segments={3: "tumour", 1: "liver"}).segments[0].name == "liver"
    assert "segments" not in LabelVolume("labels").to_output_dict()  # v1 clients see the element as before


@pytest.mark.parametrize(
    ("segments", "words"),
    [
        ({0: "background"}, "segment value 0 must be a label value from 1 to 65535"),
        ({70000: "x"}, "from 1 to 65535"),
        ({1: ""}, "name must be 1 to 64 characters"),
        ({1: "x" * 65}, "name must be 1 to 64 characters"),
        ({1: "a\\b"}, "backslash"),
        ([{"value": 1, "name": "a"}, {"value": 1, "name": "b"}], "described twice"),
        ([{"value": 1, "name": "a", "category": ["1", "SCT"]}], "three non-empty strings"),
        ([{"value": 1, "name": "a", "type": ["1" * 17, "SCT", "x"]}], "at most 16 characters"),
        ("liver", "must be a {value: name} dict or a list of Segment"),
    ],
)
def test_bad_segment_descriptions_are_refused_at_start_naming_the_output(segments, words):
    with pytest.raises(InterfaceError, match="LabelVolume output 'labels'") as refused:
        LabelVolume("labels", segments=segments)
    assert words in str(refused.value)
