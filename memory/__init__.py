"""Durable storage of conversations (and, later, delivery to Letta and the vector index)."""
