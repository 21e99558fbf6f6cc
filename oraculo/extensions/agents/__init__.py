"""Agents: /api/v1/agents, agent notebooks, multi-agent runs and their events."""
