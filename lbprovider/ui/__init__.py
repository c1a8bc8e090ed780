"""The operator dashboard: HTML pages and htmx fragments served by the API's own app.

``include_ui(app, ...)`` adds the routes, the static files (``web/static``, vendored htmx) and
the live-update stream. Every read and write goes through ``lbprovider.services`` — the same use
cases, audit rows and error texts as the REST API. This package must not import Kubernetes,
HAProxy, the controller, the agent or the lab (import-linter), and holds no SQL of its own.
"""

from lbprovider.ui.app import include_ui

__all__ = ["include_ui"]
