"""ctypes binding to espeak-ng as shipped by the ``espeakng-loader`` wheel (library and voice data, no system package).

The library is a process-global singleton whose synthesiser keeps state between utterances that no API call resets:
the pitch-flutter phase, the automatic gain control, the echo buffer and the C ``rand()`` stream all carry over, so
the same text and voice give different samples depending on what was spoken before. To make every utterance a pure
function of its arguments, :meth:`Espeak.synthesize` forks: the child seeds both random streams, speaks once from
the pristine state it inherited and pipes the samples back, and the parent never speaks itself. A fork costs about
10 ms (under 1 % of a clip's duration), and a crash or hang inside espeak only ends the child (reported as
:class:`EspeakError`). This needs ``os.fork`` (Linux, macOS).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import signal
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_BUFFER_MS = 1000  # callback granularity; large buffers mean few Python callbacks
_CHILD_TIMEOUT_S = 60  # an utterance takes milliseconds; a child still running after this is stuck
_EXIT_UNKNOWN_VOICE = 2

# A BCP 47 script subtag (four letters after the language, e.g. en-Shaw = Shavian alphabet) names a writing system,
# not an accent.
_SCRIPT_SUBTAG = re.compile(r"^[a-z]{2,3}-[a-z]{4}(?:-|$)")

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded or could not speak an utterance."""


class _VoiceStruct(ctypes.Structure):
    """``espeak_VOICE``; ``languages`` is a run of (priority byte, NUL-terminated tag) pairs ended by a zero byte."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


@dataclass(frozen=True)
class Dialect:
    """An espeak-ng English voice."""

    language: str
    """Its primary language tag, e.g. ``en-gb-scotland``: readable, used in speaker ids."""
    identifier: str
    """Its voice file, e.g. ``gmw/en-GB-scotland``: what :meth:`Espeak.synthesize` is given (unambiguous)."""


def _language_tags(address: int) -> list[str]:
    tags = []
    while ctypes.c_ubyte.from_address(address).value != 0:
        tag = ctypes.string_at(address + 1)
        tags.append(tag.decode())
        address += len(tag) + 2
    return tags


class Espeak:
    """The process's espeak-ng engine, initialised once in synchronous mode; get it with :meth:`instance`."""

    _instance: Espeak | None = None

    def __init__(self) -> None:
        import espeakng_loader

        if not hasattr(os, "fork"):
            raise EspeakError("the espeak-ng binding isolates utterances with os.fork, which this platform lacks")

        library_path = espeakng_loader.get_library_path()
        data_path = Path(espeakng_loader.get_data_path())
        try:
            lib = ctypes.CDLL(library_path)
        except OSError as err:
            raise EspeakError(f"cannot load the espeak-ng library {library_path}: {err}") from err
        if not hasattr(lib, "espeak_ng_SetRandSeed"):
            raise EspeakError(
                f"{library_path} predates espeak-ng 1.52 (no espeak_ng_SetRandSeed); upgrade espeakng-loader"
            )
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_VoiceStruct)]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        # The path argument is the folder that contains espeak-ng-data.
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, str(data_path.parent).encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise EspeakError(f"espeak-ng failed to initialise with the voice data in {data_path}")
        self._lib = lib
        self._libc = ctypes.CDLL(None)  # espeak's breath noise draws from the C library's rand()
        self._chunks: list[bytes] = []
        self._callback = _SynthCallback(self._collect)  # kept referenced: espeak holds a raw pointer to it
        lib.espeak_SetSynthCallback(self._callback)
        self.sample_rate: int = rate
        """Native output rate in Hz (22050 for the shipped voices)."""
        self.version: str = lib.espeak_Info(None).decode()
        """The library's version string, e.g. ``1.52.0``."""
        self.data_path = data_path

    @classmethod
    def instance(cls) -> Espeak:
        """The engine of this process, loaded on first use."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _collect(self, samples, num_samples: int, events) -> int:
        if num_samples > 0 and samples:
            self._chunks.append(ctypes.string_at(samples, 2 * num_samples))
        return 0  # 0 = continue synthesis

    def _voices(self, spec: _VoiceStruct | None) -> list[_VoiceStruct]:
        array = self._lib.espeak_ListVoices(None if spec is None else ctypes.byref(spec))
        voices = []
        while array[len(voices)]:
            voices.append(array[len(voices)].contents)
        return voices

    def english_dialects(self) -> list[Dialect]:
        """Every English accent in the voice data, sorted by language tag: voices whose primary language is ``en`` or
        ``en-*``, except tags with a script subtag (``en-shaw`` reads the Shavian alphabet, not Latin text)."""
        dialects = []
        for voice in self._voices(None):
            language = _language_tags(voice.languages)[0]
            if (language == "en" or language.startswith("en-")) and not _SCRIPT_SUBTAG.search(language):
                dialects.append(Dialect(language=language, identifier=voice.identifier.decode()))
        return sorted(dialects, key=lambda d: d.language)

    @functools.cached_property
    def _variant_names(self) -> tuple[str, ...]:
        spec = _VoiceStruct(languages=ctypes.cast(ctypes.c_char_p(b"variant"), ctypes.c_void_p))
        # identifiers look like "!v/m1"; the part after the slash is what follows "+" in a voice name
        return tuple(sorted(v.identifier.decode().split("/", 1)[1] for v in self._voices(spec)))

    def variants(self) -> list[str]:
        """Names of the voice variants (the ``voices/!v`` files: ``m1``, ``f3``, ``whisper``, ...), sorted."""
        return list(self._variant_names)

    def synthesize(self, text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int, seed: int) -> np.ndarray:
        """Speak ``text`` (UTF-8) with ``voice`` (``identifier+variant``, e.g. ``gmw/en-US+m3``) at ``rate_wpm`` words
        per minute, base ``pitch`` and ``pitch_range`` (0-100, espeak's 50 = normal). Returns int16 samples
        [T] at :attr:`sample_rate`, identical for identical arguments whatever was spoken before."""
        _, _, variant = voice.partition("+")
        if variant and variant not in self._variant_names:  # espeak would silently speak without it
            raise EspeakError(f"unknown espeak-ng voice variant {variant!r} in {voice!r}")
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12+ warns when forking a multi-threaded process (numpy's BLAS pool); the child runs no Python
            # threads and touches no lock they could hold: it only calls espeak and writes to a pipe.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            self._speak_in_child(text, voice, rate_wpm, pitch, pitch_range, seed, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if status != 0:
            if os.WIFSIGNALED(status):
                reason = f"killed by signal {os.WTERMSIG(status)}"
            elif os.WEXITSTATUS(status) == _EXIT_UNKNOWN_VOICE:
                reason = "unknown voice"
            else:
                reason = f"exit code {os.WEXITSTATUS(status)}"
            raise EspeakError(f"espeak-ng failed ({reason}) on voice {voice!r}, text {text!r}")
        return np.frombuffer(data, dtype=np.int16)

    def _speak_in_child(
        self, text: str, voice: str, rate_wpm: int, pitch: int, pitch_range: int, seed: int, write_fd: int
    ) -> None:
        """Runs in the forked child and never returns: exits 0 after writing the samples, :data:`_EXIT_UNKNOWN_VOICE`
        for a voice espeak does not know, 1 on any other failure (an exception included)."""
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # a Python-level handler could not run inside espeak
            signal.alarm(_CHILD_TIMEOUT_S)
            lib = self._lib
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                code = _EXIT_UNKNOWN_VOICE
                return
            for parameter, value in ((_PARAM_RATE, rate_wpm), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range)):
                lib.espeak_SetParameter(parameter, int(value), 0)
            seed32 = seed & 0x7FFFFFFF
            lib.espeak_ng_SetRandSeed(seed32)
            self._libc.srand(seed32)
            encoded = text.encode()
            self._chunks.clear()
            if lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) == 0:
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(b"".join(self._chunks))
                code = 0
        finally:
            os._exit(code)  # skips the parent's atexit handlers and buffered output, which the child shares
