"""Speech -> LLM adapters, one file each, chosen by name from a registry."""
