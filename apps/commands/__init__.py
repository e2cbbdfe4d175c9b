"""Subcommands of the ``speechllm`` console script, registered in ``speechllm.apps.cli``."""
