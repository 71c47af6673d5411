"""Past one process: front-ends and generation workers sharing rooms and clip jobs through Redis Streams."""
