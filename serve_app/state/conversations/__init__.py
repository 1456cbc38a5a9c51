"""OpenAI's Conversations API: stored item lists that responses read and append to."""
