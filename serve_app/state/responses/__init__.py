"""OpenAI's Responses API: schemas, the pure adapter to and from internal types, routes."""
