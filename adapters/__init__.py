"""Adapters to existing simulators, registered as an SME plugin."""
