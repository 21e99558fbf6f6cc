"""Execute: /api/v1/execute, code run in the user's sandboxed kernels; files and audit."""
