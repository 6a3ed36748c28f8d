"""The bottom layer: configs, the dataset table and IDX reader, models, the checkpoint format and its
metadata checks, metrics, the evaluator and private io helpers. Imports nothing else of densa."""
