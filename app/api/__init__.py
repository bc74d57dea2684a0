"""The HTTP data API (PRODUCT.md "HTTP data API"), on Faust's aiohttp web server.

- ``models.py``: the pydantic models that validate requests and shape answers; ``openapi.py`` builds
  ``/openapi.json`` from them and from each route's declaration;
- ``routing.py``: which worker owns a key or a partition, and forwarding to it;
- ``features.py``, ``tables.py``, ``pipeline.py``: the endpoints.

Faust's autodiscovery imports this package's modules; each registers its views on the App.
"""
