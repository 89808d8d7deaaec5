"""Shared plumbing: column names, errors, atomic I/O, calendars, logging, progress, run folders, typed scalars."""
