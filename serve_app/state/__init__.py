"""The stateful layer: OpenAI's Responses and Conversations over a database-backed state store."""
