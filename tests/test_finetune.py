"""Fine-tuning: each task, each mode, layer decay, the from-scratch control, bad labels, the
CLI. Labelled shards are written here from scikit-learn's digits and a few real peptides."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from mmm.cli import run
from mmm.data.labels import LABEL_MEMBER, LabelSpec
from mmm.data.shards import write_shards
from mmm.experiment import QUIET_TRAINER
from mmm.finetune.batching import LabelledBatcher
from mmm.finetune.layer_decay import parameter_groups
from mmm.finetune.module import FineTuningModule
from mmm.models.encoder import TransformerEncoder
from mmm.module import MaskedModelingModule
from mmm.tokenizers.base import SampleError
from mmm.tokenizers.image import ImageTokenizer
from mmm.tokenizers.multimodal import MultimodalBatcher
from mmm.tokenizers.protein import ProteinTokenizer
from tests.helpers import fit_protein_checkpoint, folder_data, single_thread
from tests.test_embeddings import PROTEINS

CONFIGS = Path(__file__).parents[1] / "configs" / "finetune"
#: Residues counted as hydrophobic: the token-level label of the peptide tests.
HYDROPHOBIC = set("AILMFVWC")


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((image * 16).clip(0, 255).astype(np.uint8)).save(buffer, format="png")
    return buffer.getvalue()


def _digit_label(task: str, digit: int) -> object:
    return {
        "classification": digit,
        "multilabel": [i for i, yes in enumerate((digit % 2 == 0, digit > 4)) if yes],
        "regression": float(digit),
    }[task]


TASK_CLASSES = {
    "classification": tuple(str(d) for d in range(10)),
    "multilabel": ("even", "above four"),
    "regression": (),
}


def write_digits(root: Path, task: str) -> Path:
    """Labelled digit shards of one task: 192 train, 64 val, and ``labels.json``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    samples = [
        {
            "__key__": f"digit{i:04d}",
            "png": _png(digits.images[i]),
            LABEL_MEMBER: json.dumps(_digit_label(task, int(digits.target[i]))).encode(),
        }
        for i in range(256)
    ]
    write_shards(samples[:192], str(root / "train-%06d.tar"), max_count=64)
    write_shards(samples[192:], str(root / "val-%06d.tar"), max_count=64)
    LabelSpec(task, TASK_CLASSES[task], "png").save(root)
    return root


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """Digit shards labelled by class."""
    return write_digits(tmp_path_factory.mktemp("digits"), "classification")


def _image_backbone(seed: int = 0) -> MaskedModelingModule:
    torch.manual_seed(seed)
    tokenizer = ImageTokenizer(image_size=8, patch_size=4, channels=1)
    encoder = TransformerEncoder(dim=16, depth=2, num_heads=2, mlp_ratio=2.0)
    return MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)


def _protein_backbone(seed: int = 0) -> MaskedModelingModule:
    torch.manual_seed(seed)
    encoder = TransformerEncoder(dim=16, depth=2, num_heads=2, mlp_ratio=2.0)
    return MaskedModelingModule(tokenizer=ProteinTokenizer(max_length=160), encoder=encoder)


def _fit(module: FineTuningModule, root: Path, steps: int, **trainer: object) -> L.Trainer:
    data = folder_data(root, module.batcher, batch_size=32, on_error="raise")
    options = dict(
        max_steps=steps,
        val_check_interval=steps,
        check_val_every_n_epoch=None,
        **QUIET_TRAINER,
    )
    fitted = L.Trainer(**{**options, **trainer})
    fitted.fit(module, data)
    return fitted


METRICS = {
    "classification": ("val/accuracy", "val/f1_macro", "val/auroc"),
    "multilabel": ("val/accuracy", "val/f1_macro", "val/auroc"),
    "regression": ("val/r2", "val/rmse", "val/spearman"),
}


@pytest.mark.parametrize("task", ["classification", "multilabel", "regression"])
def test_each_sample_task_fine_tunes_and_reads_its_labels_json(task, tmp_path, one_thread):
    root = write_digits(tmp_path, task)
    spec = LabelSpec.load(root)
    module = FineTuningModule(backbone=_image_backbone(), task=spec.task, lr=3e-3)
    trainer = _fit(module, root, steps=4)
    assert module.hparams.num_labels == spec.num_labels  # sized from labels.json
    assert (module.hparams.classes or []) == list(spec.classes)
    for metric in ("val/loss", *METRICS[spec.task]):
        assert torch.isfinite(trainer.callback_metrics[metric]), metric


def _one_batch(module: FineTuningModule, root: Path) -> dict:
    import webdataset as wds

    samples = list(wds.WebDataset(str(root / "train-000000.tar"), shardshuffle=False))[:32]
    batcher = module.batcher.for_evaluation()
    return batcher.collate([batcher.decode_sample(sample) for sample in samples])


@pytest.mark.parametrize("mode", ["full", "lora", "probe"])
def test_each_mode_learns_one_batch(mode, digits_dir, one_thread):
    """A real fit: the training loss on one batch falls well below where it started."""
    torch.manual_seed(0)
    module = FineTuningModule(backbone=_image_backbone(), num_labels=10, mode=mode, lr=1e-2)
    batch = _one_batch(module, digits_dir)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-2)
    first = module.loss(module(batch), batch["labels"]).item()
    for _ in range(60):
        loss = module.loss(module(batch), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.7 * first


def _token_shards(root: Path, proteins: list[str]) -> Path:
    """Peptides labelled per residue: 1 hydrophobic, 0 not, -100 for the first residue."""
    samples = []
    for i, protein in enumerate(proteins):
        labels = [int(residue in HYDROPHOBIC) for residue in protein]
        labels[0] = -100
        samples.append(
            {"__key__": f"p{i}", "seq": protein.encode(), LABEL_MEMBER: json.dumps(labels).encode()}
        )
    write_shards(samples, str(root / "train-%06d.tar"), max_count=4)
    write_shards(samples, str(root / "val-%06d.tar"), max_count=4)
    LabelSpec("token_classification", ("polar", "hydrophobic"), "seq").save(root)
    return root


def test_token_classification_labels_each_residue(tmp_path, one_thread):
    root = _token_shards(tmp_path, PROTEINS)
    module = FineTuningModule(
        backbone=_protein_backbone(), task="token_classification", modality="protein", lr=3e-3
    )
    trainer = _fit(module, root, steps=3)
    assert torch.isfinite(trainer.callback_metrics["val/token_accuracy"])
    batch = _one_batch(module, root)
    labels, ids = batch["labels"], batch["protein"]["input_ids"]  # (B, L)
    residues = batch["protein"]["maskable"]
    assert (labels[~residues] == -100).all()  # <cls>, <eos> and padding carry no label
    assert (labels[:, 1] == -100).all()  # the first residue is unlabelled in the data
    assert module(batch).shape == (*ids.shape, 2)


def test_lora_keeps_base_weights_and_saves_only_adapters(digits_dir, tmp_path, one_thread):
    backbone = _image_backbone()
    base = {k: v.clone() for k, v in backbone.encoder.state_dict().items()}
    module = FineTuningModule(backbone=backbone, mode="lora", lora_rank=2, lr=1e-2)
    trainer = _fit(
        module, digits_dir, steps=3, enable_checkpointing=True, default_root_dir=tmp_path
    )
    merged_names = {
        k.replace(".base_layer", ""): v for k, v in module.backbone.encoder.state_dict().items()
    }
    for name, value in base.items():
        torch.testing.assert_close(merged_names[name], value)  # frozen
    adapters = module.adapter_state_dict()
    assert adapters and all(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)
    [path] = tmp_path.rglob("*.ckpt")
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert set(saved) == {n for n, p in module.named_parameters() if p.requires_grad}
    assert all("lora_" in k or k.startswith(("head.", "pooler.")) for k in saved)
    assert trainer.global_step == 3


def test_layer_decay_gives_each_block_its_rate():
    module = FineTuningModule(backbone=_image_backbone(), num_labels=3, layer_decay=0.5, lr=1.0)
    groups = parameter_groups(
        module, lr=1.0, weight_decay=0.1, layer_decay=0.5, no_weight_decay=set()
    )
    rate = {name: group["lr"] for group in groups for name in group["names"]}
    depth = 2  # layers: 0 embedder, 1-2 blocks, 3 final norm and head
    assert rate["backbone.modalities.image.embedder.proj.weight"] == 0.5**3
    assert rate["backbone.encoder.blocks.0.attn.qkv.weight"] == 0.5**depth
    assert rate["backbone.encoder.blocks.1.mlp.fc1.weight"] == 0.5
    assert rate["head.out.weight"] == rate["backbone.encoder.norm.weight"] == 1.0
    optimizer = module.configure_optimizers()["optimizer"]
    decays = {p: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(module.named_parameters())
    assert decays[named["backbone.encoder.blocks.0.attn.qkv.bias"]] == 0.0  # vectors: none
    assert decays[named["backbone.encoder.blocks.0.attn.qkv.weight"]] == 0.05


def test_freeze_blocks_freezes_the_embedder_and_the_first_blocks():
    module = FineTuningModule(backbone=_image_backbone(), num_labels=3, freeze_blocks=1)
    trains = {name: p.requires_grad for name, p in module.named_parameters()}
    assert not trains["backbone.modalities.image.embedder.proj.weight"]
    assert not trains["backbone.encoder.blocks.0.mlp.fc2.weight"]
    assert trains["backbone.encoder.blocks.1.mlp.fc2.weight"] and trains["head.out.weight"]


def test_from_scratch_control_has_the_checkpoints_architecture_not_its_weights(
    tmp_path, monkeypatch, one_thread
):
    monkeypatch.chdir(tmp_path)
    checkpoint = fit_protein_checkpoint(tmp_path, PROTEINS)
    pretrained = FineTuningModule(checkpoint=str(checkpoint), num_labels=2)
    scratch = FineTuningModule(checkpoint=str(checkpoint), num_labels=2, from_scratch=True)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    ours, theirs = pretrained.state_dict(), scratch.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    name = "backbone.encoder.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(ours[name], saved[name.removeprefix("backbone.")])
    assert not torch.equal(ours[name], theirs[name])
    assert not any(".head." in key for key in ours)  # the masked-LM head is dropped
    # a fine-tuned module rebuilds from its own hyperparameters, without the pretraining file
    restored = FineTuningModule(**{**pretrained.hparams, "checkpoint": "gone.ckpt"})
    assert {k: v.shape for k, v in restored.state_dict().items()} == {
        k: v.shape for k, v in ours.items()
    }


def test_a_lora_checkpoint_restores_from_its_adapters_and_the_pretraining_file(tmp_path):
    """What Lightning saves of a LoRA module (adapters and head only) plus the pretraining
    checkpoint give back the same model; without the pretraining file, a named error."""
    checkpoint = fit_protein_checkpoint(tmp_path, PROTEINS)
    module = FineTuningModule(checkpoint=str(checkpoint), num_labels=2, mode="lora").eval()
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                param.normal_()  # trained adapters: B is no longer zero
    saved = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(saved)
    assert all("lora_" in k or k.startswith("head.") for k in saved["state_dict"])
    restored = FineTuningModule(**saved["hyper_parameters"]).eval()
    restored.on_load_checkpoint(saved)
    restored.load_state_dict(saved["state_dict"])  # strict
    batch = {"protein": module.backbone.tokenizers["protein"].collate(PROTEINS)}
    with torch.no_grad():
        torch.testing.assert_close(restored(batch), module(batch))
    with pytest.raises(FileNotFoundError, match="LoRA checkpoint holds adapters only"):
        FineTuningModule(**{**saved["hyper_parameters"], "checkpoint": str(tmp_path / "gone")})


def _raw(member: dict, key: str = "sample7") -> dict:
    return {"__key__": key, "__url__": "shard-000.tar", "png": _png(np.eye(8) * 16), **member}


@pytest.mark.parametrize(
    ("task", "label", "message"),
    [
        ("classification", None, "no 'label.json' member"),
        ("classification", b"{not json", "not valid JSON"),
        ("classification", b"12", "class index 12 is not in the label set of 10 classes"),
        ("classification", b"2.5", "a classification label is a class index (int)"),
        ("multilabel", b"[1, 10]", "class index 10 is not in the label set of 10 classes"),
        ("regression", b"NaN", "not finite"),
        ("regression", b"[1.0, 2.0]", "expected 1 regression target(s), got [1.0, 2.0]"),
    ],
)
def test_bad_labels_are_named_errors_that_name_the_sample(task, label, message):
    num_labels = 1 if task == "regression" else 10
    batcher = LabelledBatcher(_image_backbone().batcher, task, num_labels)
    sample = _raw({} if label is None else {LABEL_MEMBER: label})
    with pytest.raises(SampleError, match=re.escape(message)) as error:
        batcher.decode_sample(sample)
    assert "sample7" in str(error.value) and "shard-000.tar" in str(error.value)


def test_token_labels_of_another_length_name_the_sample():
    batcher = LabelledBatcher(
        MultimodalBatcher({"protein": ProteinTokenizer()}), "token_classification", 2, "protein"
    )
    sample = {"__key__": "pep3", "seq": b"MKTAYIAK", LABEL_MEMBER: b"[0, 1, 0]"}
    with pytest.raises(SampleError, match="'pep3'.*3 token-level labels.*8 units"):
        batcher.decode_sample(sample)


def test_token_labels_need_a_modality_with_units():
    batcher = LabelledBatcher(_image_backbone().batcher, "token_classification", 2, "image")
    with pytest.raises(ValueError, match="token-level labels are not supported for the image"):
        batcher.decode_sample(_raw({LABEL_MEMBER: b"[0, 1]"}))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"mode": "adapter"}, "mode must be one of"),
        ({"pooling": "max"}, "pooling must be mean, attention or cls"),
        ({"from_scratch": True}, "from_scratch keeps a checkpoint's architecture"),
        ({"mode": "probe", "head": "dense"}, "head=linear"),
        ({"layer_decay": 0.0}, "layer_decay must lie in"),
        ({"class_weights": [1.0, 2.0]}, "class_weights has 2 entries for 3 classes"),
    ],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        FineTuningModule(backbone=_image_backbone(), num_labels=3, **arguments)


def test_labels_json_of_another_task_is_refused(digits_dir):
    spec = LabelSpec.load(digits_dir)
    module = FineTuningModule(backbone=_image_backbone(), task="regression", num_labels=1)
    with pytest.raises(ValueError, match="labels.json says 'classification'"):
        module.use_label_spec(spec)


@pytest.fixture(scope="module")
def finetuned(digits_dir, tmp_path_factory):
    """``mmm finetune fit`` of the digits config, shrunk: the CLI and the best checkpoint."""
    root = tmp_path_factory.mktemp("finetuned")
    options = [
        f"--config={CONFIGS / 'digits.yaml'}",
        "--data.embedded=null",
        f"--data.train_shards={digits_dir}/train-*.tar",
        f"--data.val_shards={digits_dir}/val-*.tar",
        "--data.num_workers=0",
        "--data.batch_size=32",
        "--model.backbone.encoder.init_args.dim=16",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
    ]
    with single_thread():
        cli = run(
            ["finetune", "fit", *options, "--trainer.max_steps=4", "--trainer.val_check_interval=2"]
        )
    [best] = root.rglob("best-*.ckpt")
    return cli, best, options


def test_finetune_fit_through_the_cli_keeps_the_best_checkpoint(finetuned, digits_dir):
    cli, best, options = finetuned
    assert cli.datamodule.batcher is cli.model.batcher
    assert cli.trainer.global_step == 4
    assert "val/accuracy" in cli.trainer.callback_metrics
    assert cli.trainer.checkpoint_callback.best_model_path == str(best)
    restored = FineTuningModule.load_from_checkpoint(best, weights_only=True)
    assert restored.hparams.classes == [str(d) for d in range(10)]
    test_shards = f"--data.test_shards={digits_dir}/val-*.tar"
    tested = run(["finetune", "test", *options, test_shards, f"--ckpt_path={best}"])
    for metric in ("test/loss", "test/accuracy", "test/f1_macro", "test/auroc"):
        assert metric in tested.trainer.callback_metrics


def test_predict_writes_a_csv_of_classes_and_probabilities(finetuned, tmp_path, one_thread):
    """``mmm predict`` on PNG files: one row per file, the arg-max class name, probabilities
    that sum to one and equal the module's own on the same batch."""
    import csv

    from sklearn.datasets import load_digits

    checkpoint = finetuned[1]
    module = FineTuningModule.load_from_checkpoint(checkpoint, weights_only=True)
    images = load_digits().images[:3]
    files = []
    for index, image in enumerate(images):
        files.append(tmp_path / f"digit{index}.png")
        files[-1].write_bytes(_png(image))
    output = tmp_path / "predictions.csv"
    run(
        [
            "predict",
            f"--checkpoint={checkpoint}",
            f"--inputs={tmp_path}/digit*.png",
            f"--output={output}",
        ]
    )
    rows = list(csv.DictReader(output.open()))
    assert [row["input"] for row in rows] == [str(f) for f in files]
    probabilities = torch.tensor([[float(row[f"p_{d}"]) for d in range(10)] for row in rows])
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3), atol=1e-4, rtol=0)
    assert [row["prediction"] for row in rows] == [str(int(p.argmax())) for p in probabilities]
    module.eval()
    batcher = module.batcher.for_evaluation()
    samples = [{"__key__": f.name, "png": f.read_bytes(), LABEL_MEMBER: b"0"} for f in files]
    batch = batcher.collate([batcher.decode_sample(s) for s in samples])
    with torch.no_grad():
        expected = module(batch).softmax(dim=-1)
    torch.testing.assert_close(probabilities, expected, atol=1e-5, rtol=0)


def test_predict_names_inputs_it_cannot_read(finetuned, tmp_path):
    checkpoint = finetuned[1]
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    output = str(tmp_path / "p.csv")
    with pytest.raises(ValueError, match="notes.txt: the image modality reads files ending in"):
        run(["predict", f"--checkpoint={checkpoint}", f"--inputs={notes}", f"--output={output}"])
    with pytest.raises(ValueError, match="broken.png.*not a decodable image"):
        run(["predict", f"--checkpoint={checkpoint}", f"--inputs={broken}", f"--output={output}"])


# ----------------------------------------------------------------------------- export
def _protein_classifier(norm_first: bool, task: str, mode: str = "full") -> FineTuningModule:
    """A fine-tuned-shaped protein classifier with every weight random (see ``_randomized``)."""
    from tests.test_export import _randomized

    torch.manual_seed(0)
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0, norm_first=norm_first)
    backbone = MaskedModelingModule(tokenizer=ProteinTokenizer(max_length=40), encoder=encoder)
    options = {"modality": "protein"} if task == "token_classification" else {"pooling": "cls"}
    if task == "regression":  # targets in label units: the scaling is folded into the export
        options |= {"target_mean": 2.0, "target_std": 3.0}
    module = FineTuningModule(backbone=backbone, task=task, num_labels=3, mode=mode, **options)
    return _randomized(module)


@pytest.mark.parametrize("task", ["classification", "regression", "token_classification"])
@pytest.mark.parametrize(("norm_first", "family"), [(True, "Esm"), (False, "Bert")])
def test_exported_classifier_logits_equal_mmm_logits(task, norm_first, family):
    from mmm.export import to_classifier
    from tests.test_export import PROTEINS as SHORT_PROTEINS

    module = _protein_classifier(norm_first, task)
    model = to_classifier(module)
    kind = "Token" if task == "token_classification" else "Sequence"
    assert type(model).__name__ == f"{family}For{kind}Classification"
    batch = {"protein": module.backbone.tokenizers["protein"].collate(SHORT_PROTEINS)}
    real = batch["protein"]["attention_mask"]  # (B, L)
    assert not real.all()  # padding is present, and handled
    with torch.no_grad():
        expected = module(batch)
        logits = model(input_ids=batch["protein"]["input_ids"], attention_mask=real.long()).logits
    if task == "token_classification":
        torch.testing.assert_close(logits[real], expected[real])
    else:
        torch.testing.assert_close(logits, expected)


def test_a_lora_classifier_exports_with_its_adapters_merged(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from mmm.export import export_classifier
    from tests.test_export import PROTEINS as SHORT_PROTEINS

    module = _protein_classifier(True, "classification", mode="lora")
    module.hparams.classes = ["a", "b", "c"]
    export_classifier(module, tmp_path / "hf")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"}
    batch = {"protein": module.backbone.tokenizers["protein"].collate(SHORT_PROTEINS)}
    sub = batch["protein"]
    with torch.no_grad():
        logits = model(input_ids=sub["input_ids"], attention_mask=sub["attention_mask"].long())
        torch.testing.assert_close(logits.logits, module(batch))


def test_export_refuses_a_pooling_stock_classifiers_lack():
    from mmm.export import to_classifier

    module = FineTuningModule(backbone=_protein_backbone(), num_labels=2, pooling="mean")
    with pytest.raises(ValueError, match="--model.pooling cls"):
        to_classifier(module)
    image = FineTuningModule(backbone=_image_backbone(), num_labels=2, head="dense")
    from mmm.export import export_timm_classifier

    with pytest.raises(ValueError, match="--model.head linear"):
        export_timm_classifier(image, "unused")


def test_exported_timm_classifier_logits_equal_mmm_logits(tmp_path):
    from mmm.export import export_timm_classifier, load_timm
    from tests.test_export import _image_inputs, _randomized

    tokenizer, batch, pixels = _image_inputs()
    encoder = TransformerEncoder(dim=32, depth=2, num_heads=4, mlp_ratio=2.0, layer_norm_eps=1e-6)
    backbone = MaskedModelingModule(tokenizer=tokenizer, encoder=encoder)
    module = _randomized(FineTuningModule(backbone=backbone, num_labels=4, head="linear"))
    export_timm_classifier(module, tmp_path / "vit")
    model = load_timm(tmp_path / "vit")
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), module({"image": batch}))


def test_mmm_export_writes_a_finetuned_image_model_as_a_timm_classifier(finetuned, tmp_path):
    from sklearn.datasets import load_digits

    from mmm.export import load_timm

    checkpoint = finetuned[1]
    run(["export", f"--checkpoint={checkpoint}", f"--output={tmp_path / 'vit'}"])
    model = load_timm(tmp_path / "vit")
    module = FineTuningModule.load_from_checkpoint(checkpoint, weights_only=True).eval()
    images = torch.from_numpy(load_digits().images[:4]).float().div(16).unsqueeze(1)  # (4,1,8,8)
    batch = {"image": module.backbone.tokenizers["image"].collate(list(images))}
    with torch.no_grad():
        torch.testing.assert_close(model(images), module(batch))


@pytest.fixture
def paired_batch(tokenizer):
    """An image + text backbone and a batch of 4 digits, two of them with a caption: the
    text sub-batch covers rows 1 and 3 only."""
    from sklearn.datasets import load_digits

    from mmm.module import ModalityConfig

    torch.manual_seed(0)
    image = ImageTokenizer(image_size=8, patch_size=4, channels=1)
    backbone = MaskedModelingModule(
        modalities={
            "image": ModalityConfig(image),
            "text": ModalityConfig(tokenizer, optional=True),
        },
        encoder=TransformerEncoder(dim=16, depth=1, num_heads=2),
    )
    images = load_digits().images[:4]
    samples = [{"__key__": f"s{i}", "png": _png(im)} for i, im in enumerate(images)]
    samples[1]["txt"] = b"the quick brown fox"
    samples[3]["txt"] = b"open the file and return a stream"
    batcher = backbone.batcher.for_evaluation()
    return backbone, batcher.collate([batcher.decode_sample(s) for s in samples])


def test_mean_pooling_of_paired_samples_is_the_backbones_embedding(paired_batch):
    """Samples of several modalities pool over all their real positions, as
    ``MaskedModelingModule.embed`` does, also when only some samples carry a modality."""
    backbone, batch = paired_batch
    assert batch["text"]["rows"].tolist() == [1, 3]
    module = FineTuningModule(backbone=backbone, num_labels=2, mode="probe").eval()
    inputs = module.backbone.modality_batch(batch)
    with torch.no_grad():
        states = module.backbone.encode_modalities(inputs)[0]
        torch.testing.assert_close(module.pool(inputs, states), backbone.embed(batch)[1])
        assert module(batch).shape == (4, 2)


def test_attention_pooling_starts_as_mean_pooling_and_learns_its_query(paired_batch):
    backbone, batch = paired_batch
    module = FineTuningModule(backbone=backbone, num_labels=2, pooling="attention").eval()
    inputs = module.backbone.modality_batch(batch)
    states = module.backbone.encode_modalities(inputs)[0]
    with torch.no_grad():
        torch.testing.assert_close(module.pool(inputs, states), backbone.embed(batch)[1])
    module.loss(module(batch), torch.tensor([0, 1, 1, 0])).backward()
    assert module.pooler.query.grad.abs().sum() > 0
