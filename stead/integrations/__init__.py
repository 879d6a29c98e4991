"""The outside world behind stead's seams: model servers (OpenAI-compatible), MCP servers and
OpenAPI services as tools."""
