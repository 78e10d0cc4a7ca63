"""Speed-up methods, one folder each with a method card (README.md)."""
