"""NIST SPHERE read without sph2pipe: plain PCM, mu-law and A-law, shorten with each of its commands, through lhotse.

Files come from the independent writer in ``tests/corpora/sphere.py`` (its own G.711 and shorten encoder) and are
compared sample for sample with what was written; plain files are cross-checked against libsndfile too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from corpora.sphere import _ulaw_shifted_magnitudes, sphere_header, ulaw_compress, ulaw_expand, write_sphere
from lhotse import MonoCut, Recording
from lhotse.audio.backend import (
    CompositeAudioBackend,
    LibsndfileBackend,
    Sph2pipeSubprocessBackend,
    audio_backend,
    get_current_audio_backend,
)
from scipy.signal import lfilter

from dmao.data import sphere
from dmao.data.sphere import SphereError, install_sphere_backend, read_sphere, read_sphere_header

RATE = 8000


def speech_like(channels: int = 2, seconds: float = 1.0, seed: int = 0) -> np.ndarray:  # [N, C] int16
    """Resonant noise with a silent stretch (whole blocks of zeros) and a stretch of multiples of 64 (bit-shifted
    blocks, for PCM and for mu-law); not a whole number of 256-sample blocks."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE) + 37
    x = lfilter([1.0], [1.0, -1.6, 0.8], rng.standard_normal((n, channels)), axis=0) * 400
    x[n // 4 : n // 4 + 600] = 0
    x[n // 2 : n // 2 + 800] = np.round(x[n // 2 : n // 2 + 800] / 64) * 64
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def as_int(audio: np.ndarray) -> np.ndarray:  # [C, N] float in [-1, 1] -> the 16-bit values
    return np.round(audio * 32768).astype(np.int64)


def expected(samples: np.ndarray, coding: str) -> np.ndarray:  # [N, C] written -> [C, N] a reader should give
    return (ulaw_expand(ulaw_compress(samples)) if coding == "ulaw" else samples.astype(np.int64)).T


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize(("coding", "byte_format"), [("pcm", "01"), ("pcm", "10"), ("ulaw", "01")])
def test_plain_sphere_reads_back_what_was_written_and_what_libsndfile_reads(tmp_path, coding, byte_format, channels):
    samples = speech_like(channels)
    path = tmp_path / "a.sph"
    write_sphere(path, samples if channels > 1 else samples[:, 0], RATE, coding, byte_format=byte_format)
    audio, rate = read_sphere(path)
    assert rate == RATE and audio.dtype == np.float32 and audio.shape == (channels, len(samples))
    assert np.array_equal(as_int(audio), expected(samples, coding))
    reference, _ = sf.read(path, dtype="int16", always_2d=True)  # [N, C]
    assert np.array_equal(as_int(audio), reference.T)


@pytest.mark.parametrize("coding", ["ulaw", "alaw"])
def test_every_g711_code_expands_as_libsndfile_expands_it(tmp_path, coding):
    path = tmp_path / "codes.sph"
    fields = {"sample_count": 256, "sample_rate": RATE, "channel_count": 1, "sample_n_bytes": 1}
    path.write_bytes(sphere_header({**fields, "sample_coding": coding}) + bytes(range(256)))
    audio, _ = read_sphere(path)
    reference, _ = sf.read(path, dtype="int16")
    assert np.array_equal(as_int(audio[0]), reference)


SHORTEN_CASES = {
    "diff0": dict(predictors=("diff0",)),
    "diff1": dict(predictors=("diff1",)),
    "diff2": dict(predictors=("diff2",)),
    "diff3": dict(predictors=("diff3",)),
    "diff0 after diff3": dict(predictors=("diff0", "diff3")),  # the running mean of DIFF3 blocks
    "qlpc": dict(predictors=(), lpc_order=4),
    "best of all, big-endian": dict(lpc_order=2, byte_format="10"),
    "short blocks": dict(block_size=5, predictors=("diff3", "diff1")),
    "a verbatim chunk first": dict(verbatim=b"RIFF$\x00\x00\x00WAVEfmt "),
}


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("case", SHORTEN_CASES)
def test_shorten_pcm_decodes_exactly(tmp_path, case, channels):
    samples = speech_like(channels)
    path = tmp_path / "a.sph"
    write_sphere(path, samples, RATE, "pcm", shorten=True, **SHORTEN_CASES[case])
    audio, rate = read_sphere(path)
    assert rate == RATE and np.array_equal(as_int(audio), expected(samples, "pcm"))


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("ulaw_type", ["au2", "au1", "ulaw"])
def test_shorten_ulaw_decodes_to_the_expanded_codes(tmp_path, ulaw_type, channels):
    samples = speech_like(channels)
    path = tmp_path / "a.sph"
    write_sphere(path, samples, RATE, "ulaw", shorten=True, ulaw_type=ulaw_type, predictors=("diff0", "diff2"))
    audio, _ = read_sphere(path)
    assert np.array_equal(as_int(audio), expected(samples, "ulaw"))


def test_the_shorten_cases_use_every_command(tmp_path, monkeypatch):
    """The round trips above are only worth something if the encoder emits each command: record the blocks the
    decoder parses (command, size, bit shift) while the cases are decoded."""
    seen = []
    add = sphere._Chunk.add
    monkeypatch.setattr(sphere._Chunk, "add", lambda self, *block: (seen.append(block), add(self, *block))[1])
    for case in [*SHORTEN_CASES.values(), dict(ulaw_type="au2"), dict(ulaw_type="au1")]:
        coding = "ulaw" if "ulaw_type" in case else "pcm"
        path = tmp_path / "a.sph"
        write_sphere(path, speech_like(2), RATE, coding, shorten=True, **case)
        sphere.ShortenDecoder(path.read_bytes()[1024:], read_sphere_header(path)).decode()
    commands = {command for command, *_ in seen}
    assert commands == {
        sphere.FN_DIFF0,
        sphere.FN_DIFF1,
        sphere.FN_DIFF2,
        sphere.FN_DIFF3,
        sphere.FN_QLPC,
        sphere.FN_ZERO,
    }
    length = len(speech_like(2))
    assert {256, length % 256, 5, length % 5} <= {size for _, size, *_ in seen}  # BLOCKSIZE: short last blocks
    assert {3, 6} <= {bitshift for *_, bitshift, _ in seen}  # BITSHIFT: multiples of 64 in mu-law and PCM


def test_ulaw_rank_tables_agree_with_a_closed_form_derived_apart():
    """The reader builds shorten's mu-law rank tables from their definition (which bytes coarser linear values
    reach); the writer derives where each rank lands from the segment geometry of mu-law."""
    for shift in range(sphere.ULAW_SHIFTS):
        magnitudes = _ulaw_shifted_magnitudes(shift)
        reachable = magnitudes[magnitudes <= 127]
        ranks = np.arange(len(reachable))
        assert np.array_equal(sphere.ULAW_RANK_TO_CODE[shift, ranks + 128], 255 - reachable)  # positive
        assert np.array_equal(sphere.ULAW_RANK_TO_CODE[shift, 128 - ranks[1:]], 127 - reachable[1:])  # negative


@pytest.mark.parametrize("shorten", [False, True])
@pytest.mark.parametrize("coding", ["pcm", "ulaw"])
def test_offset_and_duration_select_samples(tmp_path, coding, shorten):
    samples = speech_like(2)
    path = tmp_path / "a.sph"
    write_sphere(path, samples, RATE, coding, shorten=shorten)
    audio, _ = read_sphere(path, offset=0.3, duration=0.2)
    assert np.array_equal(as_int(audio), expected(samples, coding)[:, 2400:4000])
    tail, _ = read_sphere(path, offset=0.9, duration=5.0)  # past the end: what there is
    assert np.array_equal(as_int(tail), expected(samples, coding)[:, 7200:])


def test_a_header_larger_than_1024_bytes_is_honoured(tmp_path):
    samples = speech_like(1)[:, 0]
    fields = {"sample_count": len(samples), "sample_rate": RATE, "channel_count": 1, "sample_n_bytes": 2,
              "sample_byte_format": "01", "sample_coding": "pcm"}  # fmt: skip
    path = tmp_path / "a.sph"
    path.write_bytes(sphere_header(fields, size=2048) + samples.astype("<i2").tobytes())
    audio, _ = read_sphere(path)
    assert np.array_equal(as_int(audio[0]), samples)


def test_lhotse_reads_sphere_without_sph2pipe(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    assert shutil.which("sph2pipe") is None
    samples = speech_like(2)
    path = tmp_path / "sw02001.sph"
    write_sphere(path, samples, RATE, "ulaw", shorten=True)
    recording = Recording.from_file(path)
    assert (recording.sampling_rate, recording.num_samples, recording.channel_ids) == (RATE, len(samples), [0, 1])
    cut = MonoCut("sw02001-B", start=0.25, duration=0.5, channel=1, recording=recording)
    audio = cut.load_audio()  # [1, 4000]: channel B from 0.25 s
    assert np.array_equal(as_int(audio), expected(samples, "ulaw")[1:, 2000:6000])
    both = recording.to_cut().truncate(offset=0.5, duration=0.125).load_audio()
    assert np.array_equal(as_int(both), expected(samples, "ulaw")[:, 4000:5000])


def test_the_backend_replaces_sph2pipe_once_and_wraps_a_single_backend():
    backends = get_current_audio_backend().backends
    assert sum(isinstance(b, sphere.SphereAudioBackend) for b in backends) == 1
    assert not any(isinstance(b, Sph2pipeSubprocessBackend) for b in backends)
    install_sphere_backend()
    assert get_current_audio_backend().backends == backends  # idempotent
    with audio_backend(LibsndfileBackend()):
        install_sphere_backend()
        wrapped = get_current_audio_backend()
        assert isinstance(wrapped, CompositeAudioBackend)
        assert [type(b) for b in wrapped.backends] == [sphere.SphereAudioBackend, LibsndfileBackend]


def test_importing_the_batch_dataset_installs_the_reader():
    """A DataLoader worker that is spawned, not forked, gets the reader by unpickling the dataset, which imports
    dmao.data.batches."""
    code = ("import dmao.data.batches; from lhotse.audio.backend import get_current_audio_backend as current; "
            "print([type(b).__name__ for b in current().backends])")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert "SphereAudioBackend" in names and "Sph2pipeSubprocessBackend" not in names


@pytest.mark.parametrize("shorten", [False, True])
def test_a_truncated_file_is_an_error_naming_it(tmp_path, shorten):
    path = tmp_path / "cut short.sph"
    write_sphere(path, speech_like(2), RATE, "pcm", shorten=shorten)
    data = path.read_bytes()
    path.write_bytes(data[: 1024 + (len(data) - 1024) // 2])
    with pytest.raises(SphereError, match=re.escape(str(path)) + ".*truncated"):
        read_sphere(path)
    if not shorten:  # lhotse reads the header only for a recording: the size already disagrees
        with pytest.raises(Exception, match=re.escape(str(path)) + ".*truncated"):
            Recording.from_file(path)


def test_a_shorten_stream_cut_inside_its_header_is_truncated(tmp_path):
    path = tmp_path / "a.sph"
    write_sphere(path, speech_like(1), RATE, shorten=True)
    path.write_bytes(path.read_bytes()[: 1024 + 6])
    with pytest.raises(SphereError, match=re.escape(str(path)) + ": shorten stream is truncated"):
        read_sphere(path)


def test_a_rewritten_shorten_file_is_decoded_again(tmp_path):
    path = tmp_path / "a.sph"
    first, second = speech_like(1, seed=1), speech_like(1, seed=2)  # the same header
    write_sphere(path, first, RATE, shorten=True)
    assert np.array_equal(as_int(read_sphere(path)[0]), first.T)
    write_sphere(path, second, RATE, shorten=True)
    os.utime(path, ns=(1, 1))
    assert np.array_equal(as_int(read_sphere(path)[0]), second.T)


FIELDS = {"sample_count": 4, "sample_rate": RATE, "channel_count": 1, "sample_n_bytes": 2,
          "sample_byte_format": "01", "sample_coding": "pcm"}  # fmt: skip
PCM = np.zeros(4, dtype="<i2").tobytes()


def header_with(**changes) -> bytes:
    return sphere_header({k: v for k, v in {**FIELDS, **changes}.items() if v is not None}) + PCM


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"RIFF" + header_with()[4:], "not a NIST SPHERE file"),
        (header_with().replace(b"   1024", b"   10x4"), "header size"),
        (header_with().replace(b"   1024", b"    512"), "header size 512"),
        (header_with()[:900], "ends inside its 1024-byte SPHERE header"),
        (header_with().replace(b"end_head\n", b" " * 9), "no end_head"),
        (header_with().replace(b"sample_rate -i", b"sample_rate"), "line 4 'sample_rate 8000'"),
        (header_with().replace(b"sample_rate -i", b"sample_rate -x"), "field sample_rate has type '-x'"),
        (header_with(sample_rate="8k").replace(b"-s2 8k", b"-i 8k"), "field sample_rate value '8k'"),
        (header_with(sample_rate=None), "no field sample_rate"),
        (header_with(channel_count=0), "field channel_count is 0"),
        (header_with(sample_coding="pcm,embedded-wavpack"), "sample_coding is 'pcm,embedded-wavpack'"),
        (header_with(sample_byte_format="0123"), "sample_byte_format is '0123'"),
        (header_with(sample_n_bytes=3), "sample_n_bytes is 3"),
        (header_with(sample_coding="pcm,embedded-shorten-v2.00"), "do not start with 'ajkg'"),
        (header_with()[:1024] + b"ajkg\x03" + bytes(8), "shorten stream has version 3"),
    ],
)
def test_a_bad_header_is_an_error_naming_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "bad.sph"
    path.write_bytes(content)
    with pytest.raises(SphereError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        read_sphere(path)


def test_a_shorten_stream_that_disagrees_with_its_header_is_named(tmp_path):
    path = tmp_path / "a.sph"
    write_sphere(path, speech_like(2), RATE, shorten=True)
    path.write_bytes(path.read_bytes().replace(b"channel_count -i 2", b"channel_count -i 1"))
    with pytest.raises(SphereError, match=re.escape(str(path)) + ": shorten stream has 2 channels; .* says 1"):
        read_sphere(path)


def _shorten_file(tmp_path, header_fields: dict, write_commands) -> str:
    """A hand-made shorten SPHERE file: the stream header and commands that ``write_commands(bits)`` emits."""
    from corpora.sphere import _BitWriter

    bits = _BitWriter()
    write_commands(bits)
    fields = {"sample_rate": 8000, "sample_n_bytes": 2, "sample_coding": "pcm,embedded-shorten-v2.00",
              "sample_byte_format": "01", **header_fields}  # fmt: skip
    path = tmp_path / "crafted.sph"
    path.write_bytes(sphere_header(fields) + b"ajkg\x02" + bits.tobytes())
    return str(path)


def test_a_diverging_lpc_block_is_a_named_error_not_a_slow_overflow(tmp_path):
    """Corrupt LPC coefficients make the recursion grow without bound: refused at once, naming the file."""
    samples = 65536

    def commands(bits):
        for value in (5, 1, samples, 1, 0, 0):  # type s16lh, 1 channel, block, LPC order 1, no mean, no skip
            bits.ulong(value)
        bits.uvar(7, 2), bits.uvar(0, 3), bits.uvar(1, 2), bits.svar(1 << 20, 5)  # QLPC, energy, order 1, coef
        bits.uvar([2] * samples, 1)
        bits.uvar(4, 2)  # QUIT

    path = _shorten_file(tmp_path, {"sample_count": samples, "channel_count": 1}, commands)
    with pytest.raises(SphereError, match=r"crafted.sph: shorten stream: an LPC block diverges"):
        read_sphere(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"channel_count": 50_000_000, "sample_count": 1}, "channel_count is 50000000, not a count in 1..64"),
        ({"channel_count": 1, "sample_count": 2_000_000_000}, "sample_count is 2000000000, not a count of at most 6"),
    ],
)
def test_a_header_cannot_make_the_decoder_allocate_without_limit(tmp_path, fields, message):
    path = _shorten_file(tmp_path, fields, lambda bits: [bits.ulong(v) for v in (5, 1, 256, 0, 0, 0)])
    with pytest.raises(SphereError, match=message):
        read_sphere(path)
