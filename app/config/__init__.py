"""Configuration: HYDRANT_* settings, the pipeline spec (validated, with line numbers), and the safe
expressions of `where` filters and computed columns. No I/O beyond reading the spec file."""
