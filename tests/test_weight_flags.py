"""One spelling of weight formats on every command line (apps/commands/weights.py)."""

import pytest

from speechllm.apps.cli import build_parser


@pytest.mark.parametrize("argv, quant", [
    (["transcribe", "a.wav"], "auto"),
    (["transcribe", "a.wav", "--quant", "int8"], "int8"),
    (["translate", "a.wav", "--quant", "fp32"], "fp32"),
    (["ask", "a.wav", "what?", "--quant", "int4"], "int4"),
    (["tts", "--output", "x.wav"], "auto"),
    (["tts", "--output", "x.wav", "--quant", "int8"], "int8"),
    (["chat"], "auto"),
    (["chat", "--quant", "fp32"], "fp32"),
])
def test_every_command_spells_weights_the_same(argv, quant, capsys):
    assert build_parser().parse_args(argv).quant == quant
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv, quant, notice", [
    (["tts", "-o", "x.wav", "--lm-quant", "none"], "fp32", "--lm-quant none is deprecated; use --quant fp32"),
    (["tts", "-o", "x.wav", "--lm-quant", "int4"], "int4", "--lm-quant int4 is deprecated; use --quant int4"),
    (["chat", "--quant", "saved"], "auto", "--quant saved is deprecated; use --quant auto"),
    (["transcribe", "a.wav", "--quant", "none"], "fp32", "--quant none is deprecated; use --quant fp32"),
])
def test_old_spellings_work_with_one_line_notice(argv, quant, notice, capsys):
    assert build_parser().parse_args(argv).quant == quant
    err = capsys.readouterr().err
    assert err.strip() == f"note: {notice}" and err.count("\n") == 1


def test_a_wrong_format_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tts", "--output", "x.wav", "--quant", "int3"])
    assert "invalid choice 'int3' (choose from auto, fp32, int8, int4)" in capsys.readouterr().err


def test_the_chat_offers_the_one_spelling_and_takes_the_old_one_with_a_notice(capsys):
    from speechllm.apps.chat import QUANT_CHOICES
    from speechllm.apps.chat.engine import chat_quant

    assert QUANT_CHOICES == ("auto", "fp32", "int8", "int4")  # the page's dropdown: no "saved"
    assert [chat_quant(q) for q in QUANT_CHOICES] == list(QUANT_CHOICES)
    assert capsys.readouterr().err == ""
    assert chat_quant("saved") == "auto"  # the Python API and the page's API still take it
    err = capsys.readouterr().err
    assert err == "note: quantization 'saved' is deprecated; use 'auto'\n"
    with pytest.raises(ValueError, match="quantization 'int3': choose from auto, fp32, int8, int4"):
        chat_quant("int3")
