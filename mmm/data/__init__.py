"""Reading and writing data, for every modality, in one place.

- ``patterns``: one expander for shard specifications and input files (globs, braces, ``::``,
  ``.txt`` lists of shards, ``pipe:`` URLs);
- ``formats``: users' files -> WebDataset samples, one module per format (text, FASTA,
  SMILES, audio, image, manifests of paired samples), each registered for ``mmm shards``;
- ``shards``: writing shards and their index;
- ``reading``: reading samples outside the training pipeline (vocabulary sources, statistics);
- ``corpora``: small real datasets that ship with installed packages;
- ``cache``: files built once, under a lock, by whichever process comes first.

Modalities (``mmm.tokenizers``) and the training pipeline (``datamodules``) depend on this
package; it depends on neither, nor on the models.
"""
