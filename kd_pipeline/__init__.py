"""kd-pipeline: knowledge-distillation training data for neural IR, as Dagster assets."""
