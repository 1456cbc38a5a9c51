"""OpenAI's Assistants API (v2) over the state store: assistants, threads, messages, runs."""
