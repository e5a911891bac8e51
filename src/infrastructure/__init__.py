"""The composition root: the DI container, logging set-up, device discovery."""
