"""Training, export and data-generation scripts for OpenDlign (they import the core only)."""
