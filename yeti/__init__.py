"""Yeti: GraphQL-schema-defined live tables over REST, SSE and WebSocket."""

__version__ = "0.1.0"
