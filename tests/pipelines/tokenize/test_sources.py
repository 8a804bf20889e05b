"""Listing inputs: every skipped file counted, duplicates recognised, bad manifest rows quarantined by name.

All of it runs on the driver without Ray, so these tests call the listing functions on real files.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.tokenize.clips import (
    VIDEO_EXTENSIONS,
    ClipItem,
    EmptyInputError,
    Listing,
    SourceConfig,
    make_sample_key,
    normalize_uri,
)
from pipelines.tokenize.sources import list_clips, list_inputs, split_into_clips
from pipelines.tokenize.stages.decode import decode_batch
from vtok.video import DecodeConfig


def touch(path: Path, data: bytes = b"\x00") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def by_source(listing: Listing) -> dict[str, ClipItem]:
    return {item.source_uri: item for item in listing.items}


# ---------------------------------------------------------------------------------------------- folders


def test_default_extensions_take_common_video_containers() -> None:
    for ext in (".ts", ".m2ts", ".mts", ".mpg", ".mpeg", ".3gp", ".flv", ".wmv", ".ogv"):
        assert ext in VIDEO_EXTENSIONS


def test_folder_counts_every_skipped_file_and_does_not_follow_directory_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "in"
    videos = [touch(root / "a.mp4"), touch(root / "b.ts"), touch(root / "deep" / "c.MTS")]
    touch(root / "x.gif")
    touch(root / "deep" / "y.GIF")
    touch(root / "a.txt")  # a caption next to its video: folders do not read captions, so it is counted
    touch(root / "README")
    outside = tmp_path / "elsewhere"
    touch(outside / "linked.mp4")
    os.symlink(outside, root / "link")

    listing = list_inputs(str(root), SourceConfig())

    # Only the three videos, sorted by sample key; linked.mp4 is behind the directory symlink.
    assert [i.source_uri for i in listing.items] == sorted(map(str, videos), key=make_sample_key)
    assert listing.skipped == {".gif": 2, ".txt": 1, "no extension": 1, "directory symlink": 1}
    skipped = (root / "x.gif", root / "deep" / "y.GIF", root / "a.txt", root / "README", root / "link")
    assert sorted(listing.skipped_examples) == sorted(map(str, skipped))
    assert listing.skipped_line() == "skipped 5: .gif 2, .txt 1, directory symlink 1, no extension 1"


def test_non_recursive_folder_counts_its_sub_folders(tmp_path: Path) -> None:
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "sub" / "b.mp4")
    listing = list_inputs(str(tmp_path), SourceConfig(recursive=False))
    assert [i.source_uri for i in listing.items] == [str(tmp_path / "a.mp4")]
    assert listing.skipped == {"folder (source.recursive=false)": 1}


def test_skipped_line() -> None:
    assert Listing([], {".ts": 1, ".gif": 1}, []).skipped_line() == "skipped 2: .gif 1, .ts 1"
    assert Listing([], {}, []).skipped_line() == ""


def test_skipped_examples_stop_at_ten(tmp_path: Path) -> None:
    touch(tmp_path / "v.mp4")
    for i in range(15):
        touch(tmp_path / f"f{i:02d}.gif")
    listing = list_inputs(str(tmp_path), SourceConfig())
    assert listing.skipped == {".gif": 15}
    assert listing.skipped_examples == [str(tmp_path / f"f{i:02d}.gif") for i in range(10)]


def test_list_clips_is_the_items_of_list_inputs(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.webm", "c.gif"):
        touch(tmp_path / name)
    assert list_clips(str(tmp_path), SourceConfig()) == list_inputs(str(tmp_path), SourceConfig()).items


def test_limit_applies_after_sorting(tmp_path: Path) -> None:
    for i in range(6):
        touch(tmp_path / f"v{i}.mp4")
    everything = list_inputs(str(tmp_path), SourceConfig()).items
    assert list_inputs(str(tmp_path), SourceConfig(limit=2)).items == everything[:2]
    assert [i.sample_key for i in everything] == sorted(i.sample_key for i in everything)


# ------------------------------------------------------------------------------------------ empty inputs


def test_empty_folder_raises_empty_input_error(tmp_path: Path) -> None:
    with pytest.raises(EmptyInputError) as err:
        list_inputs(str(tmp_path), SourceConfig())
    assert isinstance(err.value, ValueError)
    exts = list(VIDEO_EXTENSIONS)
    assert str(err.value) == f"input {tmp_path}: no videos found (it is empty); source.extensions = {exts}"


def test_folder_of_only_skipped_files_names_what_it_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "a.gif")
    touch(tmp_path / "b.avif")
    cfg = SourceConfig(extensions=[".mp4"])
    with pytest.raises(EmptyInputError) as err:
        list_inputs(str(tmp_path), cfg)
    assert str(err.value) == (
        f"input {tmp_path}: no videos found (skipped 2: .avif 1, .gif 1); source.extensions = ['.mp4']"
    )
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, text", [("m.jsonl", ""), ("m.csv", ""), ("m.csv", "uri,caption\n"), ("m.json", "[]")]
)
def test_empty_manifest_raises_empty_input_error(tmp_path: Path, name: str, text: str) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    with pytest.raises(EmptyInputError, match=rf"^input {manifest}: no videos found \(it is empty\)$"):
        list_inputs(str(manifest), SourceConfig())


def test_empty_parquet_manifest_raises_empty_input_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": pa.array([], pa.string())}), manifest)
    with pytest.raises(EmptyInputError, match="no videos found"):
        list_inputs(str(manifest), SourceConfig())


# ------------------------------------------------------------------------------------------------- tars


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tar_counts_non_video_members_but_not_caption_sidecars(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "shard.tar", {
        "k1.mp4": b"v1", "k1.json": json.dumps({"caption": "one"}).encode(),
        "k2.mp4": b"v2", "k2.txt": b"two\n",
        "k2.webm": b"v3",  # same stem, another video: listed too, with k2's caption
        "k3.mp4": b"v4", "k3.json": b"{not json",
        "k4.jpg": b"thumb", "orphan.txt": b"no video",
    })
    listing = list_inputs(str(tar), SourceConfig())
    captions = {i.source_uri.rsplit("#", 1)[1]: i.caption for i in listing.items}
    assert captions == {"k1.mp4": "one", "k2.mp4": "two", "k2.webm": "two", "k3.mp4": None}
    assert listing.skipped == {".jpg": 1, "unreadable caption": 1}
    assert listing.skipped_examples == [f"{tar}#k3.json", f"{tar}#k4.jpg"]


def test_tar_of_only_captions_raises_empty_input_error(tmp_path: Path) -> None:
    tar = write_tar(tmp_path / "shard.tar", {"k1.json": b"{}", "k1.gif": b"g"})
    with pytest.raises(EmptyInputError, match=r"no videos found \(skipped 1: \.gif 1\); source.extensions"):
        list_inputs(str(tar), SourceConfig())


# ------------------------------------------------------------------------------------ manifest duplicates


def test_manifest_lists_one_file_once_whatever_its_spelling(tmp_path: Path) -> None:
    video = touch(tmp_path / "a" / "x.mp4")
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"uri": "a/x.mp4", "caption": "c"},
        {"uri": "./a/x.mp4", "caption": "c"},
        {"uri": "a//x.mp4", "caption": "c"},
        {"uri": "a/../a/x.mp4", "caption": "c"},
        {"uri": str(video), "caption": "c"},
        {"uri": f"file://{video}", "caption": "c"},
        {"uri": "a/x.mp4", "caption": "c"},
        {"uri": "a/x.mp4", "caption": "c", "clip_start_s": 0, "clip_end_s": 1},  # another clip of it
    ])
    listing = list_inputs(str(manifest), SourceConfig())
    assert [(i.source_uri, i.clip_start_s, i.clip_end_s) for i in listing.items] == sorted(
        [(str(video), None, None), (str(video), 0.0, 1.0)],
        key=lambda t: make_sample_key(*t),  # type: ignore[arg-type]
    )
    assert listing.skipped == {"duplicate": 6}
    assert listing.skipped_examples[0] == f"{tmp_path}/./a/x.mp4 (row 2, same as row 1)"
    assert listing.skipped_line() == "skipped 6: duplicate 6"


def test_manifest_rows_that_disagree_about_one_clip_are_an_error(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [
        {"uri": "x.mp4", "caption": "a dog"}, {"uri": "y.mp4"}, {"uri": "./x.mp4", "caption": "a cat"},
    ])
    with pytest.raises(ValueError) as err:
        list_inputs(str(manifest), SourceConfig())
    assert str(err.value) == (
        f"manifest {manifest}: rows 1 and 3 list the same clip of {tmp_path}/x.mp4 with a different caption; "
        "a clip is tokenized once, so keep one row per clip"
    )


def test_normalize_uri() -> None:
    assert normalize_uri("s3://bucket//a//x.mp4") == "s3://bucket/a/x.mp4"
    assert normalize_uri("s3://bucket/a/../x.mp4") == "s3://bucket/a/../x.mp4"  # '..' can be part of a key
    assert normalize_uri("https://host//v//x.mp4?sig=a//b") == "https://host/v/x.mp4?sig=a//b"
    assert normalize_uri("/data//a/./b/../x.mp4") == "/data/a/x.mp4"
    assert normalize_uri("file:///data/x.mp4") == "/data/x.mp4"


def test_remote_manifest_duplicates_differ_only_in_slashes(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"uri": "s3://b/v//x.mp4"}, {"uri": "s3://b//v/x.mp4"}])
    listing = list_inputs(str(manifest), SourceConfig())
    assert [i.source_uri for i in listing.items] == ["s3://b/v/x.mp4"]
    assert listing.skipped == {"duplicate": 1}


# ------------------------------------------------------------------------------------ bad manifest rows


BAD_ROWS: list[dict[str, object]] = [
    {"uri": "v1.mp4", "caption": "a cat", "clip_start_s": 0, "clip_end_s": 2},
    {"uri": "v2.mp4", "caption": 7},
    {"uri": "v3.mp4", "caption": "x", "clip_start_s": "abc"},
    {"uri": "v4.mp4", "clip_start_s": float("nan")},
    {"uri": "v5.mp4", "clip_end_s": float("inf")},
    {"uri": "v6.mp4", "clip_start_s": 3, "clip_end_s": 3},
    {"uri": "v7.mp4", "clip_start_s": -1},
    {"uri": "", "caption": "empty uri"},
    {"caption": "no uri"},
    {"uri": "v10.mp4", "caption": 2.5, "clip_start_s": "1.5", "clip_end_s": 4},
]
# Row number -> the reason after "manifest M: row N: ".
BAD_MESSAGES = {
    3: "clip_start_s 'abc' is not a number",
    4: "clip_start_s nan is not a finite number",
    5: "clip_end_s inf is not a finite number",
    6: "clip_end_s 3.0 is not after clip_start_s 3.0",
    7: "clip_start_s -1.0 is negative",
    8: "uri is empty",
    9: "uri is missing",
}


def check_bad_rows(listing: Listing, manifest: Path, base: Path, bad_messages: dict[int, str]) -> None:
    items = listing.items
    assert [i.sample_key for i in items] == sorted(i.sample_key for i in items)
    bad = {i.error_message: i for i in items if i.error_reason}
    assert all(i.error_reason == "bad_row" for i in bad.values())
    assert sorted(bad) == sorted(f"manifest {manifest}: row {n}: {m}" for n, m in bad_messages.items())
    for n, reason in bad_messages.items():
        item = bad[f"manifest {manifest}: row {n}: {reason}"]
        if n in (8, 9):  # no usable uri: keyed and named by the manifest row
            assert item.source_uri == f"{manifest}#row{n}"
            assert item.sample_key == make_sample_key(f"{manifest}#row{n}")
        else:
            assert item.source_uri == f"{base}/v{n}.mp4"
            assert item.sample_key == make_sample_key(f"{base}/v{n}.mp4#row{n}")
    good = {i.source_uri: i for i in items if not i.error_reason}
    assert good == {
        f"{base}/v1.mp4": ClipItem(
            make_sample_key(f"{base}/v1.mp4", 0.0, 2.0), f"{base}/v1.mp4", "a cat", 0.0, 2.0
        ),
        f"{base}/v2.mp4": ClipItem(make_sample_key(f"{base}/v2.mp4"), f"{base}/v2.mp4", "7"),
        f"{base}/v10.mp4": ClipItem(
            make_sample_key(f"{base}/v10.mp4", 1.5, 4.0), f"{base}/v10.mp4", "2.5", 1.5, 4.0
        ),
    }
    assert listing.skipped == {}


def test_bad_jsonl_rows_become_bad_row_items(tmp_path: Path) -> None:
    # json.dumps writes NaN and Infinity literals, which json (and so a jsonl manifest) accepts.
    manifest = write_jsonl(tmp_path / "m.jsonl", list(BAD_ROWS))
    check_bad_rows(list_inputs(str(manifest), SourceConfig()), manifest, tmp_path, BAD_MESSAGES)


def test_bad_csv_rows_become_bad_row_items(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    lines = ["uri,caption,clip_start_s,clip_end_s"]
    for row in BAD_ROWS:
        cells = [row.get(c) for c in ("uri", "caption", "clip_start_s", "clip_end_s")]
        lines.append(",".join("" if c is None else str(c) for c in cells))
    manifest.write_text("\n".join(lines) + "\n")
    # Every CSV cell is text, so a bad value is quoted as the file spells it; and a row without a uri
    # is an empty cell of the uri column.
    messages = BAD_MESSAGES | {
        4: "clip_start_s 'nan' is not a finite number",
        5: "clip_end_s 'inf' is not a finite number",
        9: "uri is empty",
    }
    listing = list_inputs(str(manifest), SourceConfig())
    check_bad_rows(listing, manifest, tmp_path, messages)


def test_csv_numbers_are_read_as_the_text_they_are(tmp_path: Path) -> None:
    # Inferred as numbers, a caption column of ids lost its zeros and came out as int and float.
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,caption,clip_start_s\na.mp4,007,0\nb.mp4,1.50,0.5\n")
    by_uri = by_source(list_inputs(str(manifest), SourceConfig()))
    got = {uri: (i.caption, i.clip_start_s) for uri, i in by_uri.items()}
    assert got == {f"{tmp_path}/a.mp4": ("007", 0.0), f"{tmp_path}/b.mp4": ("1.50", 0.5)}


def test_csv_keeps_na_text_and_quoted_newlines(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text('uri,caption\na.mp4,NA\nb.mp4,"two\nlines"\n')
    by_uri = by_source(list_inputs(str(manifest), SourceConfig()))
    assert by_uri[f"{tmp_path}/a.mp4"].caption == "NA"
    assert by_uri[f"{tmp_path}/b.mp4"].caption == "two\nlines"


def test_bad_parquet_rows_become_bad_row_items(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    table = pa.table({
        "uri": pa.array(["v1.mp4", "v2.mp4", None, "v4.mp4", "v5.mp4"]),
        "caption": pa.array([1, 2, 3, 4, 5], pa.int64()),  # a typed column: numbers throughout
        "clip_start_s": pa.array(["0", "abc", "1", "nan", "-2"]),
        "clip_end_s": pa.array([2.0, None, None, None, float("nan")]),
    })
    pq.write_table(table, manifest)
    listing = list_inputs(str(manifest), SourceConfig())
    bad = sorted(i.error_message or "" for i in listing.items if i.error_reason)
    assert bad == [
        f"manifest {manifest}: row 2: clip_start_s 'abc' is not a number",
        f"manifest {manifest}: row 3: uri is missing",
        f"manifest {manifest}: row 4: clip_start_s 'nan' is not a finite number",
        f"manifest {manifest}: row 5: clip_start_s -2.0 is negative; clip_end_s nan is not a finite number",
    ]
    good = [i for i in listing.items if not i.error_reason]
    v1 = f"{tmp_path}/v1.mp4"
    assert good == [ClipItem(make_sample_key(v1, 0.0, 2.0), v1, "1", 0.0, 2.0)]


def test_json_array_manifest_may_span_lines(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps([{"uri": "a.mp4"}, {"uri": "b.mp4", "caption": "b"}], indent=2))
    listed = sorted(by_source(list_inputs(str(manifest), SourceConfig())))
    assert listed == [f"{tmp_path}/a.mp4", f"{tmp_path}/b.mp4"]


def test_jsonl_line_that_is_not_an_object_is_a_bad_row(tmp_path: Path) -> None:
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"uri": "a.mp4"}, [1, 2]])
    bad = [i for i in list_inputs(str(manifest), SourceConfig()).items if i.error_reason]
    assert [(i.source_uri, i.error_message) for i in bad] == [
        (f"{manifest}#row2", f"manifest {manifest}: row 2: not a JSON object but list [1, 2]")
    ]


def test_jsonl_caption_with_a_unicode_line_separator(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"uri": "a.mp4", "caption": "one\u2028two"}, ensure_ascii=False) + "\n")
    assert [i.caption for i in list_inputs(str(manifest), SourceConfig()).items] == ["one\u2028two"]


# ------------------------------------------------------------------------------------- whole-file errors


@pytest.mark.parametrize("name, text", [
    ("m.jsonl", '{"uri": "a.mp4", "caption": "hi"}\n'),
    ("m.csv", "uri,caption\na.mp4,hi\n"),
])
def test_utf8_bom_is_accepted(tmp_path: Path, name: str, text: str) -> None:
    manifest = tmp_path / name
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode())
    items = list_inputs(str(manifest), SourceConfig()).items
    assert [(i.source_uri, i.caption, i.error_reason) for i in items] == [(f"{tmp_path}/a.mp4", "hi", None)]


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_non_utf8_manifest_is_one_line_error(tmp_path: Path, name: str) -> None:
    manifest = tmp_path / name
    jsonl = name.endswith("jsonl")
    data = b'{"uri": "a.mp4", "caption": "caf\xe9"}\n' if jsonl else b"uri,caption\na.mp4,caf\xe9\n"
    manifest.write_bytes(data)
    with pytest.raises(ValueError) as err:
        list_inputs(str(manifest), SourceConfig())
    offset = data.index(b"\xe9")
    assert str(err.value) == f"manifest {manifest}: not UTF-8 text (byte 0xe9 at offset {offset})"


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"uri": "a.mp4"}\n\n{"uri": "b.mp4",}\n')
    with pytest.raises(ValueError) as err:
        list_inputs(str(manifest), SourceConfig())
    assert str(err.value).startswith(f"manifest {manifest}: line 3 is not valid JSON (")
    assert "\n" not in str(err.value)


def test_unparseable_csv_is_one_line_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,caption\na.mp4,x\nb.mp4,y,z\n")
    with pytest.raises(ValueError) as err:
        list_inputs(str(manifest), SourceConfig())
    assert str(err.value).startswith(f"manifest {manifest}: not a readable CSV (CSV parse error: ")
    assert "\n" not in str(err.value)


def test_unreadable_parquet_is_one_line_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    manifest.write_text("uri\na.mp4\n")
    with pytest.raises(ValueError) as err:
        list_inputs(str(manifest), SourceConfig())
    assert str(err.value).startswith(f"manifest {manifest}: not a readable Parquet file (")
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ rows and decoding


def test_to_row_carries_the_error_columns() -> None:
    row = ClipItem("k", "/v.mp4").to_row()
    assert (row["error_reason"], row["error_message"]) == ("", "")
    bad = ClipItem("k", "/v.mp4", error_reason="bad_row", error_message="manifest m: row 1: uri is empty")
    row = bad.to_row()
    assert (row["error_reason"], row["error_message"]) == ("bad_row", "manifest m: row 1: uri is empty")


def test_split_into_clips_leaves_a_bad_row_whole() -> None:
    item = ClipItem("k", "/v.mp4", error_reason="bad_row", error_message="m")
    assert split_into_clips(item, 100.0, SourceConfig(clip_length_s=10.0)) == [item]


def batch_of(rows: list[dict[str, object]]) -> dict[str, np.ndarray]:
    return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}


def test_decode_sends_a_bad_row_straight_to_the_quarantine(tmp_path: Path) -> None:
    rows = [{"uri": "gone.mp4"}, {"uri": "bad.mp4", "clip_start_s": "abc"}]
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    items = list_inputs(str(manifest), SourceConfig()).items
    out = decode_batch(batch_of([i.to_row() | {"shard": 0} for i in items]), DecodeConfig())
    errors = zip(out["source_uri"], out["error_reason"], out["error_message"])
    got = {str(uri): (str(reason), str(message)) for uri, reason, message in errors}
    message = f"manifest {manifest}: row 2: clip_start_s 'abc' is not a number"
    assert got[f"{tmp_path}/bad.mp4"] == ("bad_row", message)
    # The good row was decoded (and its file is missing): a bad row next to it changes nothing for it.
    assert got[f"{tmp_path}/gone.mp4"][0] == "missing"
    assert list(out["frames"]) == [b"", b""]


def test_decode_takes_rows_without_error_columns(tmp_path: Path) -> None:
    row = ClipItem(make_sample_key("/nowhere/x.mp4"), "/nowhere/x.mp4").to_row() | {"shard": 0}
    del row["error_reason"], row["error_message"]
    out = decode_batch(batch_of([row]), DecodeConfig())
    assert list(out["error_reason"]) == ["missing"]
