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
