"""Recorded English speech from Debian's ``asterisk-core-sounds-en-wav`` package.

558 telephone prompts read by one speaker (Allison Smith; digits, letters, phonetic alphabet,
voicemail and IVR phrases; 0.2-73 s, ~25 minutes; 8 kHz mono 16-bit wav; CC-BY-SA-3.0). No
Python package on PyPI ships real recorded audio, so the audio quickstart needs this one
system package: ``apt-get install asterisk-core-sounds-en-wav``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

from mmm.data.corpora import register_corpus
from mmm.data.formats import Sample, audio_samples

ASTERISK_EN = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
#: Transcripts of the prompts, from ``asterisk-core-sounds-en`` (installed with the wav package).
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
#: The package's ``silence/`` folder holds 1-10 s of digital near-silence (-84 dBFS), which the
#: tokenizer would reject as silent anyway.
_SKIPPED_DIRS = {"silence"}


@register_corpus("asterisk-en")
def asterisk_en(root: Path = ASTERISK_EN) -> Iterator[Sample]:
    """The prompts as ``wav`` samples with a ``json`` member whose ``label`` is the prompt's
    folder (``digits``, ``letters``, ``phonetic``, ... or ``en_US_f_Allison`` at the top).

    Raises:
        FileNotFoundError: naming the Debian package to install when the folder is missing.
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"the embedded corpus 'asterisk-en' reads {root}, which is missing; install it with "
            "'apt-get install asterisk-core-sounds-en-wav' (Debian/Ubuntu), or train on your "
            "own shards (mmm shards --modality audio)"
        )
    files = sorted(
        str(path)
        for path in root.rglob("*.wav")
        if not _SKIPPED_DIRS.intersection(path.relative_to(root).parts)
    )
    yield from audio_samples(files, root=str(root))


def read_transcripts(path: Path = ASTERISK_TRANSCRIPTS) -> dict[str, str]:
    """Prompt name (its path below the sounds folder, no ``.wav``: ``digits/7``) -> what is
    said, from the package's ``name: transcript`` lines. Comments (``;``) and bracketed
    descriptions of sounds that hold no words (``[this is a simple beep tone]``) are left out.
    """
    transcripts: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            name, colon, text = line.partition(":")
            text = text.strip()
            if colon and not name.startswith(";") and text and not text.startswith("["):
                transcripts[name.strip()] = text
    return transcripts


@register_corpus("asterisk-en-transcribed")
def asterisk_en_transcribed(
    root: Path = ASTERISK_EN, transcripts: Path = ASTERISK_TRANSCRIPTS
) -> Iterator[Sample]:
    """The prompts with a spoken transcript as paired samples: the ``wav``, its transcript
    as ``txt``, and the ``json`` of ``asterisk-en``. Speech + transcript for cross-modal
    masked modeling (a hidden word predicted from the audio).

    Raises:
        FileNotFoundError: naming the Debian package when the transcripts are missing.
    """
    if not transcripts.is_file():
        raise FileNotFoundError(
            f"the embedded corpus 'asterisk-en-transcribed' reads {transcripts}, which is "
            "missing; install it with 'apt-get install asterisk-core-sounds-en-wav' (which "
            "brings asterisk-core-sounds-en)"
        )
    said = read_transcripts(transcripts)
    for sample in asterisk_en(root):
        name = json.loads(sample["json"])["path"].removesuffix(".wav")
        if name in said:
            yield {**sample, "txt": said[name].encode("utf-8")}
