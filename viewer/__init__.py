"""simulacra.viewer: a websocket server and a static web page that show a town live and replay its steps.

See docs/VIEWER.md. ``serve_source(TownSource(town))`` starts a viewer; ``run_town`` steps and publishes.
"""

from .server import ViewerServer, serve_source
from .source import NoMindError, TownSource, ViewSource, run_town

__all__ = ["NoMindError", "TownSource", "ViewSource", "ViewerServer", "run_town", "serve_source"]
