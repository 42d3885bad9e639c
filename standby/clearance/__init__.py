"""Clearance commands and the batch pipeline that carries them out in one transaction per batch."""
