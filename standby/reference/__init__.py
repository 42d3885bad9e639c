"""Reference data the engine loads read-only: administrative units, the 2025 mapping and the customs organisation."""
