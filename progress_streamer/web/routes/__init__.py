"""The HTTP endpoints, one module per resource; `progress_streamer.web.app` routes them."""
