"""Dashboard routers. Thin: parse the request, call one service function, render."""
