"""The output folder's contract: JSONL reading and atomic writing, row shapes (records), the
split names and ratios, per-file and merged files, OUT's lock, the dataset card and conversion
to trainers' formats. Must not import generation, curation, training or evaluation."""
