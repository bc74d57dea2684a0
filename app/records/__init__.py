"""What a record means: decoding events and lookup rows, enriched output rows, a record's source
identity, and which partition a key lives on. Pure functions, no I/O."""
