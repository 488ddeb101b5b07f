"""Floor 3: stories (files, the hub, the built-in generator), the BPE tokenizer, batches."""
