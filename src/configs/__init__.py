"""Shipped model configs."""
