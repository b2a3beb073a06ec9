"""Recorded English speech from Debian's ``asterisk-core-sounds-en-wav`` package.

558 telephone prompts read by one speaker (Allison Smith; digits, letters, phonetic alphabet,
voicemail and IVR phrases; 0.2-73 s, ~25 minutes; 8 kHz mono 16-bit wav; CC-BY-SA-3.0). No
Python package on PyPI ships real recorded audio, so the audio quickstart needs this one
system package: ``apt-get install asterisk-core-sounds-en-wav``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mmm.corpora import Sample, register_corpus
from mmm.tokenizers.audio import audio_samples

ASTERISK_EN = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
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
