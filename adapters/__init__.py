"""Chat platform adapters: one module per platform, found through the `chatops.adapters` entry points."""
