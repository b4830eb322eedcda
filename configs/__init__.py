"""Shipped configuration: stack.yaml, scenarios/ and maps/ (installed as package data)."""
