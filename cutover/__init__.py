"""Intake gate, runbooks and the operator CLI (`standbyctl`), the composition root."""
