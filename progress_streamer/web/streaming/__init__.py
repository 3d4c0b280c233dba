"""The event streams: the shared subscription hub, per-client queues, SSE frames, writers."""
