"""Imports every built-in method so each registers itself with hasten.methods.registry."""
