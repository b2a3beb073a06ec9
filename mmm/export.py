"""Leave mmm: write a trained model as a directory that stock Hugging Face / timm classes load.

Discrete modalities (text, protein, SMILES) map exactly onto ``transformers.EsmForMaskedLM``:
with ``position_embedding_type="absolute"``, ``emb_layer_norm_before=True`` and
``token_dropout=False`` ESM is a pre-LN Transformer whose embeddings are token + learned
absolute position -> LayerNorm, whose final norm is ``emb_layer_norm_after`` and whose LM head
is dense -> GELU -> LayerNorm -> tied decoder + bias, which is what mmm's ``TokenEmbedder``,
``TransformerEncoder`` and ``TokenHead`` compute. Two details differ and are mapped:

- ESM numbers positions from ``padding_idx + 1`` (``create_position_ids_from_input_ids``), so
  mmm's position row ``i`` becomes ESM's row ``padding_idx + 1 + i``; rows below stay zero.
- ESM zeroes the embeddings of padding positions; mmm masks them out of attention instead, so
  real positions agree exactly and padding positions (which nothing reads) differ.

The export holds a tokenizer that ``AutoTokenizer`` loads with mmm's ids: ESM-2's vocabulary
for proteins (``EsmTokenizer``), mmm's own fast tokenizer for text, and a
``PreTrainedTokenizerFast`` over mmm's SMILES vocabulary (same regex pre-tokenization) for
SMILES. Image MAE encoders are written as a timm ``VisionTransformer`` state dict.
"""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from mmm.models.encoder import TransformerEncoder
from mmm.models.modality import TokenModality
from mmm.module import MaskedModelingModule
from mmm.tokenizers import smiles
from mmm.tokenizers.base import Tokenizer
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.protein import TOKENS, ProteinTokenizer
from mmm.tokenizers.smiles import SmilesTokenizer
from mmm.tokenizers.text import TextTokenizer

if TYPE_CHECKING:
    # transformers' model classes are imported where used: importing them pulls in optional
    # backends (torchaudio) that must not break ``mmm`` commands which never export.
    from transformers import EsmConfig, EsmForMaskedLM, PreTrainedTokenizerBase


def _trunk(module: MaskedModelingModule) -> TransformerEncoder:
    """The module's encoder, if it is the pre-LN trunk that stock classes reproduce."""
    encoder = module.encoder
    if not isinstance(encoder, TransformerEncoder):
        raise TypeError(
            f"export: only mmm.models.TransformerEncoder trunks map onto stock classes, "
            f"this module has {type(encoder).__name__}"
        )
    return encoder


def _modality(module: MaskedModelingModule) -> nn.Module:
    """The module's one modality: stock classes hold one embedder and head."""
    try:
        return module.modalities[module.modality_named()]
    except ValueError as error:
        raise ValueError(
            f"export: only one-modality models map onto stock classes; {error}"
        ) from error


def _tokenizer(module: MaskedModelingModule) -> Tokenizer:
    return module.tokenizers[module.modality_named()]


def _layer_norm_eps(*parts: nn.Module) -> float:
    """The one epsilon of the LayerNorms in ``parts`` (ESM and the exported ViT have one)."""
    found = {m.eps for part in parts for m in part.modules() if isinstance(m, nn.LayerNorm)}
    if len(found) != 1:
        raise ValueError(f"export: LayerNorms with several eps {sorted(found)} cannot be mapped")
    return found.pop()


def esm_config(module: MaskedModelingModule) -> EsmConfig:
    """The ``EsmConfig`` whose model computes what ``module`` computes (ESM's activation is
    always erf GELU, as ``nn.GELU`` in timm's ``Mlp`` and in ``TokenHead``)."""
    from transformers import EsmConfig

    encoder = _trunk(module)
    spec = _modality(module).spec
    block = encoder.blocks[0]
    return EsmConfig(
        vocab_size=spec.vocab_size,
        hidden_size=encoder.dim,
        num_hidden_layers=len(encoder.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=spec.max_length + spec.pad_token_id + 1,
        layer_norm_eps=_layer_norm_eps(module.encoder, _modality(module)),
        position_embedding_type="absolute",
        emb_layer_norm_before=True,
        token_dropout=False,
        pad_token_id=spec.pad_token_id,
        mask_token_id=spec.mask_token_id,
        tie_word_embeddings=True,
        architectures=["EsmForMaskedLM"],
    )


def _esm_views(module: MaskedModelingModule) -> dict[str, Tensor]:
    """``EsmForMaskedLM``'s names -> views of mmm's tensors (position table excluded, its rows
    are shifted): one table read both ways, by export and by ``init_from_esm``."""
    modality = _modality(module)
    if not isinstance(modality, TokenModality):
        raise TypeError("EsmForMaskedLM serves discrete modalities (text/protein/SMILES)")
    embedder, head, encoder = modality.embedder, modality.head, _trunk(module)
    if head.decoder.weight is not embedder.tokens.weight:
        raise ValueError("EsmForMaskedLM ties its decoder; this module's head is untied")
    views = {
        "esm.embeddings.word_embeddings.weight": embedder.tokens.weight,
        "esm.embeddings.layer_norm.weight": embedder.norm.weight,
        "esm.embeddings.layer_norm.bias": embedder.norm.bias,
        "esm.encoder.emb_layer_norm_after.weight": encoder.norm.weight,
        "esm.encoder.emb_layer_norm_after.bias": encoder.norm.bias,
        "lm_head.dense.weight": head.transform[0].weight,
        "lm_head.dense.bias": head.transform[0].bias,
        "lm_head.layer_norm.weight": head.transform[2].weight,
        "lm_head.layer_norm.bias": head.transform[2].bias,
        "lm_head.decoder.weight": head.decoder.weight,
        "lm_head.bias": head.decoder.bias,
    }
    for index, block in enumerate(encoder.blocks):
        views.update(_esm_layer(block, f"esm.encoder.layer.{index}."))
    return {name: value.detach() for name, value in views.items()}


#: ESM's name of the position table, whose row ``pad_token_id + 1 + i`` is mmm's row ``i``.
ESM_POSITIONS = "esm.embeddings.position_embeddings.weight"


def esm_state_dict(module: MaskedModelingModule) -> dict[str, Tensor]:
    """mmm's weights under ``EsmForMaskedLM``'s names (the tied decoder weight included)."""
    state = {name: view.float().clone() for name, view in _esm_views(module).items()}
    spec = _modality(module).spec
    table = _modality(module).embedder.positions.weight.detach().float()  # (max_length, D)
    positions = table.new_zeros(spec.max_length + spec.pad_token_id + 1, table.shape[1])
    positions[spec.pad_token_id + 1 :] = table  # ESM's position of token i is pad_id + 1 + i
    state[ESM_POSITIONS] = positions
    return state


@torch.no_grad()
def init_from_esm(module: MaskedModelingModule, directory: str | Path) -> None:
    """Load a local ``EsmForMaskedLM`` directory (``save_pretrained``) into ``module``'s
    embedder, trunk and head. Only the pre-LN absolute-position layout maps exactly (ESM-2's
    own checkpoints use rotary positions, which mmm's trunk lacks); anything else is refused
    with the setting that differs."""
    from transformers import EsmForMaskedLM

    source = EsmForMaskedLM.from_pretrained(str(directory))
    wanted = esm_config(module)
    for name in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "position_embedding_type",
        "emb_layer_norm_before",
        "token_dropout",
        "pad_token_id",
        "layer_norm_eps",
    ):
        have, need = getattr(source.config, name), getattr(wanted, name)
        if have != need:
            raise ValueError(
                f"init_from: {directory} has {name}={have!r}, this model needs {need!r}"
            )
    if source.config.max_position_embeddings < wanted.max_position_embeddings:
        raise ValueError(
            f"init_from: {directory} has {source.config.max_position_embeddings} positions, "
            f"max_length={_modality(module).spec.max_length} needs {wanted.max_position_embeddings}"
        )
    state = source.state_dict()
    for name, view in _esm_views(module).items():
        view.copy_(state[name])
    table = _modality(module).embedder.positions.weight  # (max_length, D)
    first = wanted.pad_token_id + 1
    table.copy_(state[ESM_POSITIONS][first : first + table.shape[0]])


def _esm_layer(block: nn.Module, prefix: str) -> dict[str, Tensor]:
    """One timm ``Block`` (norm1 -> fused qkv -> proj, norm2 -> fc1 -> GELU -> fc2) under ESM's
    layer names."""
    query, key, value = block.attn.qkv.weight.chunk(3, dim=0)  # 3 x (D, D)
    query_bias, key_bias, value_bias = block.attn.qkv.bias.chunk(3, dim=0)  # 3 x (D,)
    attention = prefix + "attention."
    return {
        attention + "LayerNorm.weight": block.norm1.weight,
        attention + "LayerNorm.bias": block.norm1.bias,
        attention + "self.query.weight": query,
        attention + "self.query.bias": query_bias,
        attention + "self.key.weight": key,
        attention + "self.key.bias": key_bias,
        attention + "self.value.weight": value,
        attention + "self.value.bias": value_bias,
        attention + "output.dense.weight": block.attn.proj.weight,
        attention + "output.dense.bias": block.attn.proj.bias,
        prefix + "LayerNorm.weight": block.norm2.weight,
        prefix + "LayerNorm.bias": block.norm2.bias,
        prefix + "intermediate.dense.weight": block.mlp.fc1.weight,
        prefix + "intermediate.dense.bias": block.mlp.fc1.bias,
        prefix + "output.dense.weight": block.mlp.fc2.weight,
        prefix + "output.dense.bias": block.mlp.fc2.bias,
    }


def to_esm(module: MaskedModelingModule) -> EsmForMaskedLM:
    """An ``EsmForMaskedLM`` (eval mode, fp32) computing what ``module`` computes."""
    from transformers import EsmForMaskedLM

    model = EsmForMaskedLM(esm_config(module))  # mmm's fp32 weights are copied below
    result = model.load_state_dict(esm_state_dict(module), strict=False)
    # ESM's contact-prediction head reads attention maps and plays no part in masked-LM
    # logits; mmm has none, so it keeps its initialization. Everything else must be set.
    missing = [k for k in result.missing_keys if not k.startswith("esm.contact_head.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"export: ESM mapping incomplete: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    return model.eval()


def hf_tokenizer(tokenizer: Tokenizer, output: Path) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer giving mmm's ids for ``tokenizer`` (written to ``output``)."""
    from transformers import EsmTokenizer, PreTrainedTokenizerFast

    if isinstance(tokenizer, ProteinTokenizer):
        vocab = output / "vocab.txt"
        vocab.write_text("\n".join(TOKENS) + "\n")  # ids 0-32 are ESM-2's, J is 33
        hf = EsmTokenizer(vocab_file=str(vocab), model_max_length=tokenizer.max_length)
    elif isinstance(tokenizer, TextTokenizer):
        hf = copy.deepcopy(tokenizer.hf)
        hf.model_max_length = tokenizer.max_length
    elif isinstance(tokenizer, SmilesTokenizer):
        rust = copy.deepcopy(tokenizer.rust)
        rust.no_padding()  # mmm pads to a multiple of 8; Hugging Face pads per call
        rust.no_truncation()
        hf = PreTrainedTokenizerFast(
            tokenizer_object=rust,
            bos_token=smiles.BOS,
            eos_token=smiles.EOS,
            pad_token=smiles.PAD,
            unk_token=smiles.UNK,
            mask_token=smiles.MASK,
            model_max_length=tokenizer.max_length,
        )
    else:
        raise TypeError(f"export: no Hugging Face tokenizer for {type(tokenizer).__name__}")
    hf.save_pretrained(str(output))
    return hf


def export_masked_lm(module: MaskedModelingModule, output: str | Path) -> Path:
    """Write ``module`` (text, protein or SMILES) as an ``EsmForMaskedLM`` plus tokenizer."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    to_esm(module).save_pretrained(str(output))
    hf_tokenizer(_tokenizer(module), output)
    return output


# ------------------------------------------------------------------------------ image / timm
#: timm model whose defaults the exported ViT overrides (every size is set explicitly).
TIMM_MODEL = "vit_base_patch16_224"


def timm_kwargs(module: MaskedModelingModule) -> dict[str, object]:
    """``timm.create_model`` arguments of a ViT computing what the image MAE's encoder computes
    on an unmasked image: no class token, average pooling, no classifier."""
    tokenizer, encoder = _tokenizer(module), _trunk(module)
    if not isinstance(tokenizer, ImageTokenizer):
        raise TypeError(f"export: timm export serves images, not {type(tokenizer).__name__}")
    block = encoder.blocks[0]
    return {
        "img_size": list(tokenizer.size),
        "patch_size": tokenizer.patch_size,
        "in_chans": tokenizer.channels,
        "embed_dim": encoder.dim,
        "depth": len(encoder.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / encoder.dim,
        "qkv_bias": True,
        "class_token": False,
        "global_pool": "avg",
        "fc_norm": False,  # the final norm before pooling, as mmm's pooled embeddings
        "num_classes": 0,
    }


def timm_state_dict(module: MaskedModelingModule) -> dict[str, Tensor]:
    """The MAE encoder under timm ``VisionTransformer`` names: the patch projection as a
    convolution, the fixed sine-cosine positions as ``pos_embed``."""
    tokenizer, embedder = _tokenizer(module), _modality(module).embedder
    patch, channels = tokenizer.patch_size, tokenizer.channels
    # mmm flattens a patch as (p, p, C) (MAE's patchify); a convolution's kernel is (C, p, p).
    weight = embedder.proj.weight.reshape(-1, patch, patch, channels)  # (D, p, p, C)
    state = {
        "patch_embed.proj.weight": weight.permute(0, 3, 1, 2),  # (D, C, p, p)
        "patch_embed.proj.bias": embedder.proj.bias,
        "pos_embed": embedder.positions[None],  # (1, N, D)
    }
    encoder = _trunk(module)
    state.update({f"blocks.{k}": v for k, v in encoder.blocks.state_dict().items()})
    state.update({f"norm.{k}": v for k, v in encoder.norm.state_dict().items()})
    return {name: value.detach().float().contiguous().clone() for name, value in state.items()}


def export_timm(module: MaskedModelingModule, output: str | Path) -> Path:
    """Write the image MAE's encoder as ``model.safetensors`` plus ``timm_config.json``
    (``{"model_name", "kwargs", "layer_norm_eps"}``); load with ``load_timm(output)``, i.e.
    ``timm.create_model(model_name, pretrained=False, checkpoint_path=..., **kwargs,
    norm_layer=partial(nn.LayerNorm, eps=layer_norm_eps))`` (timm's own eps is 1e-6)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    kwargs = timm_kwargs(module)
    save_file(timm_state_dict(module), str(output / "model.safetensors"))
    eps = _layer_norm_eps(module.encoder)  # the MAE decoder is not exported
    config = {"model_name": TIMM_MODEL, "kwargs": kwargs, "layer_norm_eps": eps}
    (output / "timm_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return output


def load_timm(directory: str | Path) -> nn.Module:
    """The timm ``VisionTransformer`` of an ``export_timm`` directory, in eval mode."""
    import timm

    directory = Path(directory)
    config = json.loads((directory / "timm_config.json").read_text())
    model = timm.create_model(
        config["model_name"],
        pretrained=False,
        checkpoint_path=str(directory / "model.safetensors"),
        norm_layer=partial(nn.LayerNorm, eps=config["layer_norm_eps"]),
        **config["kwargs"],
    )
    return model.eval()


def export_command(*, checkpoint: str, output: str) -> str:
    """Export a checkpoint written by ``mmm fit`` to a directory stock libraries load.

    Text, protein and SMILES models become ``transformers.EsmForMaskedLM`` plus tokenizer
    (``AutoModelForMaskedLM`` / ``AutoTokenizer`` / ``pipeline("fill-mask")``, no
    ``trust_remote_code``); image MAE encoders become a timm ``VisionTransformer``.

    Args:
        checkpoint: a checkpoint written by ``mmm fit``.
        output: the directory to write.
    """
    from mmm.inference import load_module

    module = load_module(checkpoint)
    if isinstance(_modality(module), TokenModality):
        export_masked_lm(module, output)
        kind = "transformers EsmForMaskedLM"
    else:
        export_timm(module, output)
        kind = "timm VisionTransformer"
    print(f"exported {checkpoint} as {kind} to {output}")
    return output
