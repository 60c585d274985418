"""Hofstaetter teacher scores (one partition per teacher) and their job."""

import dagster as dg

from kd_pipeline.families.hofstaetter import hofstaetter_job, hofstaetter_teacher_scores

defs = dg.Definitions(assets=[hofstaetter_teacher_scores], jobs=[hofstaetter_job])
