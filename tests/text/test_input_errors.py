"""Issue 17: text preparation names a binary or non-UTF-8 input file; the neuron viewer's --overwrite
writes over its own output and deletes nothing else."""

import pytest
from crate_text.prepare import check_text_file, local_files


def test_binary_and_non_utf8_text_inputs_are_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("To be, or not to be — that is the question.\n", encoding="utf-8")
    assert local_files([str(good)]) == ("text", [str(good)])
    binary = tmp_path / "model.txt"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ValueError, match=r"model\.txt is a binary file"):
        local_files([str(binary)])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8 text"):
        local_files([str(latin1)])
    cut = tmp_path / "cut.txt"  # a multi-byte character cut by the probe's end is still text
    cut.write_bytes(("a" * 9 + "é").encode("utf-8"))
    check_text_file(cut, probe=10)


def test_neuron_viewer_overwrite_keeps_other_files(tmp_path, tool):
    neurons = tool("neurons")
    out = tmp_path / "viewer"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        neurons.prepare_out(out, overwrite=False)
    neurons.prepare_out(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        neurons.prepare_out(tmp_path / "file", overwrite=True)
