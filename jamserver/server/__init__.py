"""asyncio + Starlette: routes, rooms, fan-out, the engine, streams, metrics and the REST API."""
