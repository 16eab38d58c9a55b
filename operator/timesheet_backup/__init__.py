"""Declarative backup and restore of the Northstar Timesheet application."""

__version__ = "0.1.0"
