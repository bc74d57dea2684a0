"""Faust agents and timers, one module per job, each a few lines that hand the runtime's objects to
app/engine (the runtime module builds them; Faust's autodiscovery imports these)."""
