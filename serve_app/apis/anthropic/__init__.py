"""Anthropic's Messages API: schemas, adapter and routes over the internal types."""
