"""Chat data for training: rows (the row check), files (a tolerant reader), sources (files,
directories, hub datasets), encoding and tokenization (chat → examples), cache (built once), the
tokenized splits of a run, collation and packing."""
