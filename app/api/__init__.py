"""The HTTP data API: handlers that answer from an :class:`app.api.context.ApiContext` (features,
lookup rows, table scans, pipeline, OpenAPI, health), forwarding to a key's owner, request models.
The runtime registers them on Faust's web server (views.py); the serving process reuses them."""
