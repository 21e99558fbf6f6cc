"""REST and WebSocket handlers of the oraculo server extension, one module per resource."""
