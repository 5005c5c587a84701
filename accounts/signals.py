"""Signals other apps listen to (accounts may not call them: dependencies run toward accounts)."""

from django.dispatch import Signal

# Sent inside the transaction that made a user's personal lab, with `lab` and `project` (its
# Default project): billing starts it on the default plan.
personal_lab_created = Signal()

# Sent inside the transaction that removed a member from a lab (through the portal, or by an
# operator in the admin), with `lab`, `user` and `by` (None: an operator): keys revokes the keys
# the member made in the lab's projects and answers how many.
membership_removed = Signal()
