"""light-splade 0.1.3 trains a SPLADE model on the SPLADE exports and on the SPLADE triplets:
one optimisation step of its `SpladeTrainer` (margin-MSE distillation plus FLOPS
regularisation) on a tiny local masked-LM, set up as its distillation example script does:
`TripletDistilDataset` over the folder's `train/` files and the shared score file, the
`validation/` files as the evaluation set (then evaluated: light-splade's own retrieval
metrics over the validation queries), `TripletDistilCollator` reading the tokenizer from
the model folder. The triplets (already sampled 5-tuples) go to the same collator row by
row, in its tuple order."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from datasets import load_dataset
from light_splade.data import TripletDistilCollator, TripletDistilDataset
from light_splade.models import Splade
from light_splade.schemas.config import (
    RegularizerConfig,
    SpladeRegularizerConfig,
    SpladeTrainingArguments,
)
from light_splade.trainer import SpladeTrainer

from kd_pipeline_tests.sample_exports import BuiltExports, exports_of
from kd_pipeline_tests.tiny_models import Snapshot, assert_trained, tiny_bert

pytestmark = pytest.mark.usefixtures("offline_consumers")

SPLADE = exports_of("splade")
TRIPLETS = exports_of("splade_triplets")
TUPLE_ORDER = ["query_text", "pos_text", "neg_text", "pos_score", "neg_score"]
BATCH = 4


def splade_dataset(root: Path, split: str) -> TripletDistilDataset:
    """light-splade's dataset over one split of a SPLADE folder, the paths its example
    configuration names (`<split>/query_master.ndjson`, ... and the root's score file)."""
    return TripletDistilDataset(
        query_master_data_path=root / split / "query_master.ndjson",
        doc_master_data_path=root / split / "doc_master.ndjson",
        positive_pair_data_path=root / split / "positive_lists.ndjson",
        hard_negative_scores_data_path=root / "hard-negatives-cross-encoder-scores.ndjson.gz",
        is_validation_set=split == "validation",
    )


def splade_trainer(model_dir: str, out: Path, train, eval_dataset=None) -> SpladeTrainer:
    """SpladeTrainer for one step of margin-MSE distillation with FLOPS on both towers."""
    flops = RegularizerConfig(reg_type="FLOPS", lambda_=1e-3, T=10)
    args = SpladeTrainingArguments(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        learning_rate=1e-3,
        training_loss="margin_mse",
        regularizers=SpladeRegularizerConfig(doc=flops, query=flops),
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    model = Splade(d_model_path=model_dir, agg="max", device="cpu")
    return SpladeTrainer(
        model=model,
        args=args,
        data_collator=TripletDistilCollator(tokenizer_path=model_dir, max_length=64),
        train_dataset=train,
        eval_dataset=eval_dataset,
        processing_class=model.d_encoder.tokenizer,
    )


def texts_of(dataset: TripletDistilDataset) -> list[str]:
    """Every query and document text light-splade loaded."""
    return [
        *(dataset.queries[q] for q in dataset.queries.get_id_set()),
        *(dataset.docs[d] for d in dataset.docs.get_id_set()),
    ]


@pytest.mark.parametrize(("key", "partition"), SPLADE)
def test_splade_export_trains_in_light_splade(
    sample_exports: BuiltExports, tmp_path: Path, key: str, partition: str | None
) -> None:
    root = sample_exports.path(key, partition)
    train = splade_dataset(root, "train")
    validation = splade_dataset(root, "validation") if (root / "validation").is_dir() else None
    texts = texts_of(train) + (texts_of(validation) if validation else [])
    trainer = splade_trainer(
        tiny_bert(tmp_path / "model", texts), tmp_path / "out", train, validation
    )
    before = Snapshot(trainer.model)
    result = trainer.train()
    assert result.global_step == 1
    assert_trained(before, trainer.model, [result.training_loss])
    if validation is not None:
        metrics = trainer.evaluate()
        assert math.isfinite(metrics["eval_loss"]), metrics
        assert 0 <= metrics["eval_MRR@10"] <= 1 and 0 <= metrics["eval_recall@10"] <= 1, metrics


@pytest.mark.parametrize(("key", "partition"), TRIPLETS)
def test_splade_triplets_train_in_light_splade(
    sample_exports: BuiltExports, tmp_path: Path, key: str, partition: str
) -> None:
    folder = sample_exports.path(key, partition)
    rows = load_dataset(str(folder), split="train")
    assert rows.column_names == TUPLE_ORDER
    triplets = [tuple(row[c] for c in TUPLE_ORDER) for row in rows]
    texts = [text for row in triplets for text in row[:3]]
    trainer = splade_trainer(tiny_bert(tmp_path / "model", texts), tmp_path / "out", triplets)
    before = Snapshot(trainer.model)
    result = trainer.train()
    assert result.global_step == 1
    assert_trained(before, trainer.model, [result.training_loss])
