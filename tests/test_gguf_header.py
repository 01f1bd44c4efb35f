"""The GGUF header reader against `gguf.GGUFReader` on files the `gguf` package writes (plain and block
types, string and number arrays), on SmolLM2's GGUF, and on broken files: one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import numpy as np
import pytest
from conftest import assert_one_line_error, run_cli

from ascend_convert.readers.gguf_header import GGUFFormatError, GGUFHeader


def write_gguf(path: Path) -> Path:
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_uint32("tiny.count", 7)
    writer.add_float32("tiny.eps", 1e-5)
    writer.add_bool("tiny.flag", True)
    writer.add_int64("tiny.big", -(2**40))
    writer.add_array("tiny.sections", [1, 2, 3])
    writer.add_token_list(["<s>", "a", "ab", "abc"] * 50)
    writer.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("f16", rng.standard_normal((4, 6)).astype(np.float16))
    values = rng.standard_normal((2, 64)).astype(np.float32)
    writer.add_tensor("q8", gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_same_as_gguf(path: Path) -> GGUFHeader:
    ours, theirs = GGUFHeader(path), gguf.GGUFReader(str(path))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.tensor_type, a.shape, a.data_offset) == (b.tensor_type, tuple(b.shape.tolist()), b.data_offset)
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape and np.array_equal(a.data, b.data)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):  # the header's own counts, not metadata
            continue
        value = field.contents()
        if isinstance(value, list) and value and isinstance(value[0], str):
            assert ours.fields[key] == len(value), key  # arrays of strings: walked past, counted
        else:
            assert ours.fields[key] == pytest.approx(value), key
    return ours


def test_every_value_and_tensor_as_gguf_reads_them(tmp_path):
    header = assert_same_as_gguf(write_gguf(tmp_path / "tiny.gguf"))
    assert header.fields["general.name"] == "tiny" and header.fields["tiny.big"] == -(2**40)
    assert header.fields["tokenizer.ggml.tokens"] == 200 and header.fields["tiny.sections"] == [1, 2, 3]
    assert [t.tensor_type.name for t in header.tensors] == ["F32", "F16", "Q8_0"]
    q8 = gguf.quants.dequantize(header.tensors[2].data, header.tensors[2].tensor_type)  # gguf takes our view as is
    assert q8.shape == (2, 64) and np.abs(q8).max() > 0


def test_smollm2_as_gguf_reads_it(smollm2_gguf):
    header = assert_same_as_gguf(smollm2_gguf)
    assert len(header.tensors) == 272 and header.fields["tokenizer.ggml.tokens"] == 49152


def last_byte_of_q8(path: Path) -> int:
    q8 = GGUFHeader(path).tensors[-1]
    return q8.data_offset + q8.data.nbytes


@pytest.mark.parametrize(("damage", "message"), [
    (lambda b, end: b"GGUX" + b[4:], "no GGUF magic at the start"),
    (lambda b, end: b[:4] + (7).to_bytes(4, "little") + b[8:], "GGUF version 7 (this reader reads 2 and 3)"),
    (lambda b, end: b[:4] + (3).to_bytes(4, "big") + b[8:], "a big-endian GGUF"),
    (lambda b, end: b[:20], "the header ends early (at byte 16)"),
    (lambda b, end: b[:40], "a string at byte 32 runs past the end of the file"),
    (lambda b, end: b[:end - 1], "tensor q8: its data ends at byte"),
])
def test_broken_files(tmp_path, damage, message):
    good = write_gguf(tmp_path / "good.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(good.read_bytes(), last_byte_of_q8(good)))
    with pytest.raises(GGUFFormatError, match=f"^{re.escape(message)}"):
        GGUFHeader(bad)


def test_a_broken_gguf_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + (3).to_bytes(4, "little"))
    assert_one_line_error(run_cli("convert", bad, tmp_path / "out"),
                          f"error: {bad}: not a valid GGUF file (the header ends early (at byte 8))")
