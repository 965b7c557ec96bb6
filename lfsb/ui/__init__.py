"""The web dashboard under ``/ui/``: server-rendered pages over the same store functions as the JSON API.

Mounted by the server (``lfsb.server.app``); imports only ``store`` and below.
"""

from .views import UI_PREFIX, UI_ROUTES, create_ui_app, route_key

__all__ = ["UI_PREFIX", "UI_ROUTES", "create_ui_app", "route_key"]
