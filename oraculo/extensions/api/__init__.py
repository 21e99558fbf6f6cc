"""API: the extension's OpenAPI document (``/api/v1/openapi.json``) and its explorer page."""
