"""bfloat16 on a CPU: a warning where torch has to emulate it (``training/faults.py``)."""

from __future__ import annotations

import pytest
import torch

from d2l_lightning.training.command_line import config_from_argv
from d2l_lightning.training.faults import check_hardware


@pytest.mark.parametrize("bf16, amx", [(False, False), (True, False), (False, True)])
def test_bf16_on_a_cpu_without_bf16_hardware_warns_once(monkeypatch, capsys, bf16: bool,
                                                        amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.delenv("_D2L_RUN_DIR", raising=False)
    for precision in ("bf16-mixed", "bf16-true", "16-mixed", "32-true"):
        check_hardware(config_from_argv(["--accelerator", "cpu", "--precision",
                                                     precision]))
        err = capsys.readouterr().err
        if precision == "32-true" or bf16 or amx:
            assert err == "", (precision, err)
        else:
            assert err == (f"warning: --precision {precision} runs bfloat16 on the CPU, and this "
                           "CPU has neither AVX512-BF16 nor AMX, so torch emulates it (usually "
                           "slower than --precision 32-true)\n")
