"""NIST SPHERE audio (``.sph``: TED-LIUM, Switchboard, Hub5'00) read in Python, shorten-compressed files included.

lhotse reads ``.sph`` through the external ``sph2pipe`` program, which users rarely have. :class:`SphereAudioBackend`
decodes SPHERE itself (NumPy only) and :func:`install_sphere_backend` puts it in the place of lhotse's ``sph2pipe``
backend. It is installed when this module is imported; the batch dataset's module imports it, so DataLoader workers
that unpickle the dataset have it too.

A SPHERE file is an ASCII header (``NIST_1A``, its size in bytes, ``name -type value`` lines up to ``end_head``) and
then the samples: 16-bit PCM in either byte order, or 8-bit mu-law or A-law, channels interleaved, or all of that
compressed by Tony Robinson's shorten (the header's ``sample_coding`` then ends ``,embedded-shorten-v2.00`` and the
samples start with ``ajkg``). Shorten, as version 2 writes it, is a bit stream, most significant bit first, of
Rice-coded integers (``uvar(n)``: a unary high part, zeros ended by a one, then ``n`` low bits; ``svar`` folds the
sign into the lowest bit): a header (sample type, channels, block size, LPC order, mean length, skip bytes), then
commands. Each block command (``DIFF0``..``DIFF3``, ``QLPC``, ``ZERO``) fills one block of the next channel in turn
from Rice-coded residuals of a predictor: the running mean of the channel's last blocks, a polynomial in its last 1-3
samples, or quantised LPC. ``BITSHIFT`` sets how far the block values are shifted left on output (for mu-law: a step
in the code's rank among the codes an unshifted linear value can reach), ``BLOCKSIZE`` changes the block length and
``QUIT`` ends the stream. Lossless mu-law is coded as the rank of each byte in linear order.

Only finding where each residual code ends is sequential (a code's length depends on the code): ``bytes.find`` of
its terminating one in the unpacked bits. The parse never depends on sample values, so per chunk of blocks the
residuals are then decoded at once (their low bits from a sliding 64-bit view of the payload) and each polynomial
block is evaluated in closed form from cumulative sums of its residuals; per block only a few scalars (the last
samples, the block's sum for the running mean) are carried in Python. Decoded shorten files are kept in a small
per-process cache, as the cuts of one recording are usually read in a row and a shorten file can only be decoded
from its start.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from lhotse.audio import backend as lhotse_backend
from lhotse.audio.backend import AudioBackend, CompositeAudioBackend, LibsndfileCompatibleAudioInfo
from lhotse.utils import compute_num_samples

HEADER_MAGIC = b"NIST_1A"
MIN_HEADER_BYTES = 1024
SHORTEN_MAGIC = b"ajkg"
SHORTEN_SUFFIX = ",embedded-shorten-v2.00"
CODINGS = {"pcm": 2, "ulaw": 1, "mu-law": 1, "alaw": 1}  # sample coding: bytes per sample
DECODED_FILES_CACHED = 4  # shorten files kept decoded per process (a 5-minute 2-channel call: 5-10 MB)

# shorten's internal sample types that SPHERE files use, by the sample coding they decode to
SHORTEN_PCM_TYPES = {3: "s16hl", 5: "s16lh"}
SHORTEN_ULAW_TYPES = {0: "au1", 7: "ulaw", 8: "au2"}  # au1/au2: lossless ranks; ulaw: linear value >> 3
SHORTEN_VERSION = 2
FN_DIFF0, FN_DIFF1, FN_DIFF2, FN_DIFF3, FN_QUIT, FN_BLOCKSIZE, FN_BITSHIFT, FN_QLPC, FN_ZERO, FN_VERBATIM = range(10)
COMMAND_BITS, ENERGY_BITS, BITSHIFT_BITS, LPC_ORDER_BITS, LPC_QUANT, ULONG_BITS = 2, 3, 2, 2, 5, 2
VERBATIM_LENGTH_BITS, VERBATIM_BYTE_BITS = 5, 8
HISTORY = 3  # samples a polynomial predictor looks back
MAX_BLOCK_SIZE = 1 << 16  # bounds for what a corrupt stream may ask for
MAX_LPC_ORDER = 64
MAX_BITSHIFT = 32
MAX_CHANNELS = 64  # header bounds: a crafted header must not make the decoder allocate without limit
MAX_SECONDS = 6 * 3600  # per file; the longest SPHERE recordings (meetings) last an hour or two
MAX_INTERNAL = 1 << 24  # an LPC recursion beyond this is a corrupt stream (16-bit samples need 17 bits)
CHUNK_SAMPLES = 1 << 17  # samples reconstructed at once (bounds the memory of a long file's decode)
MAX_LOW_BITS = 56  # a 64-bit window read at any bit of a byte holds this many bits after it
ULAW_SHIFTS = 13  # bit shifts a mu-law rank table exists for


class SphereError(ValueError):
    """A SPHERE file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class SphereHeader:
    """What a SPHERE header says about its samples, validated against what this module can decode."""

    path: str
    header_bytes: int
    sample_count: int  # per channel
    sample_rate: int
    channel_count: int
    coding: str  # pcm | ulaw | alaw
    sample_n_bytes: int
    byte_order: str  # "<" or ">" for 2-byte PCM, "|" for 8-bit codings
    shorten: bool

    def __post_init__(self):
        def fail(name: str, why: str):
            raise SphereError(f"{self.path}: SPHERE header field {name} {why}")

        if self.sample_rate <= 0:
            fail("sample_rate", f"is {self.sample_rate}, not a positive rate")
        if not 0 < self.channel_count <= MAX_CHANNELS:
            fail("channel_count", f"is {self.channel_count}, not a count in 1..{MAX_CHANNELS}")
        if not 0 <= self.sample_count <= MAX_SECONDS * self.sample_rate:
            fail("sample_count", f"is {self.sample_count}, not a count of at most {MAX_SECONDS // 3600} hours")
        if self.sample_n_bytes != CODINGS[self.coding]:
            fail("sample_n_bytes", f"is {self.sample_n_bytes}; {self.coding} is read with {CODINGS[self.coding]}")

    @property
    def duration(self) -> float:
        return self.sample_count / self.sample_rate


def read_sphere_header(path: str | Path) -> SphereHeader:
    """The header of a SPHERE file, strictly: every line ``name -i|-r|-sN value``, the fields this reader needs
    present and the data after the header as long as they say (for uncompressed samples)."""
    path = str(path)
    with open(path, "rb") as file:
        head = file.read(MIN_HEADER_BYTES)
        if not head.startswith(HEADER_MAGIC + b"\n"):
            raise SphereError(f"{path}: not a NIST SPHERE file (it does not start with 'NIST_1A')")
        size_line = head[len(HEADER_MAGIC) + 1 :].split(b"\n", 1)[0]
        try:
            header_bytes = int(size_line)
        except ValueError:
            raise SphereError(f"{path}: the SPHERE header size {size_line!r} is not a number") from None
        if header_bytes < MIN_HEADER_BYTES:
            raise SphereError(f"{path}: the SPHERE header size {header_bytes} is below {MIN_HEADER_BYTES}")
        head += file.read(header_bytes - len(head))
        magic = file.read(len(SHORTEN_MAGIC))
    if len(head) < header_bytes:
        raise SphereError(f"{path}: the file ends inside its {header_bytes}-byte SPHERE header")
    fields = _header_fields(path, head.decode("latin-1").split("\n")[2:])

    def value_of(name: str, kind: type, default=None):
        if name not in fields:
            if default is None:
                raise SphereError(f"{path}: the SPHERE header has no field {name}")
            return default
        value = fields[name]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, kind):
            raise SphereError(
                f"{path}: SPHERE header field {name} is {value!r}, not a{'n int' if kind is int else ' string'}"
            )
        return value

    coding_field = value_of("sample_coding", str, "pcm").strip()
    coding = coding_field.removesuffix(SHORTEN_SUFFIX)
    coding = "ulaw" if coding == "mu-law" else coding
    if coding not in CODINGS:
        raise SphereError(f"{path}: SPHERE header field sample_coding is {coding_field!r}; this reader decodes "
                          f"pcm, ulaw and alaw, plain or {SHORTEN_SUFFIX[1:]}")  # fmt: skip
    shorten = magic == SHORTEN_MAGIC
    if coding_field.endswith(SHORTEN_SUFFIX) and not shorten:
        raise SphereError(f"{path}: SPHERE header says {coding_field!r} but the samples do not start with 'ajkg'")
    sample_n_bytes = value_of("sample_n_bytes", int, CODINGS[coding])
    byte_order = "|"
    if coding == "pcm":
        byte_format = value_of("sample_byte_format", str).strip()
        if byte_format not in ("01", "10"):
            raise SphereError(f"{path}: SPHERE header field sample_byte_format is {byte_format!r}, not '01' "
                              f"(little-endian) or '10' (big-endian)")  # fmt: skip
        byte_order = "<" if byte_format == "01" else ">"
    header = SphereHeader(
        path=path,
        header_bytes=header_bytes,
        sample_count=value_of("sample_count", int),
        sample_rate=value_of("sample_rate", int),
        channel_count=value_of("channel_count", int),
        coding=coding,
        sample_n_bytes=sample_n_bytes,
        byte_order=byte_order,
        shorten=shorten,
    )
    if not shorten:
        data_bytes = os.path.getsize(path) - header_bytes
        expected = header.sample_count * header.channel_count * sample_n_bytes
        if data_bytes < expected:
            raise SphereError(f"{path}: truncated: {data_bytes} bytes of samples after the header, which says "
                              f"{header.sample_count} samples x {header.channel_count} channels x "
                              f"{sample_n_bytes} bytes = {expected}")  # fmt: skip
    return header


def _header_fields(path: str, lines: list[str]) -> dict[str, int | float | str]:
    fields: dict[str, int | float | str] = {}
    for number, line in enumerate(lines, start=3):
        line = line.rstrip("\r")
        if line == "end_head":
            return fields
        if not line.strip() or line.startswith(";"):
            continue
        parts = line.split(" ", 2)
        if len(parts) != 3 or not parts[1].startswith("-"):
            raise SphereError(f"{path}: SPHERE header line {number} {line!r} is not 'name -type value'")
        name, kind, value = parts
        try:
            if kind == "-i":
                fields[name] = int(value)
            elif kind == "-r":
                fields[name] = float(value)
            elif kind.startswith("-s") and kind[2:].isdigit():
                fields[name] = value  # sph2pipe too reads the value, not its declared length
            else:
                raise SphereError(f"{path}: SPHERE header field {name} has type {kind!r}, not -i, -r or -sN")
        except ValueError as error:
            if isinstance(error, SphereError):
                raise
            raise SphereError(f"{path}: SPHERE header field {name} value {value!r} is not of type {kind}") from None
    raise SphereError(f"{path}: the SPHERE header has no end_head line")


def read_sphere(
    path: str | Path, offset: float = 0.0, duration: float | None = None
) -> tuple[np.ndarray, int]:  # [C, N] float32 in [-1, 1], sample rate
    """Samples of a SPHERE file from ``offset`` seconds for ``duration`` seconds (to the end if ``None``)."""
    header = read_sphere_header(path)
    start = min(compute_num_samples(offset, header.sample_rate), header.sample_count)
    end = header.sample_count
    if duration is not None:
        end = min(start + compute_num_samples(duration, header.sample_rate), end)
    if header.shorten:
        stat = os.stat(header.path)
        codes = _decoded_shorten(header, stat.st_mtime_ns, stat.st_size)[:, start:end]  # [C, n]
    else:
        frame_bytes = header.channel_count * header.sample_n_bytes
        with open(header.path, "rb") as file:
            file.seek(header.header_bytes + start * frame_bytes)
            data = file.read((end - start) * frame_bytes)
        dtype = np.dtype(f"{header.byte_order}i2") if header.coding == "pcm" else np.dtype(np.uint8)
        codes = np.frombuffer(data, dtype=dtype).reshape(-1, header.channel_count).T  # [C, n]
    return _to_float(codes, header.coding), header.sample_rate


def _to_float(codes: np.ndarray, coding: str) -> np.ndarray:  # [C, n] int16 samples or G.711 bytes
    if coding == "ulaw":
        codes = ULAW_TO_LINEAR[codes]
    elif coding == "alaw":
        codes = ALAW_TO_LINEAR[codes]
    return codes.astype(np.float32) / np.float32(32768)


def _ulaw_to_linear(codes: np.ndarray) -> np.ndarray:
    """16-bit linear values of G.711 mu-law bytes."""
    inverted = ~codes.astype(np.int32) & 0xFF
    exponent, mantissa = (inverted >> 4) & 7, inverted & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(inverted & 0x80, -magnitude, magnitude).astype(np.int16)


def _linear_to_ulaw(linear: np.ndarray) -> np.ndarray:
    """G.711 mu-law bytes of 16-bit linear values (magnitudes clipped at 32635, as shorten's and SPHERE's tools)."""
    linear = linear.astype(np.int64)
    magnitude = np.minimum(np.abs(linear), 32635) + 0x84
    exponent = np.minimum(np.log2(np.maximum(magnitude >> 7, 1)).astype(np.int64), 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(np.where(linear < 0, 0x80, 0) | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _alaw_to_linear(codes: np.ndarray) -> np.ndarray:
    """16-bit linear values of G.711 A-law bytes."""
    toggled = codes.astype(np.int32) ^ 0x55
    segment, step = (toggled >> 4) & 7, (toggled & 0x0F) << 4
    magnitude = np.where(segment == 0, step + 8, (step + 0x108) << np.maximum(segment - 1, 0))
    return np.where(toggled & 0x80, magnitude, -magnitude).astype(np.int16)


ALL_CODES = np.arange(256)
ULAW_TO_LINEAR = _ulaw_to_linear(ALL_CODES)  # [256] int16
ALAW_TO_LINEAR = _alaw_to_linear(ALL_CODES)  # [256] int16


def _ulaw_rank_tables() -> np.ndarray:  # [ULAW_SHIFTS, 256] uint8
    """For each bit shift, the mu-law byte of each rank (at index rank + 128) of shorten's lossless mu-law. A byte
    "reaches" shift ``s`` when some multiple of ``2 ** (s + 3)`` compresses to it; at shift ``s`` the reaching
    positive bytes take ranks 0, 1, ... in increasing magnitude, then the others; the reaching negative bytes -1, -2,
    ..., then negative zero (0x7f), then the other negative bytes."""
    reach = np.zeros(256, dtype=np.int64)
    for shift in range(ULAW_SHIFTS):
        reach[_linear_to_ulaw(np.arange(-(1 << 15), 1 << 15, 1 << (shift + 3)))] = shift
    positive, negative = np.arange(255, 127, -1), np.arange(126, -1, -1)  # by increasing magnitude
    tables = np.zeros((ULAW_SHIFTS, 256), dtype=np.uint8)
    for shift in range(ULAW_SHIFTS):
        reaches = reach >= shift
        by_rank_up = np.concatenate([positive[reaches[positive]], positive[~reaches[positive]]])
        by_rank_down = np.concatenate([negative[reaches[negative]], [127], negative[~reaches[negative]]])
        tables[shift, 128:] = by_rank_up  # ranks 0..127
        tables[shift, :128] = by_rank_down[::-1]  # ranks -128..-1
    return tables


ULAW_RANK_TO_CODE = _ulaw_rank_tables()


@functools.lru_cache(maxsize=DECODED_FILES_CACHED)
def _decoded_shorten(header: SphereHeader, mtime_ns: int, size: int) -> np.ndarray:  # [C, N] int16 or uint8 codes
    """The whole shorten payload decoded (``mtime_ns`` and ``size`` key the cache so a rewritten file is re-read)."""
    with open(header.path, "rb") as file:
        file.seek(header.header_bytes)
        payload = file.read()
    decoded = ShortenDecoder(payload, header).decode()
    decoded.flags.writeable = False
    return decoded


class ShortenDecoder:
    """One shorten version 2 stream, decoded by :meth:`decode` into the SPHERE file's stored sample values.

    The commands and the bit positions of the residual codes are parsed one after another (the parse never depends
    on sample values); every :data:`CHUNK_SAMPLES` samples the chunk's residuals are then decoded at once, its
    blocks' seeds (last samples, running means) carried through in Python scalars, and its samples computed at once.
    """

    def __init__(self, payload: bytes, header: SphereHeader):
        self.header = header
        self.where = f"{header.path}: shorten stream"
        if len(payload) < len(SHORTEN_MAGIC) + 1 or payload[len(SHORTEN_MAGIC)] != SHORTEN_VERSION:
            version = payload[len(SHORTEN_MAGIC)] if len(payload) > len(SHORTEN_MAGIC) else "missing"
            raise SphereError(f"{self.where} has version {version}; this reader decodes version {SHORTEN_VERSION}")
        stream = np.frombuffer(payload[len(SHORTEN_MAGIC) + 1 :], dtype=np.uint8)
        self.bits = np.unpackbits(stream).tobytes()  # one byte 0/1 per bit, for bytes.find
        self.num_bits = len(self.bits)
        padded = np.concatenate([stream, np.zeros(8, dtype=np.uint8)])
        # [len(stream)] the 64 bits from each byte on, big-endian: a view with a one-byte stride, no copy
        self.windows = np.ndarray(shape=(len(stream),), dtype=">u8", buffer=padded, strides=(1,))
        self.position = 0

    def fail(self, why: str):
        raise SphereError(f"{self.where} {why} (at bit {self.position} of {self.num_bits})")

    def uvar(self, low_bits: int) -> int:
        if low_bits > MAX_LOW_BITS:
            self.fail(f"has a code with {low_bits} low bits")
        one = self.bits.find(1, self.position)
        end = one + 1 + low_bits
        if one < 0 or end > self.num_bits:
            self.fail("is truncated")
        high = one - self.position
        self.position = end
        if low_bits == 0:
            return high
        low = int(self.windows[(one + 1) >> 3]) >> (64 - ((one + 1) & 7) - low_bits) & ((1 << low_bits) - 1)
        return (high << low_bits) | low

    def svar(self, low_bits: int) -> int:
        folded = self.uvar(low_bits + 1)
        return ~(folded >> 1) if folded & 1 else folded >> 1

    def ulong(self) -> int:
        return self.uvar(self.uvar(ULONG_BITS))

    def decode(self) -> np.ndarray:  # [C, N] int16 samples or uint8 G.711 codes
        header = self.header
        sample_type, num_channels, block_size, max_lpc_order, mean_blocks, skip_bytes = (self.ulong() for _ in range(6))
        types = SHORTEN_PCM_TYPES if header.coding == "pcm" else SHORTEN_ULAW_TYPES if header.coding == "ulaw" else {}
        if sample_type not in types:
            self.fail(f"has sample type {sample_type}, which does not decode to {header.coding} samples")
        if num_channels != header.channel_count:
            self.fail(f"has {num_channels} channels; the SPHERE header says {header.channel_count}")
        if skip_bytes:
            self.fail(f"starts with {skip_bytes} skipped bytes, which are not samples")
        if not 0 < block_size <= MAX_BLOCK_SIZE:
            self.fail(f"has a block size of {block_size}, not 1..{MAX_BLOCK_SIZE}")
        if max_lpc_order > MAX_LPC_ORDER:
            self.fail(f"has an LPC order of {max_lpc_order}, above {MAX_LPC_ORDER}")
        state = _Channels(num_channels, max(HISTORY, max_lpc_order), mean_blocks, self.where)
        samples_left = num_channels * (header.sample_count + MAX_BLOCK_SIZE)  # bounds the work a corrupt file makes
        kind, chunk, outputs = types[sample_type], _Chunk(), [[] for _ in range(num_channels)]
        find, channel, bitshift = self.bits.find, 0, 0
        while True:
            command = self.uvar(COMMAND_BITS)
            if command == FN_QUIT:
                break
            if command == FN_BLOCKSIZE:
                block_size = self.ulong()
                if not 0 < block_size <= MAX_BLOCK_SIZE:
                    self.fail(f"sets a block size of {block_size}, not 1..{MAX_BLOCK_SIZE}")
                continue
            if command == FN_BITSHIFT:
                bitshift = self.uvar(BITSHIFT_BITS)
                continue
            if command == FN_VERBATIM:  # a copied file header, not samples
                for _ in range(self.uvar(VERBATIM_LENGTH_BITS)):
                    self.uvar(VERBATIM_BYTE_BITS)
                continue
            if command > FN_VERBATIM:
                self.fail(f"has an unknown command {command}")
            samples_left -= block_size
            if samples_left < 0:
                self.fail(f"holds more samples than the SPHERE header's {header.sample_count} per channel")
            low_bits = 0
            if command != FN_ZERO:
                low_bits = self.uvar(ENERGY_BITS) + 1  # residuals are svar(energy): energy + 1 low bits
                if command == FN_QLPC:
                    order = self.uvar(LPC_ORDER_BITS)
                    if order > max_lpc_order:
                        self.fail(f"has an LPC order {order} above the stream's maximum {max_lpc_order}")
                    chunk.coefficients[len(chunk.commands)] = [self.svar(LPC_QUANT) for _ in range(order)]
                if low_bits > MAX_LOW_BITS:
                    self.fail(f"has residuals with {low_bits} low bits")
                chunk.code_starts.append(self.position)
                append, position, step = chunk.terminators.append, self.position, low_bits + 1
                for _ in range(block_size):  # sequential: where a code starts depends on the one before
                    one = find(1, position)
                    append(one)
                    position = one + step
                self.position = position  # checked with the chunk: a missing one shows as a terminator of -1
            chunk.add(command, block_size, channel, bitshift, low_bits)
            channel = (channel + 1) % num_channels
            if chunk.num_samples >= CHUNK_SAMPLES:
                self.store(*self.reconstruct(chunk, state), kind, outputs)
                chunk = _Chunk()
        if chunk.commands:
            self.store(*self.reconstruct(chunk, state), kind, outputs)
        empty = np.zeros(0, dtype=np.int16 if kind in SHORTEN_PCM_TYPES.values() else np.uint8)
        per_channel = [np.concatenate(parts) if parts else empty for parts in outputs]
        lengths = sorted({len(samples) for samples in per_channel})
        if len(lengths) > 1 or lengths[0] < header.sample_count:
            self.fail(f"holds {lengths} samples per channel; the SPHERE header says {header.sample_count}")
        return np.stack([samples[: header.sample_count] for samples in per_channel])

    def reconstruct(self, chunk: _Chunk, state: _Channels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A chunk's internal sample values (stream order), with each sample's channel and bit shift."""
        sizes = np.array(chunk.sizes, dtype=np.int64)  # [B]
        commands = np.array(chunk.commands, dtype=np.int64)  # [B]
        total = int(sizes.sum())
        block_starts = np.cumsum(sizes) - sizes  # [B]
        coded = commands != FN_ZERO  # [B] blocks with residuals in the stream
        residuals = np.zeros(total, dtype=np.int64)  # [T]
        if coded.any():
            residuals[np.repeat(coded, sizes)] = self.residuals(chunk, sizes[coded], np.array(chunk.low_bits)[coded])
        # per block, the residuals' first, second and third cumulative sums (each restarts at the block)
        sums = [residuals]
        for _ in range(3):
            running = np.cumsum(sums[-1])
            sums.append(running - np.repeat(running[block_starts] - sums[-1][block_starts], sizes))
        sum_of_third = np.add.reduceat(sums[3], block_starts).tolist()  # [B] the fourth sum at each block's end
        # [B, H] each block's last H positions (before its start where it is shorter: not used)
        tail_positions = np.clip(
            block_starts[:, None] + sizes[:, None] - state.history + np.arange(state.history), 0, None
        )
        tails = [values[tail_positions].tolist() for values in sums]  # 4 x [B][H]
        seeds = state.carry(chunk, tails, sum_of_third, residuals)  # [B] each: last sample, difference, second
        positions = np.arange(total) - np.repeat(block_starts, sizes) + 1  # [T] 1-based index in the block
        last, difference, second, offset = (np.repeat(np.array(values, dtype=np.int64), sizes) for values in seeds)
        order = np.repeat(commands, sizes)
        values = np.select(
            [order == FN_DIFF0, order == FN_DIFF1, order == FN_DIFF2, order == FN_DIFF3],
            [
                residuals + offset,
                last + sums[1],
                last + positions * difference + sums[2],
                last + positions * difference + second * (positions * (positions + 1) // 2) + sums[3],
            ],
            0,  # ZERO
        )
        for block, block_values in state.lpc_blocks.items():
            values[block_starts[block] : block_starts[block] + sizes[block]] = block_values
        return values, np.repeat(chunk.channels, sizes), np.repeat(chunk.bitshifts, sizes)

    def residuals(self, chunk: _Chunk, sizes: np.ndarray, low_bits: np.ndarray) -> np.ndarray:
        """The chunk's residual codes decoded from the bit positions of their terminating ones."""
        terminators = np.array(chunk.terminators, dtype=np.int64)  # [M]
        code_low_bits = np.repeat(low_bits, sizes)  # [M]
        starts = np.empty_like(terminators)
        starts[1:] = terminators[:-1] + code_low_bits[:-1] + 1
        starts[np.cumsum(sizes) - sizes] = chunk.code_starts
        if (terminators < starts).any() or terminators[-1] + code_low_bits[-1] >= self.num_bits:
            self.fail("is truncated")
        low_start = terminators + 1
        shifts = (64 - (low_start & 7) - code_low_bits).astype(np.uint64)
        masks = (np.uint64(1) << code_low_bits.astype(np.uint64)) - np.uint64(1)
        low = ((self.windows[low_start >> 3].astype(np.uint64) >> shifts) & masks).astype(np.int64)
        folded = ((terminators - starts) << code_low_bits) | low
        return np.where(folded & 1, ~(folded >> 1), folded >> 1)

    def store(self, values, channels, bitshifts, kind: str, outputs: list[list[np.ndarray]]) -> None:
        """Append a chunk's SPHERE samples (int16 PCM, or mu-law bytes) to each channel's ``outputs``."""
        if kind in ("au1", "au2"):
            if values.size and (values.min() < -128 or values.max() > 127 or bitshifts.max() >= ULAW_SHIFTS):
                self.fail("has mu-law ranks or bit shifts out of range")
            if kind == "au2":  # negative zero has its own rank, -1; the ranks below it move up by one
                index = np.where(values >= 0, values + 128, values + 129)
                stored = np.where(values == -1, 0x7F, ULAW_RANK_TO_CODE[bitshifts, index])
            else:
                stored = ULAW_RANK_TO_CODE[bitshifts, values + 128]
            stored = stored.astype(np.uint8)
        else:
            if values.size and bitshifts.max() > MAX_BITSHIFT:
                self.fail(f"has a bit shift of {bitshifts.max()}")
            shifted = values << bitshifts
            if kind == "ulaw":  # lossy mu-law: the linear value without its 3 low bits
                stored = _linear_to_ulaw(np.clip(shifted << 3, -32768, 32767))
            elif shifted.size and (shifted.min() < -32768 or shifted.max() > 32767):
                self.fail("decodes to samples outside 16 bits")
            else:
                stored = shifted.astype(np.int16)
        for channel, parts in enumerate(outputs):
            parts.append(stored[channels == channel])


@dataclass
class _Chunk:
    """Parsed blocks not yet reconstructed: per block its command, size, channel, bit shift and residual low bits;
    the bit where its codes start; each residual code's terminating one; QLPC coefficients by block."""

    commands: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    bitshifts: list[int] = field(default_factory=list)
    low_bits: list[int] = field(default_factory=list)
    code_starts: list[int] = field(default_factory=list)
    terminators: list[int] = field(default_factory=list)
    coefficients: dict[int, list[int]] = field(default_factory=dict)
    num_samples: int = 0

    def add(self, command: int, size: int, channel: int, bitshift: int, low_bits: int) -> None:
        self.commands.append(command)
        self.sizes.append(size)
        self.channels.append(channel)
        self.bitshifts.append(bitshift)
        self.low_bits.append(low_bits)
        self.num_samples += size


class _Channels:
    """What each channel carries from block to block: its last samples and the means of its last blocks."""

    def __init__(self, num_channels: int, history: int, mean_blocks: int, where: str):
        self.history, self.mean_blocks, self.where = history, mean_blocks, where
        self.tails = [[0] * history for _ in range(num_channels)]
        self.means = [[0] * max(1, mean_blocks) for _ in range(num_channels)]
        self.lpc_blocks: dict[int, list[int]] = {}

    def carry(self, chunk: _Chunk, tails: list, sum_of_third: list, residuals: np.ndarray) -> tuple[list, ...]:
        """Each block's seeds (last sample, last difference, last second difference, mean offset) from the state
        before it, and the state after it. ``tails`` holds the residuals and their three cumulative sums at each
        block's last positions; the samples there, and the block's sum, follow in closed form from the seeds."""
        history, mean_blocks = self.history, self.mean_blocks
        seeds = [], [], [], []
        self.lpc_blocks = {}
        start = 0
        for block, (command, size, channel, bitshift) in enumerate(
            zip(chunk.commands, chunk.sizes, chunk.channels, chunk.bitshifts)
        ):
            tail, means = self.tails[channel], self.means[channel]
            if mean_blocks == 0:
                offset = means[0]
            else:
                offset = _c_divide(mean_blocks // 2 + sum(means), mean_blocks)
                offset >>= bitshift  # shorten rounds down by bitshift - 1, then 1: the same
            last, before = tail[-1], tail[-2]
            difference = last - before
            second = difference - (before - tail[-3])
            if command == FN_ZERO:
                new, block_sum = [0] * min(size, history), 0
            elif command == FN_QLPC:
                block_residuals = residuals[start : start + size].tolist()
                new = _qlpc(tail, block_residuals, chunk.coefficients[block], offset)
                if new is None:
                    raise SphereError(f"{self.where}: an LPC block diverges (corrupt coefficients)")
                self.lpc_blocks[block] = new
                block_sum = sum(new)
            else:
                new = []
                for index, r, first_sum, second_sum, third_sum in zip(
                    range(size - history + 1, size + 1), *(values[block] for values in tails)
                ):  # 1-based index in the block of each of the last positions
                    if index < 1:
                        continue
                    if command == FN_DIFF0:
                        new.append(r + offset)
                    elif command == FN_DIFF1:
                        new.append(last + first_sum)
                    elif command == FN_DIFF2:
                        new.append(last + index * difference + second_sum)
                    else:
                        new.append(last + index * difference + second * (index * (index + 1) // 2) + third_sum)
                ends = [values[block][-1] for values in tails]  # sums over the block of the residuals and sums
                triangle, tetrahedron = size * (size + 1) // 2, size * (size + 1) * (size + 2) // 6
                block_sum = [
                    ends[1] + size * offset,
                    size * last + ends[2],
                    size * last + triangle * difference + ends[3],
                    size * last + triangle * difference + tetrahedron * second + sum_of_third[block],
                ][command]
            for values, seed in zip(seeds, (last, difference, second, offset)):
                values.append(seed)
            self.tails[channel] = (tail + new)[-history:]
            if mean_blocks > 0:
                self.means[channel] = means[1:] + [_c_divide(size // 2 + block_sum, size) << bitshift]
            start += size
        return seeds


def _c_divide(numerator: int, denominator: int) -> int:
    """Integer division truncating toward zero, as shorten's C does."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient


def _qlpc(history: list[int], residuals: list[int], coefficients: list[int], offset: int) -> list[int] | None:
    """A block predicted by quantised LPC on the mean-removed samples (a recursion: one sample at a time); None when
    it diverges past :data:`MAX_INTERNAL`, as only corrupt coefficients make it."""
    order = len(coefficients)
    past = [value - offset for value in history[len(history) - order :]]
    rounding = 1 << LPC_QUANT  # shorten v2 adds a whole unit, not a half, before the shift
    for residual in residuals:
        total = rounding
        for lag, coefficient in enumerate(coefficients, start=1):
            total += coefficient * past[-lag]
        value = residual + (total >> LPC_QUANT)
        if abs(value) > MAX_INTERNAL:
            return None
        past.append(value)
    return [value + offset for value in past[order:]]


class SphereAudioBackend(AudioBackend):
    """lhotse audio backend for ``.sph`` paths, decoding SPHERE with :func:`read_sphere` (no ``sph2pipe``)."""

    def read_audio(self, path_or_fd, offset=0.0, duration=None, force_opus_sampling_rate=None):
        return read_sphere(path_or_fd, offset=offset, duration=duration)

    def handles_special_case(self, path_or_fd) -> bool:
        return isinstance(path_or_fd, (str, Path)) and str(path_or_fd).lower().endswith(".sph")

    def is_applicable(self, path_or_fd) -> bool:
        return self.handles_special_case(path_or_fd)

    def supports_info(self) -> bool:
        return True

    def info(self, path_or_fd, force_opus_sampling_rate=None):
        header = read_sphere_header(path_or_fd)
        return LibsndfileCompatibleAudioInfo(
            channels=header.channel_count,
            frames=header.sample_count,
            samplerate=header.sample_rate,
            duration=header.duration,
        )


def install_sphere_backend() -> None:
    """Make lhotse's current audio backend read ``.sph`` with :class:`SphereAudioBackend`: its ``sph2pipe``
    backend replaced, or ours put first when it has none. Calling it again changes nothing."""
    current = lhotse_backend.get_current_audio_backend()
    backends = current.backends if isinstance(current, CompositeAudioBackend) else [current]
    if any(isinstance(backend, SphereAudioBackend) for backend in backends):
        return
    kept = [backend for backend in backends if not isinstance(backend, lhotse_backend.Sph2pipeSubprocessBackend)]
    lhotse_backend.set_current_audio_backend(CompositeAudioBackend([SphereAudioBackend(), *kept]))


install_sphere_backend()
