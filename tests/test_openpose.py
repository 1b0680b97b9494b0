"""OpenPose reader: hand-written frames in tmp dirs, both parsers, errors that name the file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hemo_jax.contract.keypoint_layout import BODY, FACE, LEFT_HAND, NUM_KEYPOINTS, RIGHT_HAND
from preprocess.keypoints.openpose import (
    _BATCH,
    SECTIONS,
    OpenPoseError,
    _parse_batch,
    parse_openpose_frame,
    read_openpose_dir,
)


def person(x: float, y: float, size: float, conf: float = 0.9, *, face: bool = True) -> dict:
    """A person as OpenPose writes it: keypoints spread over a box of `size` px around (x, y)."""
    grid = np.linspace(-0.5, 0.5, 137)
    kp = np.column_stack([x + size * grid, y + size * grid[::-1], np.full(137, conf)])
    kp[10:15] = 0  # seated: knees and ankles not seen
    p = {
        "person_id": [-1],
        "pose_keypoints_2d": kp[BODY].round(3).ravel().tolist(),
        "face_keypoints_2d": kp[FACE].round(3).ravel().tolist() if face else [],
        "hand_left_keypoints_2d": kp[LEFT_HAND].round(3).ravel().tolist(),
        "hand_right_keypoints_2d": kp[RIGHT_HAND].round(3).ravel().tolist(),
    }
    for key in ("pose", "face", "hand_left", "hand_right"):
        p[f"{key}_keypoints_3d"] = []
    return p


def as_array(p: dict) -> np.ndarray:
    return parse_openpose_frame({"people": [p]})[0]


def write(
    directory,
    frame: int,
    people: list[dict] | None = None,
    *,
    text: str | None = None,
    name: str | None = None,
) -> str:
    name = name or f"vid_{frame:012d}_keypoints.json"
    if text is None:
        text = json.dumps({"version": 1.3, "people": people or []}, separators=(",", ":"))
    (directory / name).write_text(text)
    return name


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_zero_one_and_two_people(tmp_path):
    a, b = person(640, 300, 200), person(1000, 350, 80)
    write(tmp_path, 0, [])
    write(tmp_path, 1, [a])
    write(tmp_path, 2, [b, a])
    seq = read_openpose_dir(tmp_path)
    assert seq.keypoints.dtype == np.float32 and seq.keypoints.shape == (3, 137, 3)
    assert seq.frames.dtype == np.int32 and seq.frames.tolist() == [0, 1, 2]
    assert not seq.keypoints[0].any()
    assert same_bits(seq.keypoints[1], as_array(a))
    assert same_bits(seq.keypoints[2], as_array(a))
    s = seq.summary
    assert (s.files, s.empty_frames, s.multi_person_frames, s.skipped, s.gaps) == (3, 1, 1, 0, 0)


def test_continuity_keeps_the_subject_when_a_larger_person_appears(tmp_path):
    subject, moved = person(400, 300, 150), person(410, 305, 150)
    write(tmp_path, 0, [subject])
    write(tmp_path, 1, [person(900, 400, 400, conf=0.95), moved])  # bigger and surer, listed first
    write(tmp_path, 2, [])
    write(tmp_path, 3, [person(900, 400, 400, conf=0.95), subject])  # after an empty frame too
    seq = read_openpose_dir(tmp_path)
    assert same_bits(seq.keypoints[1], as_array(moved))
    assert same_bits(seq.keypoints[3], as_array(subject))


def test_without_a_previous_choice_the_largest_surest_person_wins(tmp_path):
    small, large = person(200, 300, 60), person(700, 300, 300)
    write(tmp_path, 0, [small, large])
    write(tmp_path, 1, [person(190, 300, 60, conf=0.5), person(705, 300, 300, conf=0.5)])
    seq = read_openpose_dir(tmp_path)
    assert same_bits(seq.keypoints[0], as_array(large))
    assert seq.keypoints[1, 0, 0] == pytest.approx(705 - 150, abs=1)  # and it is then followed


def test_gaps_stay_gaps(tmp_path):
    for f in (3, 4, 9, 10, 12):
        write(tmp_path, f, [person(100 + f, 200, 100)])
    seq = read_openpose_dir(tmp_path)
    assert seq.frames.tolist() == [3, 4, 9, 10, 12]
    assert seq.summary.gaps == 5  # 5, 6, 7, 8, 11
    assert seq.keypoints[2, 0, 0] == pytest.approx(109 - 50, abs=1e-3)


def test_plain_openpose_names_sort_by_number_not_text(tmp_path):
    for f in (10, 9, 100, 0):
        write(tmp_path, f, [person(f, 0, 10)], name=f"clip_{f}_keypoints.json")
    (tmp_path / "notes.txt").write_text("not a frame")
    seq = read_openpose_dir(tmp_path)
    assert seq.frames.tolist() == [0, 9, 10, 100]
    assert seq.keypoints[:, 0, 0].tolist() == [-5.0, 4.0, 5.0, 95.0]


def test_names_without_a_video_prefix(tmp_path):
    write(tmp_path, 7, [person(1, 1, 1)], name="000000000007_keypoints.json")
    assert read_openpose_dir(tmp_path).frames.tolist() == [7]


def test_missing_and_empty_sections_are_zeros(tmp_path):
    p = person(500, 300, 100, face=False)
    del p["hand_left_keypoints_2d"]
    write(tmp_path, 0, [p])
    spaced = json.dumps({"people": [p]}).replace(
        '"face_keypoints_2d": []', '"face_keypoints_2d":[ ]'
    )
    write(tmp_path, 1, text=spaced)
    keypoints = read_openpose_dir(tmp_path).keypoints
    for row in keypoints:
        assert not row[FACE].any() and not row[LEFT_HAND].any()
        assert row[BODY].any() and row[RIGHT_HAND].any()
    assert same_bits(keypoints[0], keypoints[1]) and "[ ]" in spaced


def frame_with(section: str, first_value) -> str:
    p = person(5, 5, 5)
    p[section][0] = first_value
    return json.dumps({"people": [p]})


GOOD = json.dumps({"people": [person(5, 5, 5)]})
MALFORMED = {
    "truncated": (GOOD[: len(GOOD) // 2], "bad JSON"),
    "wrong_length": (GOOD.replace('_2d": [', '_2d": [1, ', 1), "has 76 values, expected 75"),
    "string_in_numbers": (frame_with("face_keypoints_2d", "x"), "non-numeric value 'x'"),
    "boolean_in_numbers": (frame_with("hand_left_keypoints_2d", True), "non-numeric value True"),
    "no_people": ('{"version": 1.3}', "no 'people' list"),
    "people_not_objects": ('{"people": [4]}', "people[0] is a int, not an object"),
    "leading_zero": (GOOD.replace('_2d": [', '_2d": [01, ', 1), "bad JSON"),
    "empty_file": ("", "bad JSON"),
    "null_section": (
        json.dumps({"people": [{**person(5, 5, 5), "face_keypoints_2d": None}]}),
        "face_keypoints_2d is a NoneType, not a list",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises_naming_it(tmp_path, case):
    text, message = MALFORMED[case]
    write(tmp_path, 0, [person(1, 1, 1)])
    bad = write(tmp_path, 1, text=text)
    write(tmp_path, 2, [person(1, 1, 1)])
    with pytest.raises(OpenPoseError, match=re.escape(bad) + ".*" + re.escape(message)):
        read_openpose_dir(tmp_path)


def test_skip_policy_leaves_zero_rows_and_counts(tmp_path):
    good, n = person(300, 300, 100), _BATCH + 50
    names = []
    bad = {5: "truncated", 6: "wrong_length", _BATCH + 10: "string_in_numbers"}
    for f in range(n):  # more than one batch, bad files in both
        if f in bad:
            names.append(write(tmp_path, f, text=MALFORMED[bad[f]][0]))
        elif f == 8:
            write(tmp_path, f, [])
        else:
            write(tmp_path, f, [good])
    seq = read_openpose_dir(tmp_path, on_error="skip")
    assert seq.summary.skipped_files == tuple(names) and seq.summary.skipped == 3
    assert len(seq.frames) == n and seq.summary.files == n and seq.summary.empty_frames == 1
    assert [f for f in range(n) if not seq.keypoints[f].any()] == [5, 6, 8, _BATCH + 10]
    assert same_bits(seq.keypoints[7], as_array(good))
    with pytest.raises(ValueError, match="on_error"):
        read_openpose_dir(tmp_path, on_error="ignore")


def test_unreadable_file_is_named_and_can_be_skipped(tmp_path):
    write(tmp_path, 0, [person(1, 1, 1)])
    (tmp_path / "vid_000000000001_keypoints.json").mkdir()  # listed, but reading fails
    with pytest.raises(OpenPoseError, match="vid_000000000001_keypoints.json: cannot read"):
        read_openpose_dir(tmp_path)
    seq = read_openpose_dir(tmp_path, on_error="skip")
    assert seq.summary.skipped_files == ("vid_000000000001_keypoints.json",)


def test_a_crowded_frame_beyond_one_read_is_read_whole(tmp_path):
    crowd = [person(100 + 20 * k, 300, 50) for k in range(60)]  # ~200 kB of JSON
    subject = person(700, 400, 300)  # the largest, written last: far past the first 64 kB
    write(tmp_path, 0, [*crowd, subject])
    path = tmp_path / "vid_000000000000_keypoints.json"
    assert path.read_text().rindex('"person_id"') > 1 << 16  # the subject starts past 64 kB
    seq = read_openpose_dir(tmp_path)
    assert seq.summary.multi_person_frames == 1
    # Only a reader that saw the end of the file can pick the last person, bit for bit.
    assert same_bits(seq.keypoints[0], as_array(subject))


def test_directory_errors(tmp_path):
    with pytest.raises(OpenPoseError, match="no \\*_keypoints.json files"):
        read_openpose_dir(tmp_path)
    with pytest.raises(OpenPoseError, match="not a directory"):
        read_openpose_dir(tmp_path / "missing")
    write(tmp_path, 1, [], name="a_1_keypoints.json")
    write(tmp_path, 1, [], name="a_0001_keypoints.json")
    with pytest.raises(OpenPoseError, match="frame 1 twice"):
        read_openpose_dir(tmp_path)
    (tmp_path / "a_0001_keypoints.json").unlink()
    write(tmp_path, 2, [], name="b_2_keypoints.json")
    with pytest.raises(OpenPoseError, match="several videos"):
        read_openpose_dir(tmp_path)
    (tmp_path / "b_2_keypoints.json").unlink()
    for name in ("a_12b_keypoints.json", "a__keypoints.json"):
        write(tmp_path, 3, [], name=name)
        with pytest.raises(OpenPoseError, match=re.escape(name) + ": no frame number"):
            read_openpose_dir(tmp_path)
        (tmp_path / name).unlink()


def messy_documents() -> list[bytes]:
    """Valid JSON that OpenPose would not write but a hand or another tool might."""
    p = person(640, 360, 300)
    spelled = ["1e3", "-2.5E-2", "3.0e+1", "-0", "-0.0", "0.0", "7", "-12.5", "1E-400"]
    body = ",".join(spelled + ["0.1"] * 66)
    docs = [
        {"people": []},
        {"version": 1.3, "people": [p, p]},
        {"people": [{"person_id": [-1]}]},  # a person with no keypoints at all
        {"people": [{"pose_keypoints_2d": [123456789.123456789, 1e-300, 5e-324] + [2**60] * 72}]},
        {"people": [{"pose_keypoints_2d": [0.30000000000000004, 1 / 3, 2 / 3] * 25}], "x": [[1]]},
    ]
    texts = [json.dumps(d).encode() for d in docs]
    texts.append(b'{"people":[{"pose_keypoints_2d":[' + body.encode() + b"]}]}")
    spaced = json.dumps({"people": [p]}, indent=2).encode()  # a newline before every number
    handmade = (
        b'{ "people" : [ { "pose_keypoints_2d" : [ '
        + b" , ".join([b"-1.5e1", b"2"] * 37 + [b"0"])
        + b' ] ,\n"face_keypoints_2d":[]\t} ] , "version" : 1.3 }\r\n'
    )
    return texts + [spaced, handmade]


def test_fast_path_is_bit_identical_to_json_on_messy_input():
    docs = messy_documents()
    for doc, fast in zip(docs, _parse_batch(docs), strict=True):
        assert fast is not None, doc[:80]  # the fast path must take these, not fall back
        strict = parse_openpose_frame(doc)
        assert len(fast) == len(strict)
        assert all(same_bits(a, b) for a, b in zip(fast, strict, strict=True)), doc[:80]


def test_fast_path_is_bit_identical_on_random_numbers():
    rng = np.random.default_rng(0)
    formats = ["{:.6g}", "{!r}", "{:.3f}", "{:.8f}", "{:.2e}", "{:.0f}", "{:.17g}"]
    docs = []
    for i in range(200):
        values = rng.normal(0, 10.0 ** rng.integers(-6, 9), 75)
        values[rng.random(75) < 0.3] = 0
        spelled = [formats[(i + j) % len(formats)].format(v) for j, v in enumerate(values.tolist())]
        text = ",".join(spelled)
        docs.append(b'{"people":[{"pose_keypoints_2d":[' + text.encode() + b"]}]}")
    fast = _parse_batch(docs)
    for doc, got in zip(docs, fast, strict=True):
        assert got is not None and same_bits(got[0], parse_openpose_frame(doc)[0]), doc[:120]


def pose_list(text: str) -> bytes:
    return ('{"people":[{"pose_keypoints_2d":' + text + "}]}").encode()


NUMBERS = "[" + ",".join(["1.5"] * 75) + "]"
# Inputs msgspec lets through as raw text and pysimdjson would read wrongly or not at all.
TRAPS = {
    "lists_in_the_list": (pose_list("[" + ",".join(["[1]"] * 75) + "]"), "non-numeric value"),
    "empty_list_in_the_list": (pose_list("[[]]"), "has 1 values, expected 75"),
    "string_as_long_as_a_list": (pose_list('"' + "x" * 75 + '"'), "is a str, not a list"),
    "object_as_long_as_a_list": (
        pose_list("{" + ",".join(f'"{i}":1' for i in range(75)) + "}"),
        "is a dict, not a list",
    ),
    "number_for_a_list": (pose_list("5"), "is a int, not a list"),
    "true_in_the_list": (pose_list("[true" + ",0" * 74 + "]"), "non-numeric value True"),
    "beyond_float64": (pose_list("[1e999" + ",0" * 74 + "]"), "no finite float32"),
    "beyond_float32": (pose_list("[3.5e38" + ",0" * 74 + "]"), "no finite float32"),
    "bad_utf8_in_a_skipped_string": (b'{"name":"\xff",' + pose_list(NUMBERS)[1:], "bad JSON"),
}


@pytest.mark.parametrize("case", sorted(TRAPS))
def test_fast_path_leaves_traps_to_the_strict_parser(tmp_path, case):
    doc, message = TRAPS[case]
    good = pose_list(NUMBERS)
    assert [p is None for p in _parse_batch([good, doc, good])] == [False, True, False]
    write(tmp_path, 0, text=good.decode())
    (tmp_path / "vid_000000000001_keypoints.json").write_bytes(doc)
    with pytest.raises(OpenPoseError, match="vid_000000000001_keypoints.json.*" + message):
        read_openpose_dir(tmp_path)


def test_numbers_beyond_int64_and_unicode_in_skipped_strings_go_the_strict_way(tmp_path):
    big = pose_list("[" + "1" * 30 + ",-18446744073709551616" + ",0" * 73 + "]")
    unicode = ('{"name":"caf\\u00e9 \u00e9",' + pose_list(NUMBERS)[1:].decode()).encode()
    assert _parse_batch([big, unicode]) == [None, None]
    for f, doc in enumerate((big, unicode)):
        (tmp_path / f"vid_{f:012d}_keypoints.json").write_bytes(doc)
    seq = read_openpose_dir(tmp_path)
    assert same_bits(seq.keypoints[0], parse_openpose_frame(big)[0])
    assert seq.keypoints[0, 0, 0] == np.float32(1.111111111111111e29)
    assert same_bits(seq.keypoints[1], parse_openpose_frame(unicode)[0])


def test_fast_path_keeps_the_last_of_repeated_keys_as_json_does():
    twos = "[" + ",".join(["2"] * 75) + "]"
    docs = [
        ('{"people":[{"pose_keypoints_2d":' + NUMBERS + '}],"people":[]}').encode(),
        (
            '{"people":[{"pose_keypoints_2d":' + NUMBERS + ',"pose_keypoints_2d":' + twos + "}]}"
        ).encode(),
        ('{"people":[{"pose\\u005fkeypoints_2d":' + twos + "}]}").encode(),  # an escaped key
    ]
    fast = _parse_batch(docs)
    for doc, got in zip(docs, fast, strict=True):
        strict = parse_openpose_frame(doc)
        assert got is not None and len(got) == len(strict), doc
        assert all(same_bits(a, b) for a, b in zip(got, strict, strict=True)), doc
    assert len(fast[0]) == 0 and fast[1][0, 0, 0] == 2 and fast[2][0, 0, 0] == 2


def reference_subjects(frames: list[list[dict]]) -> np.ndarray:
    """The rule of `_MainSubject`, written out one frame at a time."""
    previous, rows = None, []
    for frame in frames:
        people = [as_array(p) for p in frame]
        if not people:
            rows.append(np.zeros((NUM_KEYPOINTS, 3), np.float32))
            continue
        body, index = np.asarray(people)[:, BODY], None
        seen = body[..., 2] > 0
        if previous is not None:
            shared = seen & (previous[BODY][:, 2] > 0)
            count = shared.sum(1)
            if count.any():
                dx, dy = body[..., 0] - previous[BODY][:, 0], body[..., 1] - previous[BODY][:, 1]
                mean = (np.hypot(dx, dy) * shared).sum(1) / np.maximum(count, 1)
                index = int(np.where(count > 0, mean, np.inf).argmin())
        if index is None:
            x, y = body[..., 0], body[..., 1]
            width = np.where(seen, x, -np.inf).max(1) - np.where(seen, x, np.inf).min(1)
            height = np.where(seen, y, -np.inf).max(1) - np.where(seen, y, np.inf).min(1)
            size = np.sqrt(np.where(seen.any(1), width * height, 0))
            index = int((size * body[..., 2].mean(1)).argmax())
        previous = people[index]
        rows.append(previous)
    return np.asarray(rows)


def test_subject_choice_over_batches_follows_the_rule_frame_by_frame(tmp_path):
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(2 * _BATCH + 50):  # the previous choice crosses batch boundaries
        frame = []
        for _ in range(rng.choice(5, p=[0.15, 0.3, 0.3, 0.15, 0.1])):
            # Few distinct coordinates and confidences: near ties and exact ties happen.
            kp = np.column_stack(
                [
                    rng.choice([100, 101, 300], 137),
                    rng.choice([50, 51], 137),
                    rng.choice([0, 0.5, 0.9], 137),
                ]
            )
            if rng.random() < 0.1:
                kp[:, 2] = 0  # a person with no keypoint seen
            frame.append({key: kp[rows].ravel().tolist() for key, rows in SECTIONS})
        frames.append(frame)
    for f, frame in enumerate(frames):
        if f % 7 == 3:  # NaN outside the keypoints: json.loads takes it, msgspec does not
            write(tmp_path, f, text=json.dumps({"version": float("nan"), "people": frame}))
        else:
            write(tmp_path, f, frame)
    seq = read_openpose_dir(tmp_path)
    assert same_bits(seq.keypoints, reference_subjects(frames))
    assert seq.summary.multi_person_frames == sum(len(f) > 1 for f in frames) > _BATCH // 2


VALID = ["0", "-0", "-0.0", "-12.25", "1e5", "-2.5E+2", "12345678.12345678", "1e-400", " 7 "]
INVALID = ["01", "1.", ".5", "+1", "1.2.3", "1-", "0x1", "NaN", "true", '"7"', "", "1 2", "3.5e38"]
TOKENS = [*VALID, "9007199254740993", "\n8", *INVALID]


def test_fast_path_takes_a_file_only_when_the_strict_parser_agrees_bit_for_bit():
    rng = np.random.default_rng(1)
    docs = []
    for _ in range(300):
        values = [f"{v:.{rng.integers(0, 9)}f}" for v in rng.uniform(-2000, 2000, 75)]
        values[rng.integers(75)] = TOKENS[rng.integers(len(TOKENS))]
        if rng.random() < 0.1:
            values.pop()
        docs.append(('{"people":[{"pose_keypoints_2d":[' + ",".join(values) + "]}]}").encode())
    taken = 0
    for doc, fast in zip(docs, _parse_batch(docs), strict=True):
        try:
            strict = parse_openpose_frame(doc)
        except OpenPoseError:
            assert fast is None, doc
            continue
        taken += fast is not None
        assert fast is not None and same_bits(fast[0], strict[0]), doc
    assert taken > 100  # both outcomes occur


INVALID_NUMBERS = ["01", "1.", ".5", "+1", "1.2.3", "--1", "1e", "0x10", "1 2", "-", "1,", "1-2"]


@pytest.mark.parametrize("number", INVALID_NUMBERS)
def test_fast_path_leaves_invalid_json_to_the_strict_parser(tmp_path, number):
    doc = '{"people":[{"pose_keypoints_2d":[' + number + "," + ",".join(["0"] * 74) + "]}]}"
    good = json.dumps({"people": [person(1, 1, 1)]}).encode()
    assert _parse_batch([good, doc.encode(), good])[1] is None
    with pytest.raises(OpenPoseError, match="bad JSON"):
        parse_openpose_frame(doc.encode())


def test_fast_path_leaves_non_finite_values_to_the_strict_parser():
    doc = b'{"people":[{"pose_keypoints_2d":[NaN' + b",0" * 74 + b"]}]}"
    assert _parse_batch([doc]) == [None]
    with pytest.raises(OpenPoseError, match="no finite float32"):
        parse_openpose_frame(doc, source="x.json")


def test_parse_frame_takes_a_dict_and_names_the_source():
    people = parse_openpose_frame({"people": [person(10, 20, 4)]})
    assert len(people) == 1 and people[0].shape == (137, 3) and people[0].dtype == np.float32
    with pytest.raises(OpenPoseError, match=r"^f\.json: people\[0\] is a list"):
        parse_openpose_frame({"people": [[]]}, source="f.json")
