"""The web app: SSE streams and the JSON API over one shared Redis subscription."""
