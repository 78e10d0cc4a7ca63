"""Training diagnostics shared by methods and the trainer."""
