"""Integrations with optional packages; each module imports its package at the top."""
