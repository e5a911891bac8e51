"""Documented import path lmdeploy.serve."""
