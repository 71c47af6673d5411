"""HTTP routes beside the WebSocket: the original REST API, its compat parsing, seed uploads."""
