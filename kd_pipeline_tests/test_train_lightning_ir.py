"""lightning-ir 0.0.6 trains a bi-encoder on every lightning-ir run export: its `RunDataset`
reads the run file and takes the collection from the file's name, as it does for any run.
The collection is an ir_datasets id (`msmarco-passage/train`, `beir/fiqa/train`) whose texts
and qrels ir_datasets would download; here the ids are pointed, for the test only, at the
lake's own text and qrels tables (written as JSONL and TREC qrels and registered with
lightning-ir's `register_new_dataset`), so nothing is downloaded. One optimisation step of
listwise distillation (`KLDivergence` on the teacher scores) through `LightningIRTrainer`."""

from __future__ import annotations

from pathlib import Path

import duckdb
import ir_datasets
import pytest
import torch
from lightning_ir import (
    BiEncoderModule,
    KLDivergence,
    LightningIRDataModule,
    LightningIRTrainer,
    RunDataset,
)
from lightning_ir.data.external_datasets.ir_datasets_utils import register_new_dataset
from lightning_ir.models import DprConfig

from kd_pipeline_tests.sample_exports import BuiltExports, exports_of
from kd_pipeline_tests.tiny_models import Snapshot, assert_trained, tiny_bert

pytestmark = pytest.mark.usefixtures("offline_consumers")

RUNS = exports_of("lightning_ir")
# the lake's tables behind each collection a run file names
COLLECTIONS = {
    "msmarco-passage/train": (
        "text/msmarco_passage/queries_train",
        "text/msmarco_passage/collection",
        "text/msmarco_passage/qrels_train",
    ),
    "beir/fiqa/train": ("text/fiqa/queries", "text/fiqa/corpus", "text/fiqa/qrels_train"),
}
SAMPLE_SIZE = 4  # documents per query in a training sample
BATCH = 2


def register_lake_collection(
    monkeypatch: pytest.MonkeyPatch, sample: BuiltExports, dataset_id: str, folder: Path
) -> list[str]:
    """Point ir_datasets' `dataset_id` at the lake's queries, documents and qrels for this
    test (monkeypatch restores the real registration afterwards); returns their texts."""
    queries, documents, qrels = (sample.path(key) / "*.parquet" for key in COLLECTIONS[dataset_id])
    folder.mkdir(parents=True)
    con = duckdb.connect()
    columns = con.execute(f"DESCRIBE FROM read_parquet('{documents}')").fetchall()
    title = "title" in {name for name, *_ in columns}
    text = "concat_ws(' ', title, text)" if title else "text"  # as ir_datasets' BEIR docs read
    con.execute(
        f"COPY (SELECT query_id, text FROM read_parquet('{queries}')) "
        f"TO '{folder / 'queries.jsonl'}' (FORMAT json)"
    )
    con.execute(
        f"COPY (SELECT doc_id, {text} AS text FROM read_parquet('{documents}')) "
        f"TO '{folder / 'docs.jsonl'}' (FORMAT json)"
    )
    con.execute(
        f"COPY (SELECT query_id, 0, doc_id, relevance FROM read_parquet('{qrels}')) "
        f"TO '{folder / 'qrels.qrels'}' (FORMAT csv, DELIMITER ' ', HEADER false)"
    )
    monkeypatch.delitem(ir_datasets.registry._registered, dataset_id)
    register_new_dataset(
        dataset_id,
        docs=folder / "docs.jsonl",
        queries=folder / "queries.jsonl",
        qrels=folder / "qrels.qrels",
    )
    files = [str(folder / "queries.jsonl"), str(folder / "docs.jsonl")]
    return [t for (t,) in con.execute("SELECT text FROM read_json($f)", {"f": files}).fetchall()]


@pytest.mark.parametrize(("key", "partition"), RUNS)
def test_lightning_ir_trains_on_the_run_export(
    sample_exports: BuiltExports,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    partition: str | None,
) -> None:
    (run_file,) = sample_exports.path(key, partition).glob("*.parquet")
    dataset_id = next(
        d for d in COLLECTIONS if d.replace("/", "-") == run_file.stem.split("__")[-1]
    )
    texts = register_lake_collection(monkeypatch, sample_exports, dataset_id, tmp_path / "texts")

    dataset = RunDataset(
        run_file, sample_size=SAMPLE_SIZE, sampling_strategy="top", targets="score"
    )
    ((queries,),) = duckdb.execute(
        f"SELECT count(DISTINCT query_id) FROM read_parquet('{run_file}')"
    ).fetchall()
    assert dataset.dataset_id == dataset_id
    assert len(dataset) == queries  # none dropped (too few candidates, or no qrels)
    first = dataset[0]
    assert len(first.doc_ids) == SAMPLE_SIZE and all(first.docs) and first.query
    assert first.qrels  # the lake's judgements reached the sample

    module = BiEncoderModule(
        model_name_or_path=tiny_bert(tmp_path / "model", texts),
        config=DprConfig(query_length=16, doc_length=64),
        loss_functions=[KLDivergence()],
    )
    module.set_optimizer(torch.optim.AdamW, lr=1e-3)
    before = Snapshot(module)
    trainer = LightningIRTrainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path / "out",
    )
    trainer.fit(module, LightningIRDataModule(train_dataset=dataset, train_batch_size=BATCH))
    assert trainer.global_step == 1
    assert_trained(before, module, [float(trainer.callback_metrics["loss"])])


def test_lightning_ir_reads_the_trec_run_as_the_parquet_run(
    sample_exports: BuiltExports, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `.run` (TREC) beside the Parquet run (`trec: true`) gives lightning-ir the same
    ranking: same queries, same documents in the same order, same scores."""
    root = sample_exports.path("exports/lightning_ir/lightning_ir_hofstaetter", "bert")
    register_lake_collection(monkeypatch, sample_exports, "msmarco-passage/train", tmp_path / "t")
    parquet, trec = (
        RunDataset(next(root.glob(f"*.{s}")), targets="score") for s in ("parquet", "run")
    )
    assert len(parquet) == len(trec) > 0
    for i in range(len(parquet)):
        a, b = parquet[i], trec[i]
        assert (a.query_id, a.doc_ids) == (b.query_id, b.doc_ids)
        assert torch.allclose(a.targets.float(), b.targets.float())
