"""Hydrant's extensions of Faust (faust-streaming 0.15.3, pinned): the App, consumer and recovery
subclasses passed to it, batch intake, tables, placement and worker I/O adapters, diagnostics."""
