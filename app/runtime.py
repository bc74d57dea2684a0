"""The worker's Faust App, built from the settings and the pipeline spec (app/faust_ext/app.py).

Agents (agents/), tables (tables/) and web views (app/api/health.py) register themselves on this app and
are found by Faust's autodiscovery; this module imports none of them.
"""

from __future__ import annotations

from app.config.settings import Settings, get_settings
from app.config.spec import Pipeline, load_pipeline
from app.faust_ext.app import FETCH_RECORDS, HydrantApp, create_app
from app.metrics import REGISTRY, LiveCollector

__all__ = ["FETCH_RECORDS", "app", "pipeline", "settings"]

settings: Settings = get_settings()
pipeline: Pipeline = load_pipeline(settings.pipeline)
app: HydrantApp = create_app(settings, pipeline)
REGISTRY.register(LiveCollector(app))
