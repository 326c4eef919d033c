"""The suite's one-actor knob for simulations (``FEDGUARD_SIM_CPUS``): a bad value stops the
simulation before Ray starts, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from federation.config import from_flat
from federation.errors import ConfigError
from simulations.simulate import SIM_CPUS_ENV, simulate


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_bad_cpu_count_is_refused_naming_the_variable(value: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIM_CPUS_ENV, value)
    cfg = from_flat({"num-clients": 2, "num-server-rounds": 1, "data-dir": "subset",
                     "out-dir": str(tmp_path / "run")})
    with pytest.raises(ConfigError, match=rf"^{SIM_CPUS_ENV}: got '{value}'; allowed: a whole number >= 1$"):
        simulate(cfg)
    assert not (tmp_path / "run").exists()  # nothing ran
