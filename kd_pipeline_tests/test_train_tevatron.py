"""Tevatron trains a dense retriever on the Tevatron exports, with the only Tevatron a package
index offers: PyPI's `tevatron` 0.1.0 (2021). Its distillation code (`src/tevatron/retriever`)
is only on GitHub, so this is not distillation: 0.1.0 trains with a contrastive loss (the
positive against the group's negatives and the batch's), and the teacher scores on every
passage are read but unused.

What of 0.1.0 is used, and why: its `TrainPreProcessor` reads exactly this format (`query`,
`positive_passages`, `negative_passages`, each passage `title` + `text`) and is what its
driver applies to its own Hub datasets (its `--train_dir` takes pre-tokenised files only);
then its `TrainDataset`, `QPCollator`, `DenseModel` and `DenseTrainer` as its driver wires
them. The step itself is `DenseTrainer.compute_loss` on the trainer's first batch, then the
trainer's optimizer: `DenseTrainer.train()` cannot run on transformers 4.46 or later (its
`compute_loss(model, inputs)` does not take the `num_items_in_batch` argument the Trainer
loop passes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import load_dataset
from tevatron.arguments import DataArguments, DenseTrainingArguments, ModelArguments
from tevatron.data import QPCollator, TrainDataset
from tevatron.datasets.preprocessor import TrainPreProcessor
from tevatron.modeling import DenseModel
from tevatron.trainer import DenseTrainer
from transformers import AutoConfig, AutoTokenizer

from kd_pipeline_tests.sample_exports import BuiltExports, exports_of
from kd_pipeline_tests.tiny_models import Snapshot, assert_trained, tiny_bert

pytestmark = pytest.mark.usefixtures("offline_consumers")

TEVATRON = exports_of("tevatron")
PASSAGES = 4  # one positive and three negatives a query
Q_LEN, P_LEN = 16, 64
BATCH = 2


@pytest.mark.parametrize(("key", "partition"), TEVATRON)
def test_tevatron_trains_on_the_export(
    sample_exports: BuiltExports, tmp_path: Path, key: str, partition: str | None
) -> None:
    folder = sample_exports.path(key, partition)
    groups = load_dataset("json", data_files=str(folder / "train.jsonl"), split="train")
    passages = [p for g in groups for p in g["positive_passages"] + g["negative_passages"]]
    assert all(isinstance(p["score"], float) for p in passages)  # present, unused by 0.1.0
    texts = [*groups["query"], *(f"{p['title']} {p['text']}" for p in passages)]
    model_dir = tiny_bert(tmp_path / "model", texts)

    data_args = DataArguments(train_n_passages=PASSAGES, q_max_len=Q_LEN, p_max_len=P_LEN)
    args = DenseTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    model = DenseModel.build(
        ModelArguments(model_name_or_path=model_dir),
        data_args,
        args,
        config=AutoConfig.from_pretrained(model_dir, num_labels=1),
    )
    tokenized = groups.map(
        TrainPreProcessor(tokenizer, Q_LEN, P_LEN, data_args.passage_field_separator),
        remove_columns=groups.column_names,
    )
    train = TrainDataset(data_args, tokenized, tokenizer)
    trainer = DenseTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=QPCollator(tokenizer, max_p_len=P_LEN, max_q_len=Q_LEN),
    )
    train.trainer = trainer  # as Tevatron's driver does: the dataset reads epoch and seed
    trainer.state.epoch = 0

    queries, passages_batch = next(iter(trainer.get_train_dataloader()))
    assert queries["input_ids"].shape == (BATCH, Q_LEN)
    assert passages_batch["input_ids"].shape == (BATCH * PASSAGES, P_LEN)
    before = Snapshot(model)
    model.train()
    optimizer = trainer.create_optimizer()
    loss = trainer.compute_loss(model, trainer._prepare_inputs((queries, passages_batch)))
    loss.backward()
    optimizer.step()
    assert_trained(before, model, [loss.item()])
