"""The front: one address for clients that forwards to the primary the witness names (see app.build_front)."""
