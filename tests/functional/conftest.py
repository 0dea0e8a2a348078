"""Fixtures for functional tests: real agents on loopback, real SSH, real sockets."""

from tests.functional.agents import schema, start_agent

__all__ = ["schema", "start_agent"]
