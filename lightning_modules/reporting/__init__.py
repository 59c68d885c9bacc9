"""Run-time reports written by the pipeline (the depth sweep)."""
