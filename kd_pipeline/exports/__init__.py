"""Training-ready exports: the files trainers load, built from specs (`exports.yaml`)."""
