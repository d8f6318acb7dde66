"""Readers and writers: formats, counts, ids, and the one-line error messages (file:line)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import stat
from pathlib import Path

import pytest

from seqkd.data.files import Example, ReadStats, read_lines, read_parallel, write_lines
from seqkd.errors import DataError, SeqkdError


def put(path: Path, text: str | bytes) -> Path:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.name.endswith(".gz"):  # so that tests can write .gz inputs as text
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@contextlib.contextmanager
def raises_data_error(*parts: str):
    """Expect a DataError whose message is one line and contains every part."""
    with pytest.raises(DataError) as info:
        yield info
    msg = str(info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)


# --- two aligned files -------------------------------------------------------------------


def test_two_files_basic(tmp_path):
    src = put(tmp_path / "a.de", "Hallo Welt\r\n  zwei  \ndrei")  # CRLF, padding, no final newline
    tgt = put(tmp_path / "a.en", "hello world\ntwo\nthree\n")
    examples, stats = read_parallel(src, tgt)
    assert examples == [
        Example(0, "Hallo Welt", "hello world"),
        Example(1, "zwei", "two"),
        Example(2, "drei", "three"),
    ]
    assert (stats.lines, stats.kept, stats.skipped_empty, stats.truncated) == (3, 3, 0, 0)
    assert str(src) in stats.path and str(tgt) in stats.path


def test_two_files_gzip_and_bom(tmp_path):
    src = put(tmp_path / "a.de.gz", "\ufeffeins\nzwei\n")
    tgt = put(tmp_path / "a.en", "one\ntwo\n")
    examples, stats = read_parallel(src, tgt)
    assert [(e.source, e.target) for e in examples] == [("eins", "one"), ("zwei", "two")]
    assert stats.lines == 2


def test_unicode_line_separators_do_not_split_lines(tmp_path):
    # str.splitlines() would split these and misalign the two files.
    src = put(tmp_path / "s", "a\u2028b\nc\x85d\x0ce\n")
    tgt = put(tmp_path / "t", "x\ny\n")
    examples, _ = read_parallel(src, tgt)
    assert [e.source for e in examples] == ["a\u2028b", "c\x85d\x0ce"]


def test_empty_file_gives_no_examples(tmp_path):
    examples, stats = read_parallel(put(tmp_path / "s", ""), put(tmp_path / "t", ""))
    assert examples == [] and (stats.lines, stats.kept) == (0, 0)


def test_missing_file(tmp_path):
    tgt = put(tmp_path / "t", "x\n")
    with raises_data_error(str(tmp_path / "nope.de"), "not found"):
        read_parallel(tmp_path / "nope.de", tgt)


def test_directory_instead_of_file(tmp_path):
    with raises_data_error(str(tmp_path), "directory"):
        read_lines(tmp_path)


def test_line_counts_differ(tmp_path):
    src = put(tmp_path / "s.de", "a\nb\nc\n")
    tgt = put(tmp_path / "t.en", "a\nb\n")
    with raises_data_error(str(src), str(tgt), "3 lines", "2 lines"):
        read_parallel(src, tgt)


def test_invalid_utf8_names_file_and_line(tmp_path):
    src = put(tmp_path / "s.de", b"ok\nalso ok\nbad \xff byte\n")
    tgt = put(tmp_path / "t.en", "a\nb\nc\n")
    with raises_data_error(f"{src}:3", "UTF-8", "0xff"):
        read_parallel(src, tgt)


@pytest.mark.parametrize("data", [b"this is not gzip", gzip.compress(b"one\ntwo\n" * 100)[:30]])
def test_invalid_or_truncated_gzip(tmp_path, data):
    src = tmp_path / "s.de.gz"
    src.write_bytes(data)
    with raises_data_error(str(src), "not a valid gzip file"):
        read_lines(src)


def test_empty_lines_skipped_and_counted_ids_keep_gaps(tmp_path):
    src = put(tmp_path / "s", "a\n\nc\nd\n   \n")
    tgt = put(tmp_path / "t", "A\nB\n\t\nD\nE\n")
    examples, stats = read_parallel(src, tgt)
    assert [(e.id, e.source, e.target) for e in examples] == [(0, "a", "A"), (3, "d", "D")]
    assert (stats.lines, stats.kept, stats.skipped_empty, stats.truncated) == (5, 2, 3, 0)


def test_empty_line_strict_names_the_file_with_the_empty_side(tmp_path):
    src = put(tmp_path / "s.de", "a\nb\nc\n")
    tgt = put(tmp_path / "t.en", "A\nB\n \n")
    with raises_data_error(f"{tgt}:3", "empty"):
        read_parallel(src, tgt, strict=True)


def test_long_lines_truncated_and_counted(tmp_path):
    src = put(tmp_path / "s", "0123456789abc\nshort\n")
    tgt = put(tmp_path / "t", "ok\n0123456789XYZ\n")
    examples, stats = read_parallel(src, tgt, max_chars=10)
    assert [(e.source, e.target) for e in examples] == [("0123456789", "ok"), ("short", "0123456789")]
    assert (stats.kept, stats.truncated) == (2, 2)
    examples, stats = read_parallel(src, tgt, max_chars=None)
    assert stats.truncated == 0 and examples[0].source == "0123456789abc"


def test_long_line_strict(tmp_path):
    src = put(tmp_path / "s", "ok\nfine\n")
    tgt = put(tmp_path / "t", "ok\nthis is too long\n")
    with raises_data_error(f"{tgt}:2", "16 characters", "max_chars=10"):
        read_parallel(src, tgt, strict=True, max_chars=10)


def test_bad_max_chars(tmp_path):
    with raises_data_error("max_chars"):
        read_lines(put(tmp_path / "s", "a\n"), max_chars=0)


def test_single_plain_file_needs_a_target(tmp_path):
    src = put(tmp_path / "only.txt", "a\n")
    with raises_data_error(str(src), ".tsv", ".jsonl"):
        read_parallel(src)


# --- TSV ---------------------------------------------------------------------------------


def test_tsv(tmp_path):
    path = put(tmp_path / "d.tsv", "Haus\thouse\n\nBaum \t tree\nleer\t\n")
    examples, stats = read_parallel(path)
    assert [(e.id, e.source, e.target) for e in examples] == [(0, "Haus", "house"), (2, "Baum", "tree")]
    assert (stats.lines, stats.kept, stats.skipped_empty) == (4, 2, 2)
    assert stats.path == str(path)


def test_tsv_gz(tmp_path):
    examples, _ = read_parallel(put(tmp_path / "d.tsv.gz", "a\tb\n"))
    assert examples == [Example(0, "a", "b")]


@pytest.mark.parametrize("line,found", [("no tab here", 0), ("a\tb\tc", 2)])
def test_tsv_needs_exactly_one_tab(tmp_path, line, found):
    path = put(tmp_path / "d.tsv", f"a\tb\n{line}\n")
    with raises_data_error(f"{path}:2", "exactly one tab", f"found {found}"):
        read_parallel(path)


def test_tsv_strict_empty_target(tmp_path):
    path = put(tmp_path / "d.tsv", "a\tb\nc\t \n")
    with raises_data_error(f"{path}:2", "empty target"):
        read_parallel(path, strict=True)


# --- JSONL -------------------------------------------------------------------------------


def test_jsonl(tmp_path):
    rows = [{"source": "Haus", "target": "house", "extra": 1}, {"source": "", "target": "x"}]
    path = put(tmp_path / "d.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    examples, stats = read_parallel(path)
    assert examples == [Example(0, "Haus", "house")]
    assert (stats.lines, stats.kept, stats.skipped_empty) == (3, 1, 2)


@pytest.mark.parametrize(
    "line,expect",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"source": "a"}', 'missing field "target"'),
        ('{"target": "a"}', 'missing field "source"'),
        ('{"source": "a", "target": 3}', 'field "target" must be a string, got int'),
        ('{"source": null, "target": "b"}', 'field "source" must be a string, got NoneType'),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, expect):
    path = put(tmp_path / "d.jsonl", '{"source": "a", "target": "b"}\n' + line + "\n")
    with raises_data_error(f"{path}:2", expect):
        read_parallel(path)


# --- monolingual -------------------------------------------------------------------------


def test_read_lines(tmp_path):
    path = put(tmp_path / "p.txt.gz", "first prompt\n\n  second  \n" + "x" * 30 + "\n")
    lines, stats = read_lines(path, max_chars=20)
    assert lines == ["first prompt", "second", "x" * 20]
    assert (stats.lines, stats.kept, stats.skipped_empty, stats.truncated) == (4, 3, 1, 1)


def test_read_lines_strict(tmp_path):
    path = put(tmp_path / "p.txt", "a\nb\n\n")
    with raises_data_error(f"{path}:3", "empty"):
        read_lines(path, strict=True)


def test_read_stats_str_is_one_line_with_counts():
    s = str(ReadStats("x.txt", 10, 7, 2, 1))
    assert s == "x.txt: 10 lines, 7 kept, 2 skipped (empty), 1 truncated"


def test_data_error_is_a_seqkd_error():
    assert issubclass(DataError, SeqkdError)


# --- writing -----------------------------------------------------------------------------


def test_write_lines_round_trip_creates_parent(tmp_path):
    path = tmp_path / "new" / "dir" / "out.txt"
    write_lines(path, ["eins", "zwei ü", "drei"])
    assert path.read_bytes() == "eins\nzwei ü\ndrei\n".encode()
    assert read_lines(path)[0] == ["eins", "zwei ü", "drei"]
    assert os.listdir(path.parent) == ["out.txt"]  # no temp file left behind


def test_write_lines_gz_and_generator(tmp_path):
    path = tmp_path / "out.txt.gz"
    write_lines(path, (f"line {i}" for i in range(3)))
    assert gzip.decompress(path.read_bytes()) == b"line 0\nline 1\nline 2\n"


def test_write_lines_permissions_like_open(tmp_path):
    path = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        write_lines(path, ["a"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_lines_rejects_line_breaks_and_keeps_old_file(tmp_path):
    path = put(tmp_path / "out.txt", "old\n")
    with raises_data_error(f"{path}:2", "line break"):
        write_lines(path, ["fine", "two\nlines"])
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_write_lines_empty(tmp_path):
    path = tmp_path / "empty.txt"
    write_lines(path, [])
    assert path.read_bytes() == b""
