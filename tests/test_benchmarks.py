"""The benchmark suite's tiny run: RESULTS.md has the machine, the libraries and every section, and each row carries
our figure and the reference's (median and spread). Structure only, no timing assertions."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"
FIGURE = re.compile(r"^[0-9.e+-]+ ± [0-9.e+-]+ (ms|people/s|samples/s|GFLOP/s)$")


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[str, object]:
    run_all = load_run_all()
    out = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    assert run_all.main(["--tiny", "--output", str(out), "--note", "tiny test run"]) == out
    return out.read_text(encoding="utf-8"), run_all


def sections(text: str) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            found[current] = []
        elif current and line.startswith("| ") and not line.startswith("| row |"):
            found[current].append([cell.strip() for cell in line.strip("|").split("|")])
    return found


def test_header_names_machine_and_libraries(results):
    text, _ = results
    assert text.startswith("# Benchmark results")
    assert "**Note: tiny test run**" in text
    machine = next(line for line in text.splitlines() if line.startswith("- Machine: "))
    for flag in ("avx2", "avx512f", "avx512_bf16", "amx"):
        assert re.search(rf"\b{flag}\w*=(yes|no)\b", machine), flag
    libraries = next(line for line in text.splitlines() if line.startswith("- Libraries: "))
    for name in ("torch", "transformers", "onnxruntime", "vitpose_hf"):
        assert name in libraries


def test_every_section_present_with_ours_and_reference(results):
    text, run_all = results
    found = sections(text)
    assert list(found) == list(run_all.SECTIONS)
    for name, rows in found.items():
        assert rows, f"section {name} has no rows"
        for row in rows:
            assert len(row) == 6, row
            label, ours, reference, ratio, reference_is, _ = row
            assert FIGURE.match(ours), (name, row)
            assert FIGURE.match(reference), (name, row)
            assert float(ratio) > 0 and reference_is, (name, row)


def test_forward_rows_cover_both_dtypes_and_onnxruntime(results):
    text, _ = results
    labels = [row[0] for row in sections(text)["Model forward"]]
    for batch in (1, 4):
        assert f"tiny b{batch} fp32 eager" in labels and f"tiny b{batch} bf16 eager" in labels
        assert f"tiny b{batch} fp32 onnxruntime" in labels
    plus = [row[0] for row in sections(text)["ViTPose++ vs dense"]]
    assert any("one dataset" in label for label in plus) and any("mix" in label for label in plus)


def test_figure_median_and_spread():
    run_all = load_run_all()
    figure = run_all.Figure([0.001, 0.002, 0.004], "ms", 1e3)
    # median 2 ms; absolute deviations 1, 0, 2 ms -> median absolute deviation 1 ms
    assert str(figure) == "2 ± 1 ms"
