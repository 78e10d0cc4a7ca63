"""Speed-up methods, one folder each (config.py, core modules, hooks.py, README.md method card, optional cli.py);
hasten.methods.registry lists them."""
