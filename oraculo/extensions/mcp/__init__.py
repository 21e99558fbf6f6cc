"""The MCP feature: the workspace as a Model Context Protocol server."""
