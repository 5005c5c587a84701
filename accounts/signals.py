"""Signals other apps listen to (accounts may not call them: dependencies run toward accounts)."""

from django.dispatch import Signal

# Sent inside the transaction that made a user's personal lab, with `lab` and `project` (its
# Default project): billing starts it on the default plan.
personal_lab_created = Signal()
