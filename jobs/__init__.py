"""Training job management, usable as a library without any chat code."""
