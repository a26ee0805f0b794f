"""A job-kind plugin for chatops (test fixture)."""
