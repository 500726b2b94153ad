"""Test and operator tooling that is not part of the agent itself."""
