"""Real time series from the UCR/UEA archives, as shipped inside the aeon wheel
(``pip install mmm[timeseries]``): ``aeon/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts``.

- ``ucr-univariate``: every series of the univariate sets in ``UNIVARIATE_SETS`` (train and
  test files; 1,949 series of 24 to 427 steps: arrowhead outlines, gun-draw motion, leaf
  outlines, a day of Italian power demand), for masked patch pre-training.
- ``ucr-<name>`` (``ucr-basicmotions``, ...): one set's series, unlabelled.
- ``ucr-<name>-labelled``: one set with its classes; its own TEST file is the test split,
  10% of its TRAIN file (by a hash of the key) is held out for validation.

The files are found without importing aeon (whose import is slow) and read with aeon's
``.ts`` loader, the same reader ``mmm shards --modality timeseries`` uses for users' files.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

from mmm.data.corpora import (
    LabelledCorpus,
    labelled_samples,
    register_corpus,
    register_labelled_corpus,
)
from mmm.data.formats import Sample
from mmm.data.formats.timeseries import encode_series, read_ts_file
from mmm.data.labels import LabelSpec
from mmm.data.members import SERIES_MEMBER
from mmm.optional import package_folders

#: Univariate sets of ``ucr-univariate``: (name, series length).
UNIVARIATE_SETS = ("ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf")
#: Every set with its own corpora (multivariate ones too: BasicMotions has 6 channels of 100
#: steps, JapaneseVowels 12 channels of 7 to 29 steps).
UCR_SETS = (*UNIVARIATE_SETS, "BasicMotions", "JapaneseVowels")
SPLITS = ("TRAIN", "TEST")


def ucr_file(name: str, split: str) -> Path:
    """``<Name>_<SPLIT>.ts`` of the installed aeon's data folder, found without importing aeon.

    Raises:
        MissingDependencyError: when aeon is not installed.
        FileNotFoundError: when this aeon lacks the file.
    """
    fix = f"The UCR/UEA set {name} is read from the aeon package: pip install mmm[timeseries]"
    root = package_folders("aeon", fix)[0]
    path = root / "datasets" / "data" / name / f"{name}_{split}.ts"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: this aeon does not ship {name}")
    return path


def ucr_series(names: tuple[str, ...]) -> Iterator[Sample]:
    """``npy`` samples of every series of the named sets, keyed ``<name>-<split>-<index>``."""
    for name in names:
        for split in SPLITS:
            values, _ = read_ts_file(ucr_file(name, split))
            for index, series in enumerate(values):
                yield {
                    "__key__": f"{name.lower()}-{split.lower()}-{index:05d}",
                    SERIES_MEMBER: encode_series(series),
                }


def ucr_labelled(name: str) -> LabelledCorpus:
    """Set ``name`` with its class labels; its TEST file is the test split."""
    splits = {split: read_ts_file(ucr_file(name, split)) for split in SPLITS}
    classes = tuple(sorted({y for _, labels in splits.values() for y in labels}, key=_class_order))

    def samples() -> Iterator[Sample]:
        for split, (values, labels) in splits.items():
            for sample in labelled_samples(
                keys=(f"{name.lower()}-{split.lower()}-{i:05d}" for i in range(len(values))),
                member=SERIES_MEMBER,
                inputs=map(encode_series, values),
                labels=(classes.index(label) for label in labels),
            ):
                sample["__split__"] = "test" if split == "TEST" else None  # train: hashed
                yield sample

    spec = LabelSpec("classification", classes, SERIES_MEMBER)
    return LabelledCorpus(spec=spec, samples=samples(), val_fraction=0.1, test_fraction=0.0)


def _class_order(label: str) -> tuple[int, float | str]:
    """Numeric class names in numeric order (``2`` before ``10``), then the others."""
    try:
        return 0, float(label)
    except ValueError:
        return 1, label


register_corpus("ucr-univariate")(partial(ucr_series, UNIVARIATE_SETS))
for _name in UCR_SETS:
    register_corpus(f"ucr-{_name.lower()}")(partial(ucr_series, (_name,)))
    register_labelled_corpus(f"ucr-{_name.lower()}-labelled")(partial(ucr_labelled, _name))
