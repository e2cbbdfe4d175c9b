"""Speech out: speech tokenizer, interleaved text-speech LM, flow matching, vocoder."""
