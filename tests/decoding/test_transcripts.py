import pytest

from dmao.decoding.evaluate import Transcript, read_transcripts, write_transcripts


def test_transcripts_read_back_what_was_written_and_refuse_other_lines(tmp_path):
    written = [Transcript("a-1", "the cat sat", "the cat"), Transcript("b-2", "", "uh")]
    path = tmp_path / "hyp_dev.txt"
    write_transcripts(path, written)
    assert read_transcripts(path) == written
    path.write_text(path.read_text() + "c-3\tHYP: orphan\n")
    with pytest.raises(ValueError, match=r"hyp_dev.txt:5: expected"):
        read_transcripts(path)
