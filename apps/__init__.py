"""User-facing front ends: the ``speechllm`` CLI, batch transcription, voice chat, fine-tuning."""
