"""Text collections: one asset per table (MS MARCO passage, BEIR FiQA) and their job."""

import dagster as dg

from kd_pipeline.families.text import text_assets, text_job

defs = dg.Definitions(assets=text_assets, jobs=[text_job])
