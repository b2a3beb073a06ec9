"""Discrete modalities (text, protein, SMILES) <-> a stock ``transformers`` masked LM.

mmm's ``TokenEmbedder`` (token + learned absolute position -> LayerNorm), ``TransformerEncoder``
and ``TokenHead`` (dense -> GELU -> LayerNorm -> tied decoder + bias) are what two stock
classes compute, one for each placement of the trunk's LayerNorms:

- pre-LN (``norm_first=True``, the default) -> ``EsmForMaskedLM`` with
  ``position_embedding_type="absolute"``, ``emb_layer_norm_before=True`` and
  ``token_dropout=False``; its final norm is ``emb_layer_norm_after``. ESM numbers positions
  from ``padding_idx + 1`` (``create_position_ids_from_input_ids``), so mmm's position row
  ``i`` is ESM's row ``padding_idx + 1 + i``; rows below stay zero. ESM zeroes the embeddings
  of padding positions where mmm masks them out of attention, so real positions agree exactly.
- post-LN (``norm_first=False``) -> ``BertForMaskedLM``. BERT adds the row 0 of its
  token-type table to every position; it is exported as zeros and folded into mmm's position
  table by ``init_from``, which is exact.

One table of names (``_views``) is read both ways, by the export and by ``init_from``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

from mmm.export.parts import (
    MappingError,
    layer_norm_eps,
    only_modality,
    only_tokenizer,
    require_part,
    require_same,
    trunk,
)
from mmm.models.modality import DiscreteModality
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import NotSupportedError, Tokenizer

if TYPE_CHECKING:
    # transformers' model classes are imported where used: importing them pulls in optional
    # backends (torchaudio) that must not break ``mmm`` commands which never export.
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from mmm.finetune.module import FineTuningModule

Family = Literal["esm", "bert"]

#: Each family's name of the position table, and of BERT's token-type table.
POSITIONS = {
    "esm": "esm.embeddings.position_embeddings.weight",
    "bert": "bert.embeddings.position_embeddings.weight",
}
BERT_TOKEN_TYPES = "bert.embeddings.token_type_embeddings.weight"

#: Config fields ``init_from`` compares with the module's, per family.
CHECKED_SETTINGS: dict[Family, tuple[str, ...]] = {
    "esm": (
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
    ),
    "bert": (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "pad_token_id",
        "layer_norm_eps",
    ),
}


def family(module: MaskedModelingModule) -> Family:
    """Which stock class computes what ``module``'s trunk computes."""
    return "esm" if trunk(module).norm_first else "bert"


def _discrete_modality(module: MaskedModelingModule) -> DiscreteModality:
    """The module's one modality, which must be discrete (token ids to map)."""
    return require_part(
        module, only_modality(module), DiscreteModality, "masked-LM export maps token ids"
    )


def position_offset(module: MaskedModelingModule) -> int:
    """The stock position of mmm's position 0 (ESM counts from ``padding_idx + 1``)."""
    return _discrete_modality(module).spec.pad_token_id + 1 if family(module) == "esm" else 0


def masked_lm_config(module: MaskedModelingModule) -> PretrainedConfig:
    """The ``EsmConfig`` or ``BertConfig`` whose model computes what ``module`` computes (both
    activations are erf GELU, as ``nn.GELU`` in timm's ``Mlp`` and in ``TokenHead``)."""
    from transformers import BertConfig, EsmConfig

    encoder, spec = trunk(module), _discrete_modality(module).spec
    block = encoder.blocks[0]
    shared = {
        "vocab_size": spec.vocab_size,
        "hidden_size": encoder.dim,
        "num_hidden_layers": len(encoder.blocks),
        "num_attention_heads": block.attn.num_heads,
        "intermediate_size": block.mlp.fc1.out_features,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": spec.max_length + position_offset(module),
        "layer_norm_eps": layer_norm_eps(encoder, _discrete_modality(module)),
        "pad_token_id": spec.pad_token_id,
        "tie_word_embeddings": True,
    }
    if family(module) == "bert":
        return BertConfig(**shared, hidden_act="gelu", architectures=["BertForMaskedLM"])
    return EsmConfig(
        **shared,
        position_embedding_type="absolute",
        emb_layer_norm_before=True,
        token_dropout=False,
        mask_token_id=spec.mask_token_id,
        architectures=["EsmForMaskedLM"],
    )


@dataclass(frozen=True)
class HeadNames:
    """Where a family keeps its embedding LayerNorm and its masked-LM head."""

    embedding_norm: str
    dense: str
    norm: str
    decoder: str
    bias: str


HEAD_NAMES: dict[Family, HeadNames] = {
    "esm": HeadNames(
        "esm.embeddings.layer_norm.",
        "lm_head.dense.",
        "lm_head.layer_norm.",
        "lm_head.decoder.weight",
        "lm_head.bias",
    ),
    "bert": HeadNames(
        "bert.embeddings.LayerNorm.",
        "cls.predictions.transform.dense.",
        "cls.predictions.transform.LayerNorm.",
        "cls.predictions.decoder.weight",
        "cls.predictions.bias",
    ),
}


def _trunk_views(module: MaskedModelingModule) -> dict[str, Tensor]:
    """The stock class's names -> views of mmm's embedder and trunk tensors (the position
    table excluded: its rows are shifted, see ``position_offset``): what every head of the
    family sits on."""
    modality, encoder, kind = _discrete_modality(module), trunk(module), family(module)
    embedder, names = modality.embedder, HEAD_NAMES[kind]
    views = {
        f"{kind}.embeddings.word_embeddings.weight": embedder.tokens.weight,
        names.embedding_norm + "weight": embedder.norm.weight,
        names.embedding_norm + "bias": embedder.norm.bias,
    }
    if kind == "esm":  # pre-LN ends in a norm; post-LN blocks end in theirs
        views["esm.encoder.emb_layer_norm_after.weight"] = encoder.norm.weight
        views["esm.encoder.emb_layer_norm_after.bias"] = encoder.norm.bias
    for index, block in enumerate(encoder.blocks):
        views |= _layer_views(block, f"{kind}.encoder.layer.{index}.", kind)
    return {name: value.detach() for name, value in views.items()}


def _views(module: MaskedModelingModule) -> dict[str, Tensor]:
    """The stock masked LM's names -> views of mmm's tensors: the trunk's and the masked-LM
    head's."""
    modality, kind = _discrete_modality(module), family(module)
    embedder, head, names = modality.embedder, modality.head, HEAD_NAMES[kind]
    if head.decoder.weight is not embedder.tokens.weight:
        raise MappingError("stock masked LMs tie their decoder; this module's head is untied")
    views = {
        names.dense + "weight": head.transform[0].weight,
        names.dense + "bias": head.transform[0].bias,
        names.norm + "weight": head.transform[2].weight,
        names.norm + "bias": head.transform[2].bias,
        names.decoder: head.decoder.weight,
        names.bias: head.decoder.bias,
    }
    if kind == "bert":
        views["cls.predictions.decoder.bias"] = head.decoder.bias  # BERT ties it to the bias
    return _trunk_views(module) | {name: value.detach() for name, value in views.items()}


def _layer_views(block: nn.Module, prefix: str, kind: Family) -> dict[str, Tensor]:
    """One timm ``Block`` (fused qkv -> proj, fc1 -> GELU -> fc2) under the family's layer
    names. Both name the same linear layers alike; the LayerNorms differ in place and name:
    ESM's come before attention / feed-forward, BERT's after each residual sum."""
    query, key, value = block.attn.qkv.weight.chunk(3, dim=0)  # 3 x (D, D)
    query_bias, key_bias, value_bias = block.attn.qkv.bias.chunk(3, dim=0)  # 3 x (D,)
    attention = prefix + "attention."
    if kind == "esm":
        norm1, norm2 = attention + "LayerNorm.", prefix + "LayerNorm."
    else:
        norm1, norm2 = attention + "output.LayerNorm.", prefix + "output.LayerNorm."
    return {
        norm1 + "weight": block.norm1.weight,
        norm1 + "bias": block.norm1.bias,
        norm2 + "weight": block.norm2.weight,
        norm2 + "bias": block.norm2.bias,
        attention + "self.query.weight": query,
        attention + "self.query.bias": query_bias,
        attention + "self.key.weight": key,
        attention + "self.key.bias": key_bias,
        attention + "self.value.weight": value,
        attention + "self.value.bias": value_bias,
        attention + "output.dense.weight": block.attn.proj.weight,
        attention + "output.dense.bias": block.attn.proj.bias,
        prefix + "intermediate.dense.weight": block.mlp.fc1.weight,
        prefix + "intermediate.dense.bias": block.mlp.fc1.bias,
        prefix + "output.dense.weight": block.mlp.fc2.weight,
        prefix + "output.dense.bias": block.mlp.fc2.bias,
    }


def masked_lm_state_dict(module: MaskedModelingModule) -> dict[str, Tensor]:
    """mmm's weights under the stock class's names (fp32 copies, tied weights included)."""
    state = {name: view.float().clone() for name, view in _views(module).items()}
    return state | _position_state(module)


def _position_state(module: MaskedModelingModule) -> dict[str, Tensor]:
    """The stock position table (mmm's rows shifted by ``position_offset``) and, for BERT,
    a zero token-type table (mmm has no segments)."""
    table = _discrete_modality(module).embedder.positions.weight.detach().float()  # (max_length, D)
    offset = position_offset(module)
    positions = table.new_zeros(offset + table.shape[0], table.shape[1])
    positions[offset:] = table  # the stock position of token i is offset + i
    state = {POSITIONS[family(module)]: positions}
    if family(module) == "bert":
        state[BERT_TOKEN_TYPES] = table.new_zeros(2, table.shape[1])
    return state


def to_masked_lm(module: MaskedModelingModule) -> PreTrainedModel:
    """An ``EsmForMaskedLM`` or ``BertForMaskedLM`` (eval mode, fp32) computing what
    ``module`` computes."""
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_config(masked_lm_config(module))
    return _loaded(model, masked_lm_state_dict(module), "masked-LM")


def _loaded(model: PreTrainedModel, state: dict[str, Tensor], what: str) -> PreTrainedModel:
    """``model`` with ``state`` loaded, in eval mode, after checking that every tensor is
    set: ESM's contact-prediction head reads attention maps and plays no part in the logits;
    mmm has none, so it keeps its initialization. Everything else must be mmm's."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("esm.contact_head.")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"{what} mapping incomplete: missing {missing}, unexpected {result.unexpected_keys}"
        )
    return model.eval()


@torch.no_grad()
def init_from_masked_lm(module: MaskedModelingModule, directory: str | Path) -> None:
    """Load a local ``EsmForMaskedLM`` or ``BertForMaskedLM`` directory (``save_pretrained``)
    into ``module``'s embedder, trunk and head, after checking that its layout maps exactly
    (ESM-2's released weights use rotary positions, which mmm's trunk lacks): anything else is
    refused naming the setting that differs."""
    from transformers import AutoModelForMaskedLM

    source = AutoModelForMaskedLM.from_pretrained(str(directory))
    kind = source.config.model_type
    if kind not in CHECKED_SETTINGS:
        raise MappingError(f"it is a {kind!r} model; mmm maps esm and bert")
    if kind != family(module):
        norm_first = kind == "esm"
        raise MappingError(
            f"it is {kind} ({'pre' if norm_first else 'post'}-LN); set "
            f"--model.encoder.norm_first={str(norm_first).lower()}"
        )
    wanted = masked_lm_config(module)
    require_same(
        directory,
        {name: getattr(source.config, name, None) for name in CHECKED_SETTINGS[kind]},
        {name: getattr(wanted, name) for name in CHECKED_SETTINGS[kind]},
    )
    if source.config.max_position_embeddings < wanted.max_position_embeddings:
        raise MappingError(
            f"it has {source.config.max_position_embeddings} positions, "
            f"max_length={_discrete_modality(module).spec.max_length} needs "
            f"{wanted.max_position_embeddings}"
        )
    state = source.state_dict()
    for name, view in _views(module).items():
        view.copy_(state[name])
    table = _discrete_modality(module).embedder.positions.weight  # (max_length, D)
    offset = position_offset(module)
    table.copy_(state[POSITIONS[kind]][offset : offset + table.shape[0]])
    if kind == "bert":
        table += state[BERT_TOKEN_TYPES][0]  # BERT adds segment 0 to every position


def hf_tokenizer(tokenizer: Tokenizer, output: Path) -> PreTrainedTokenizerBase:
    """A Hugging Face tokenizer giving mmm's ids for ``tokenizer`` (the modality builds it:
    ``Tokenizer.hf_tokenizer``), saved to ``output``.

    Raises:
        MappingError: for a modality without a Hugging Face tokenizer.
    """
    try:
        hf = tokenizer.hf_tokenizer(output)
    except NotSupportedError as error:
        raise MappingError(str(error)) from error
    hf.save_pretrained(str(output))
    return hf


def export_masked_lm(module: MaskedModelingModule, output: str | Path) -> Path:
    """Write ``module`` (text, protein or SMILES) as an ``EsmForMaskedLM`` (pre-LN trunk) or
    ``BertForMaskedLM`` (post-LN trunk) plus its tokenizer."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    to_masked_lm(module).save_pretrained(str(output))
    hf_tokenizer(only_tokenizer(module), output)
    return output


# ------------------------------------------------------------------ fine-tuned classifiers
#: Where each family's sequence classifier keeps the head's dense layer and output layer
#: (BERT's dense layer is its pooler's), and the token classifiers' one linear layer.
SEQUENCE_HEAD_NAMES: dict[Family, tuple[str, str]] = {
    "esm": ("classifier.dense.", "classifier.out_proj."),
    "bert": ("bert.pooler.dense.", "classifier."),
}
TOKEN_HEAD_NAME = "classifier."
#: The stock ``problem_type`` of each fine-tuning task (what its loss is).
PROBLEM_TYPES = {
    "classification": "single_label_classification",
    "multilabel": "multi_label_classification",
    "regression": "regression",
    "token_classification": None,
}


def _classifier_kind(finetuned: FineTuningModule) -> Literal["Sequence", "Token"]:
    """``Token`` for token-level tasks, ``Sequence`` for the others, after checking that the
    head is the stock sequence classifiers' (the first position, dense -> tanh -> linear).

    Raises:
        MappingError: naming the pooling or head to choose instead.
    """
    if finetuned.task == "token_classification":
        return "Token"
    if finetuned.pooler.mode != "cls":
        raise MappingError(
            f"stock *ForSequenceClassification models read the first position; this "
            f"model pools with {finetuned.pooler.mode!r}. Fine-tune with --model.pooling cls "
            "to export it"
        )
    if finetuned.head_kind != "dense":
        raise MappingError(
            "stock *ForSequenceClassification heads are dense -> tanh -> linear; this "
            f"model's head is {finetuned.head_kind!r}. Fine-tune with --model.head dense"
        )
    return "Sequence"


def classifier_config(finetuned: FineTuningModule) -> PretrainedConfig:
    """The masked LM's config as the family's ``*ForSequenceClassification`` or
    ``*ForTokenClassification`` config, with the labels' names and problem type."""
    config = copy.deepcopy(masked_lm_config(finetuned.backbone))
    kind = "Esm" if family(finetuned.backbone) == "esm" else "Bert"
    config.architectures = [f"{kind}For{_classifier_kind(finetuned)}Classification"]
    config.num_labels = finetuned.hparams.num_labels
    classes = finetuned.hparams.get("classes")
    if classes:
        config.id2label = dict(enumerate(classes))
        config.label2id = {name: index for index, name in enumerate(classes)}
    config.problem_type = PROBLEM_TYPES[finetuned.task]
    return config


def classifier_state_dict(finetuned: FineTuningModule) -> dict[str, Tensor]:
    """The fine-tuned trunk and head under the stock classifier's names (fp32 copies)."""
    backbone, head = finetuned.backbone, finetuned.head
    state = {name: view.float().clone() for name, view in _trunk_views(backbone).items()}
    out = TOKEN_HEAD_NAME
    if _classifier_kind(finetuned) == "Sequence":
        dense, out = SEQUENCE_HEAD_NAMES[family(backbone)]
        state[dense + "weight"] = head.dense.weight.detach().float().clone()
        state[dense + "bias"] = head.dense.bias.detach().float().clone()
    state[out + "weight"], state[out + "bias"] = finetuned.output_layer()
    return state | _position_state(backbone)


def to_classifier(finetuned: FineTuningModule) -> PreTrainedModel:
    """A stock ``{Esm,Bert}For{Sequence,Token}Classification`` (eval mode, fp32) computing
    the fine-tuned module's logits (LoRA adapters merged into a copy first)."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from mmm.finetune.lora import merge_lora

    if finetuned.mode == "lora":
        finetuned = merge_lora(copy.deepcopy(finetuned))
    config = classifier_config(finetuned)
    auto = (
        AutoModelForTokenClassification
        if finetuned.task == "token_classification"
        else AutoModelForSequenceClassification
    )
    return _loaded(auto.from_config(config), classifier_state_dict(finetuned), "classifier")


def export_classifier(finetuned: FineTuningModule, output: str | Path) -> Path:
    """Write a fine-tuned text, protein or SMILES model as the stock classifier (see
    ``to_classifier``) plus its tokenizer."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    to_classifier(finetuned).save_pretrained(str(output))
    hf_tokenizer(only_tokenizer(finetuned.backbone), output)
    return output
