"""OpenAI API: wire schemas, pure adapters to the internal types, thin routes."""
