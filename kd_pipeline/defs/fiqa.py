"""FiQA mined reranker scores, and the job that builds them with the FiQA texts."""

import dagster as dg

from kd_pipeline.families.fiqa import fiqa_job, fiqa_mined_scores

defs = dg.Definitions(assets=[fiqa_mined_scores], jobs=[fiqa_job])
