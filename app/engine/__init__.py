"""The Faust-free batch engine: stream batches (decode, read, shards, send and write), the helper
processes that run shards, lookup batches, the state census. Takes the worker's I/O as arguments."""
