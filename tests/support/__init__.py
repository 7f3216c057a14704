"""Helpers and fixtures the test modules share (imported by them, never test modules)."""
