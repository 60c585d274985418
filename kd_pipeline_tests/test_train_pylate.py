"""PyLate trains a ColBERT model on every PyLate KD export for a full epoch, loading it the way
PyLate's knowledge-distillation docs do: `load_dataset(folder, "train" | "queries" |
"documents")`, `KDProcessing` to join the texts, `Distillation` loss, `ColBERTCollator`. A full
epoch (not one batch) reaches every row, so a list of another length anywhere fails here as
it fails in PyLate's collator (`torch.tensor(scores)` on the batch)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from datasets import load_dataset
from pylate import losses, models, utils
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

from kd_pipeline_tests.sample_exports import BuiltExports, exports_of
from kd_pipeline_tests.tiny_models import Snapshot, assert_trained, tiny_bert

pytestmark = pytest.mark.usefixtures("offline_consumers")

PYLATE_KD = exports_of("pylate_kd")
BATCH = 8


@pytest.mark.parametrize(("key", "partition"), PYLATE_KD)
def test_pylate_trains_a_full_epoch_on_the_kd_export(
    sample_exports: BuiltExports, tmp_path: Path, key: str, partition: str | None
) -> None:
    folder = str(sample_exports.path(key, partition))
    train = load_dataset(path=folder, name="train")
    queries = load_dataset(path=folder, name="queries")
    documents = load_dataset(path=folder, name="documents")
    rows = len(train["train"])
    assert rows > BATCH  # more than one batch: the epoch crosses batches
    train.set_transform(utils.KDProcessing(queries=queries, documents=documents).transform)

    texts = [*queries["train"]["text"], *documents["train"]["text"]]
    model = models.ColBERT(
        model_name_or_path=tiny_bert(tmp_path / "model", texts),
        document_length=64,  # short sequences keep the epoch fast on a CPU
        device="cpu",
    )
    before = Snapshot(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=train,
        loss=losses.Distillation(model=model),
        data_collator=utils.ColBERTCollator(tokenize_fn=model.tokenize),
    )
    result = trainer.train()
    assert result.global_step == math.ceil(rows / BATCH)  # every row seen once
    step_losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(step_losses) == result.global_step
    assert_trained(before, model, step_losses)
