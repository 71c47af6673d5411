"""Connections: the WebSocket endpoint and the limits that hold under a flood (caps, timeouts)."""
