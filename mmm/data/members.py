"""The names of a WebDataset sample's members (file extensions inside a shard), one constant
per member: the format readers that write them and the tokenizers that read them import these
instead of spelling the strings, so that a member is named in one place."""

from __future__ import annotations

#: Text (documents, transcripts, captions, class words).
TEXT_MEMBER = "txt"
#: A protein's residues, one letter each.
PROTEIN_MEMBER = "seq"
#: A molecule's SMILES string.
SMILES_MEMBER = "smi"
#: An image, as the bundled corpora write it (the image reader keeps a file's own extension).
IMAGE_MEMBER = "png"
#: An audio clip, as the bundled corpora write it (the audio reader keeps a file's own
#: extension).
AUDIO_MEMBER = "wav"
#: A time series: a (time, channel) float array saved with ``numpy.save``.
SERIES_MEMBER = "npy"
#: A sample's class label as text (WebDataset's convention).
CLASS_MEMBER = "cls"
#: A sample's other fields (duration, label, ...), as the image and audio readers write them.
METADATA_MEMBER = "json"
#: The member that holds a labelled sample's label (JSON).
LABEL_MEMBER = "label.json"
