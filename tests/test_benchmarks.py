"""Smoke test of the benchmark harness at its smallest size (not a timing gate: no number is asserted on)."""

import json

import pytest

from benchmarks import run


@pytest.mark.slow
def test_tiny_benchmark_runs_every_training_workload_and_writes_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--size", "tiny", "--only", "forward,lcm,dmd2,sid", "--steps", "1", "--warmup", "1", "--json", str(out)]
    assert run.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["size"] == "tiny" and results["device"].startswith("cpu")
    for name in ("forward", "lcm", "dmd2", "sid"):
        entry = results["workloads"][name]
        for side in ("reference", "eager"):
            assert "error" not in entry[side], entry[side]
            assert entry[side]["ms_per_step"] > 0
    # sdtoolkit's forward is the same computation as the plain one: identical outputs in fp32 on a CPU
    assert results["workloads"]["forward"]["numerics"]["max_abs_diff"] == 0.0
    table = capsys.readouterr().out
    assert "× ref" in table and "lcm" in table


def test_unknown_workload_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        run.main(["--only", "lcm,nope"])
    assert "unknown workload(s) ['nope']" in capsys.readouterr().err
