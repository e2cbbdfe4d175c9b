"""The speech-LLM: frozen speech encoder → adapter (``speechllm.adapters``) → LLM with optional LoRA.

>>> model = load_speechlm("runs/alignformer")                 # a model folder (see io.py)
>>> model.generate([audio], instruction("transcribe"))[0].text
>>> for piece in model.stream(audio, instruction("translate")): print(piece, end="")
>>> model.generate(None, "What is the capital of France?")    # text only: the base LLM, no LoRA
"""

from speechllm.speechlm.backbone import ENCODERS, SpeechEncoder, load_backbone, load_encoder
from speechllm.speechlm.ctc_beam import CTCBeamOptions, CTCPrefixBeamSearch, LLMPrefixScorer
from speechllm.speechlm.generate import (
    BeamSearchDecoder,
    Generation,
    GenerationOptions,
    GreedyDecoder,
    LMState,
)
from speechllm.speechlm.io import (
    is_speechlm_folder,
    load_speechlm,
    peft_base_name,
    read_config,
    save_speechlm,
)
from speechllm.speechlm.model import (
    TASKS,
    LoraSpec,
    PromptFormat,
    SpeechLLM,
    SpeechLLMConfig,
    Task,
    instruction,
    register_task,
)
from speechllm.speechlm.transcriber import SpeechLLMTranscriber

__all__ = [
    "ENCODERS", "TASKS", "BeamSearchDecoder", "CTCBeamOptions", "CTCPrefixBeamSearch", "Generation",
    "GenerationOptions", "GreedyDecoder", "LLMPrefixScorer", "LMState", "LoraSpec", "PromptFormat",
    "SpeechEncoder", "SpeechLLM", "SpeechLLMConfig", "SpeechLLMTranscriber", "Task",
    "instruction", "is_speechlm_folder", "load_backbone", "load_encoder", "load_speechlm", "read_config",
    "peft_base_name", "register_task", "save_speechlm",
]
