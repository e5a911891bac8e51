"""The domain: sequences, sessions, KV blocks and the scheduler. Standard library only."""
