"""A NIST SPHERE writer for tests: 16-bit PCM (either byte order) or mu-law, plain or shorten-compressed.

It is written independently of ``dmao.data.sphere`` (its own G.711 and its own shorten encoder) so that a round trip
through the reader checks the reader against a second reading of the format, not against itself. The shorten stream
is version 2 as NIST's ``embedded-shorten-v2.00`` writes it: a ``ulong`` header (sample type, channels, block size,
LPC order, mean length, skip bytes), then per block and channel in turn a command with Rice-coded residuals, then
``QUIT``. The encoder picks per block the predictor with the smallest residuals among those allowed, ``ZERO`` for a
silent block, ``BITSHIFT`` when a block's PCM samples share trailing zero bits (mu-law: when every byte of the block
is reached by coarser linear values), and ``BLOCKSIZE`` for a short last block; ``VERBATIM`` bytes on request.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEADER_BYTES = 1024
SHORTEN_MAGIC = b"ajkg"
SHORTEN_VERSION = 2
MEAN_BLOCKS = 4  # nmean: blocks in the running mean DIFF0 and QLPC predict from (shorten v2's default)
LPC_QUANT = 5  # QLPC coefficients are fixed point with 5 fraction bits
# shorten's internal sample types
SHORTEN_TYPES = {"s16hl": 3, "s16lh": 5, "au1": 0, "ulaw": 7, "au2": 8}
COMMANDS = {"diff0": 0, "diff1": 1, "diff2": 2, "diff3": 3, "quit": 4, "blocksize": 5, "bitshift": 6, "qlpc": 7,
            "zero": 8, "verbatim": 9}  # fmt: skip


def ulaw_compress(samples: np.ndarray) -> np.ndarray:
    """G.711 mu-law bytes of 16-bit linear samples (the bias-and-clip form SPHERE tools use)."""
    linear = samples.astype(np.int64)
    sign = np.where(linear < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(linear), 32635) + 0x84
    exponent = np.floor(np.log2(np.maximum(magnitude >> 7, 1))).astype(np.int64)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def ulaw_expand(codes: np.ndarray) -> np.ndarray:
    """16-bit linear values of G.711 mu-law bytes."""
    inverted = ~codes.astype(np.int64) & 0xFF
    exponent, mantissa = (inverted >> 4) & 7, inverted & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(inverted & 0x80, -magnitude, magnitude)


def write_sphere(
    path: str | Path,
    samples: np.ndarray,  # [N] or [N, C] int16
    sample_rate: int,
    coding: str = "pcm",
    shorten: bool = False,
    *,
    byte_format: str = "01",
    block_size: int = 256,
    lpc_order: int = 0,
    predictors: tuple[str, ...] = ("diff0", "diff1", "diff2", "diff3"),
    ulaw_type: str = "au2",
    verbatim: bytes = b"",
) -> None:
    """Write ``samples`` as a SPHERE file. ``coding`` ``"ulaw"`` stores the mu-law bytes of the samples (a reader
    gives back their expansion). ``byte_format`` ``"01"`` is little-endian PCM, ``"10"`` big-endian. With
    ``shorten``: ``block_size`` samples per block, ``lpc_order`` > 0 adds QLPC to the ``predictors`` (of DIFF0..3)
    tried per block, ``ulaw_type`` is shorten's internal type for mu-law (``"au2"`` as LDC's files, ``"au1"`` or
    lossy ``"ulaw"``) and ``verbatim`` bytes are stored ahead of the samples as a VERBATIM chunk."""
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise TypeError(f"write_sphere takes int16 samples, not {samples.dtype}")
    frames = samples.reshape(len(samples), -1)  # [N, C]
    if shorten and not predictors and lpc_order == 0:
        raise ValueError("a shorten stream needs a predictor: predictors or lpc_order > 0")
    if coding == "pcm":
        if byte_format not in ("01", "10"):
            raise ValueError(f"byte_format is '01' (little-endian) or '10' (big-endian), not {byte_format!r}")
        payload_values, bytes_per_sample, fields = frames, 2, {"sample_byte_format": byte_format}
        fields["sample_sig_bits"] = 16
        shorten_type = "s16lh" if byte_format == "01" else "s16hl"
    elif coding == "ulaw":
        payload_values, bytes_per_sample, fields = ulaw_compress(frames), 1, {"sample_byte_format": "1"}
        fields["sample_sig_bits"] = 8
        shorten_type = ulaw_type
    else:
        raise ValueError(f"coding is 'pcm' or 'ulaw', not {coding!r}")
    header = {
        "database_id": "dmao-tests",
        "sample_count": len(frames),
        "sample_rate": sample_rate,
        "channel_count": frames.shape[1],
        "sample_n_bytes": bytes_per_sample,
        "sample_coding": coding + (",embedded-shorten-v2.00" if shorten else ""),
        **fields,
    }
    if shorten:
        payload = _shorten(payload_values.T, shorten_type, block_size, lpc_order, predictors, verbatim)
    elif coding == "pcm":
        payload = payload_values.astype("<i2" if byte_format == "01" else ">i2").tobytes()
    else:
        payload = payload_values.tobytes()
    Path(path).write_bytes(sphere_header(header) + payload)


def sphere_header(fields: dict[str, int | str], size: int = HEADER_BYTES) -> bytes:
    """A ``size``-byte ``NIST_1A`` header holding ``fields`` (``-i`` for ints, ``-sN`` for strings)."""
    lines = [b"NIST_1A", f"{size:7d}".encode("ascii")]
    for name, value in fields.items():
        typed = f"-i {value}" if isinstance(value, int) else f"-s{len(value)} {value}"
        lines.append(f"{name} {typed}".encode("ascii"))
    text = b"\n".join([*lines, b"end_head", b""])
    if len(text) > size:
        raise ValueError(f"the SPHERE header fields do not fit in {size} bytes")
    return text + b" " * (size - len(text))


class _BitWriter:
    """Shorten's bit stream, most significant bit first: ``uvar(n)`` is the value's high part in unary (zeros then a
    one) and its low ``n`` bits; ``svar(n)`` folds a signed value (0, -1, 1, -2, ...) into ``uvar(n + 1)``."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def uvar(self, values, low_bits: int) -> None:
        values = np.atleast_1d(np.asarray(values, dtype=np.int64))
        high = values >> low_bits
        lengths = high + 1 + low_bits
        starts = np.cumsum(lengths) - lengths
        bits = np.zeros(int(lengths.sum()), dtype=np.uint8)
        bits[starts + high] = 1
        for bit in range(low_bits):
            bits[starts + high + 1 + bit] = (values >> (low_bits - 1 - bit)) & 1
        self.parts.append(bits)

    def svar(self, values, low_bits: int) -> None:
        values = np.atleast_1d(np.asarray(values, dtype=np.int64))
        self.uvar(np.where(values >= 0, values << 1, ((~values) << 1) | 1), low_bits + 1)

    def ulong(self, value: int) -> None:
        self.uvar(int(value).bit_length(), 2)
        self.uvar(value, int(value).bit_length())

    def tobytes(self) -> bytes:
        bits = np.concatenate(self.parts)
        bits = np.concatenate([bits, np.zeros(-len(bits) % 32, dtype=np.uint8)])  # decoders read 32-bit words
        return np.packbits(bits).tobytes()


def _c_divide(numerator: int, denominator: int) -> int:
    """Integer division truncating toward zero, as shorten's C does."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator > 0) else -quotient


def _ulaw_shifted_magnitudes(shift: int) -> np.ndarray:  # [128] int64
    """The magnitude code (0..127, by increasing linear magnitude) that each rank has at a mu-law bit shift: the
    slope is ``2 ** shift`` in the first 16-code segment and halves at each segment boundary. This closed form is a
    second derivation of shorten's rank tables, independent of the reader's."""
    intercepts = [0]
    for segment in range(1, shift + 1):
        intercepts.append(8 * segment + intercepts[-1] // 2)
    ranks = np.arange(128)
    return np.min([(ranks << (shift - j)) + intercepts[j] for j in range(shift + 1)], axis=0)


def _ulaw_ranks(codes: np.ndarray, shorten_type: str) -> tuple[np.ndarray, int]:
    """Lossless mu-law bytes as shorten's ranks at the largest bit shift every byte of the block allows."""
    positive = codes >= 128
    magnitude = np.where(positive, 255 - codes, 127 - codes)
    for shift in range(12, -1, -1):
        image = _ulaw_shifted_magnitudes(shift)
        reached = np.isin(magnitude, image)
        if shorten_type == "au1" and shift > 0:  # au1 ranks negative zero (0x7f) after every reaching byte
            reached &= codes != 0x7F
        if reached.all():
            break
    rank = np.searchsorted(image, magnitude)  # image is increasing
    if shorten_type == "au2":  # negative zero is rank -1, the other negatives move down by one
        return np.where(positive, rank, -(rank + 1)), shift
    return np.where(positive, rank, np.where(codes == 0x7F, -128, -rank)), shift


def _internal(stored: np.ndarray, shorten_type: str) -> tuple[np.ndarray, int]:
    """Stored sample values (int16 or mu-law bytes) as shorten's internal integers and their bit shift: PCM loses
    the trailing zero bits all its samples share."""
    if shorten_type in ("au1", "au2"):
        return _ulaw_ranks(stored.astype(np.int64), shorten_type)
    values = stored.astype(np.int64)
    if shorten_type == "ulaw":  # lossy: the linear value without its 3 low bits
        values = ulaw_expand(values) >> 3
    combined = int(np.bitwise_or.reduce(values))
    shift = (combined & -combined).bit_length() - 1 if combined else 0
    return values >> shift, shift


def _residuals(history: np.ndarray, block: np.ndarray, predictor: str, offset: int) -> np.ndarray:
    full = np.concatenate([history, block])
    n, h = len(block), len(history)
    previous = [full[h - lag : h - lag + n] for lag in (1, 2, 3)]
    if predictor == "diff0":
        return block - offset
    if predictor == "diff1":
        return block - previous[0]
    if predictor == "diff2":
        return block - (2 * previous[0] - previous[1])
    return block - (3 * (previous[0] - previous[1]) + previous[2])


def _qlpc(history: np.ndarray, block: np.ndarray, order: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantised least-squares LPC coefficients of the mean-removed block and its residuals."""
    full = np.concatenate([history, block]) - offset
    h = len(history)
    lagged = np.stack([full[h - lag - 1 : len(full) - lag - 1] for lag in range(order)], axis=1)  # [n, order]
    target = full[h:]
    coefficients = np.linalg.lstsq(lagged.astype(np.float64), target.astype(np.float64), rcond=None)[0]
    quantised = np.clip(np.round(coefficients * (1 << LPC_QUANT)), -(1 << 10), 1 << 10).astype(np.int64)
    prediction = ((1 << LPC_QUANT) + lagged @ quantised) >> LPC_QUANT
    return quantised, target - prediction


def _shorten(
    channels: np.ndarray,  # [C, N] stored values
    shorten_type: str,
    block_size: int,
    lpc_order: int,
    predictors: tuple[str, ...],
    verbatim: bytes,
) -> bytes:
    num_channels, num_samples = channels.shape
    bits = _BitWriter()
    for value in (SHORTEN_TYPES[shorten_type], num_channels, block_size, lpc_order, MEAN_BLOCKS, 0):
        bits.ulong(value)
    if verbatim:  # shorten 3 keeps a wrapped file's own header this way
        bits.uvar(COMMANDS["verbatim"], 2)
        bits.uvar(len(verbatim), 5)
        bits.uvar(list(verbatim), 8)
    history_length = max(3, lpc_order)
    histories = [np.zeros(history_length, dtype=np.int64) for _ in range(num_channels)]
    means = [[0] * MEAN_BLOCKS for _ in range(num_channels)]
    bitshift, current_size = 0, block_size
    for start in range(0, num_samples, block_size):
        size = min(block_size, num_samples - start)
        if size != current_size:
            bits.uvar(COMMANDS["blocksize"], 2)
            bits.ulong(size)
            current_size = size
        for channel in range(num_channels):
            stored = channels[channel, start : start + size]
            block, shift = _internal(stored, shorten_type)
            if block.any() and shift != bitshift:
                bits.uvar(COMMANDS["bitshift"], 2)
                bits.uvar(shift, 2)
                bitshift = shift
            total = MEAN_BLOCKS // 2 + sum(means[channel])
            offset = _c_divide(total, MEAN_BLOCKS)
            offset = offset if bitshift == 0 else (offset >> (bitshift - 1)) >> 1
            if not block.any():
                bits.uvar(COMMANDS["zero"], 2)
            else:
                candidates = {name: (None, _residuals(histories[channel], block, name, offset)) for name in predictors}
                if lpc_order > 0:
                    candidates["qlpc"] = _qlpc(histories[channel], block, lpc_order, offset)
                name = min(candidates, key=lambda key: np.abs(candidates[key][1]).sum())
                coefficients, residuals = candidates[name]
                folded_mean = int(np.mean(np.abs(residuals) * 2))
                energy = max(0, folded_mean.bit_length() - 1)
                bits.uvar(COMMANDS[name], 2)
                bits.uvar(energy, 3)
                if coefficients is not None:
                    bits.uvar(len(coefficients), 2)
                    bits.svar(coefficients, LPC_QUANT)
                bits.svar(residuals, energy)
            means[channel] = means[channel][1:] + [_c_divide(size // 2 + int(block.sum()), size) << bitshift]
            histories[channel] = np.concatenate([histories[channel], block])[-history_length:]
    bits.uvar(COMMANDS["quit"], 2)
    return SHORTEN_MAGIC + bytes([SHORTEN_VERSION]) + bits.tobytes()
