"""Recorded English speech from Debian's ``asterisk-core-sounds-en-wav`` package.

558 telephone prompts read by one speaker (Allison Smith; digits, letters, phonetic alphabet,
voicemail and IVR phrases; 0.2-73 s, ~25 minutes; 8 kHz mono 16-bit wav; CC-BY-SA-3.0). No
Python package on PyPI ships real recorded audio, so the audio quickstart needs this one
system package: ``apt-get install asterisk-core-sounds-en-wav``.

``prompts-labelled``: those prompts labelled by their folder (4 classes).
``fsdd-labelled``: the Free Spoken Digit Dataset (3,000 recordings of the digits 0-9 by 6
speakers; CC BY-SA 4.0), read from a clone the user names, with held-out speakers;
``fsdd-words``: the same recordings paired with the digit said, as a word (``seven``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmm.data.corpora import LabelledCorpus, register_corpus, register_labelled_corpus
from mmm.data.corpora.image import DIGIT_WORDS
from mmm.data.formats import Sample, audio_samples
from mmm.data.labelled import select_classes
from mmm.data.labels import LABEL_MEMBER, LabelSpec, encode_label
from mmm.data.members import AUDIO_MEMBER, TEXT_MEMBER

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
            yield {**sample, TEXT_MEMBER: said[name].encode("utf-8")}


#: Prompt folders with fewer clips are left out of the labelled prompts.
PROMPTS_MIN_PER_CLASS = 20


def labelled_prompts(root: Path = ASTERISK_EN) -> tuple[list[Sample], np.ndarray, tuple[str, ...]]:
    """The prompts (``asterisk-en`` samples) labelled by their folder: ``en_US_f_Allison``
    (the top level: voicemail and IVR phrases, 358 clips), ``digits`` (94), ``letters`` (61)
    and ``phonetic`` (27). ``dictate`` (12) and ``followme`` (6) have fewer than
    ``PROMPTS_MIN_PER_CLASS`` clips and are left out.

    Returns:
        The kept samples, their class numbers, and the class names by number.

    Raises:
        FileNotFoundError: naming the Debian package when the sounds are not installed.
    """
    samples = list(asterisk_en(root))
    folders = [json.loads(sample["json"])["label"] for sample in samples]
    index, labels, classes = select_classes(folders, min_count=PROMPTS_MIN_PER_CLASS)
    return [samples[i] for i in index], labels, classes


@register_labelled_corpus("prompts-labelled")
def prompts_labelled() -> LabelledCorpus:
    """The prompts labelled by their folder (``labelled_prompts``; 4 classes) as ``wav``
    samples: the audio configs pretrain on these clips without the labels, so a probe of an
    ``audio_mae.yaml`` checkpoint on them asks what a linear probe asks. Val and test are 10%
    each by a hash of the key."""
    samples, labels, classes = labelled_prompts()
    labelled = (
        {"__key__": sample["__key__"], AUDIO_MEMBER: sample[AUDIO_MEMBER], LABEL_MEMBER: label}
        for sample, label in zip(samples, (encode_label(int(k)) for k in labels), strict=True)
    )
    return LabelledCorpus(LabelSpec("classification", classes, AUDIO_MEMBER), labelled)


#: FSDD's recordings are named ``{digit}_{speaker}_{index}.wav``.
FSDD_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z]+)_(?P<index>[0-9]+)$")
#: Held-out speakers of ``fsdd-labelled``: each accent group keeps a speaker in training
#: (jackson: US, nicolas: Belgian French, yweweler: German, george: Greek), and val and test
#: hear new voices whose accents training has heard (theo: US, lucas: German). A speaker
#: not listed here (a newer FSDD) trains.
FSDD_HELD_OUT = {"theo": "val", "lucas": "test"}


def fsdd_recordings(source_dir: str | os.PathLike | None) -> list[tuple[Path, int, str]]:
    """(file, digit, speaker) of the ``recordings/*.wav`` of an FSDD clone, sorted by file.

    Raises:
        FileNotFoundError: when no folder is named, or it holds no FSDD recordings; the
            message says how to get and name one.
    """
    how = (
        "clone https://github.com/Jakobovski/free-spoken-digit-dataset and set "
        "data.source_dir to the clone (the folder holding recordings/)"
    )
    if source_dir is None:
        raise FileNotFoundError(f"the corpus 'fsdd-labelled' reads a local FSDD folder: {how}")
    folder = Path(source_dir)
    recordings = folder / "recordings" if (folder / "recordings").is_dir() else folder
    names = {path: FSDD_NAME.match(path.stem) for path in sorted(recordings.glob("*.wav"))}
    files = [(path, int(n["digit"]), n["speaker"]) for path, n in names.items() if n is not None]
    if not files:
        raise FileNotFoundError(
            f"no FSDD recording ({{digit}}_{{speaker}}_{{index}}.wav) in {recordings}: {how}"
        )
    return files


@register_labelled_corpus("fsdd-labelled", reads_folder=True)
def fsdd_labelled(source_dir: str | os.PathLike | None) -> LabelledCorpus:
    """FSDD's recordings as ``wav`` samples (8 kHz mono, bytes unchanged) labelled by the
    digit spoken (10 classes, ``0``-``9``), keyed by file name; the speakers of
    ``FSDD_HELD_OUT`` are the val and test splits, all others train."""
    return _fsdd_corpus(source_dir, words=False)


@register_labelled_corpus("fsdd-words", reads_folder=True)
def fsdd_words(source_dir: str | os.PathLike | None) -> LabelledCorpus:
    """``fsdd-labelled`` as speech + transcript pairs: each recording (``wav``) with the digit
    it says written as a word (``txt``: ``seven``), for a paired audio + text model that
    writes the transcript of a held-out speaker's recording (``mmm generate --context``).
    Same keys, labels and held-out speakers as ``fsdd-labelled``."""
    return _fsdd_corpus(source_dir, words=True)


def _fsdd_corpus(source_dir: str | os.PathLike | None, words: bool) -> LabelledCorpus:
    """FSDD's recordings as labelled samples, with the spoken digit's word as ``txt`` when
    ``words``."""
    files = fsdd_recordings(source_dir)

    def samples() -> Iterator[Sample]:
        for path, digit, speaker in files:
            transcript = {TEXT_MEMBER: DIGIT_WORDS[digit].encode("utf-8")} if words else {}
            yield {
                "__key__": path.stem,
                "__source__": str(path),
                "__split__": FSDD_HELD_OUT.get(speaker, "train"),
                AUDIO_MEMBER: path.read_bytes(),
                LABEL_MEMBER: encode_label(digit),
                **transcript,
            }

    spec = LabelSpec("classification", tuple(str(d) for d in range(10)), AUDIO_MEMBER)
    return LabelledCorpus(spec=spec, samples=samples())
