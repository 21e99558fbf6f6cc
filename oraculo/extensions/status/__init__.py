"""Status: /api/v1/status, the workspace at a glance (user, kernels, GPU, model service)."""
