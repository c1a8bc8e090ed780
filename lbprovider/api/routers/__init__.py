"""``/api/v1`` routers: each route parses, calls one service function, returns a schema."""
