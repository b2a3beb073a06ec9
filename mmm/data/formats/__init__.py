"""File formats -> WebDataset samples, one module per format; each registers its reader under
the modality name ``mmm shards --modality NAME`` uses. Importing this package registers all."""

from mmm.data.formats.audio import AUDIO_EXTENSIONS, audio_samples
from mmm.data.formats.base import (
    SKIPPED,
    Sample,
    SampleSource,
    open_text,
    reader_extensions,
    reads_per_file,
    register_source,
    sample_key,
    sample_source,
)
from mmm.data.formats.image import IMAGE_EXTENSIONS, image_samples
from mmm.data.formats.manifest import manifest_samples
from mmm.data.formats.protein import clean_residues, protein_samples, read_fasta
from mmm.data.formats.smiles import smiles_samples
from mmm.data.formats.text import TEXT_EXTENSIONS, chunk_text, text_documents, text_samples
from mmm.data.formats.timeseries import (
    SERIES_MEMBER,
    TIMESERIES_EXTENSIONS,
    decode_series,
    encode_series,
    read_series_file,
    timeseries_samples,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "SERIES_MEMBER",
    "SKIPPED",
    "TEXT_EXTENSIONS",
    "TIMESERIES_EXTENSIONS",
    "Sample",
    "SampleSource",
    "audio_samples",
    "chunk_text",
    "clean_residues",
    "decode_series",
    "encode_series",
    "image_samples",
    "manifest_samples",
    "open_text",
    "protein_samples",
    "read_fasta",
    "read_series_file",
    "reader_extensions",
    "reads_per_file",
    "register_source",
    "sample_key",
    "sample_source",
    "smiles_samples",
    "text_documents",
    "text_samples",
    "timeseries_samples",
]
