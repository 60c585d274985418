"""sentence-transformers trains on the MarginMSE and pointwise exports: each export folder is
loaded with `datasets.load_dataset(folder, split="train")`, a tiny local model is built from
its own text, and one optimisation step runs through the library's own trainer and loss
(bi-encoder + `MarginMSELoss` for the margin rows, single and multi-negative;
`CrossEncoder` + its `MSELoss` for the pointwise scores, the ordered DenseON-LateON mixture
included once its leading `position` column is removed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset, load_dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.cross_encoder import (
    CrossEncoder,
    CrossEncoderTrainer,
    CrossEncoderTrainingArguments,
)
from sentence_transformers.cross_encoder.losses import MSELoss
from sentence_transformers.losses import MarginMSELoss

from kd_pipeline.exports.specs import load_export_specs
from kd_pipeline.lake import Lake
from kd_pipeline_tests.sample_exports import MIXTURE_EXPORT, BuiltExports, exports_of
from kd_pipeline_tests.tiny_models import Snapshot, assert_trained, tiny_bert

pytestmark = pytest.mark.usefixtures("offline_consumers")

MARGIN_MSE = [  # with the negatives per row each spec asks for
    (key, partition, spec.knobs.negatives_per_row)
    for spec in load_export_specs()
    for key, partition in exports_of("margin_mse")
    if key == spec.key.to_user_string()
]
POINTWISE = exports_of("pointwise")
BATCH = 4


def texts_of(rows: Dataset) -> list[str]:
    """Every string value of the rows (the tokenizer's vocabulary source)."""
    return [v for name in rows.column_names for v in rows[name] if isinstance(v, str)]


def train_args(cls: type, out: Path):
    return cls(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )


@pytest.mark.parametrize(("key", "partition", "negatives"), MARGIN_MSE)
def test_margin_mse_export_trains_a_bi_encoder(
    sample_exports: BuiltExports, tmp_path: Path, key: str, partition: str | None, negatives: int
) -> None:
    folder = sample_exports.path(key, partition)
    rows = load_dataset(str(folder), split="train")
    negative_columns = (
        ["negative"] if negatives == 1 else [f"negative_{i + 1}" for i in range(negatives)]
    )
    assert rows.column_names == ["query", "positive", *negative_columns, "score"]
    if negatives > 1:
        assert {len(s) for s in rows["score"]} == {negatives}  # one margin per negative
    model = SentenceTransformer(tiny_bert(tmp_path / "model", texts_of(rows)), device="cpu")
    before = Snapshot(model)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=train_args(SentenceTransformerTrainingArguments, tmp_path / "out"),
        train_dataset=rows,
        loss=MarginMSELoss(model),
    )
    result = trainer.train()
    assert result.global_step == 1
    assert_trained(before, model, [result.training_loss])


@pytest.mark.parametrize(("key", "partition"), POINTWISE)
def test_pointwise_export_trains_a_cross_encoder(
    sample_exports: BuiltExports, tmp_path: Path, key: str, partition: str | None
) -> None:
    folder = sample_exports.path(key, partition)
    rows = load_dataset(str(folder), split="train")
    assert rows.column_names == ["query", "document", "score"]
    train_cross_encoder(rows, tmp_path)


def test_ordered_pointwise_export_trains_a_cross_encoder(mixture: Path, tmp_path: Path) -> None:
    """The DenseON-LateON mixture (ordered: `position` leads each row): the position is
    dropped, the rows stay in their order, and a CrossEncoder step runs on them."""
    folder = Lake(mixture).published_path(MIXTURE_EXPORT.split("/"))
    rows = load_dataset(str(folder), split="train")
    assert rows.column_names == ["position", "query", "document", "score"]
    assert rows["position"] == sorted(rows["position"])  # the training order, kept
    rows = rows.remove_columns("position")
    assert rows.column_names == ["query", "document", "score"]
    train_cross_encoder(rows, tmp_path)


def train_cross_encoder(rows: Dataset, tmp_path: Path) -> None:
    """One CrossEncoder step (MSE on `score`) on the rows; asserts it trained."""
    model = CrossEncoder(tiny_bert(tmp_path / "model", texts_of(rows)), num_labels=1, device="cpu")
    before = Snapshot(model)
    trainer = CrossEncoderTrainer(
        model=model,
        args=train_args(CrossEncoderTrainingArguments, tmp_path / "out"),
        train_dataset=rows,
        loss=MSELoss(model),
    )
    result = trainer.train()
    assert result.global_step == 1
    assert_trained(before, model, [result.training_loss])
