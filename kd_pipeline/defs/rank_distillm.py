"""Rank-DistiLLM runs (one partition per run) and their job."""

import dagster as dg

from kd_pipeline.families.rank_distillm import rank_distillm_job, rank_distillm_runs

defs = dg.Definitions(assets=[rank_distillm_runs], jobs=[rank_distillm_job])
