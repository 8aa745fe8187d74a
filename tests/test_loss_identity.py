"""The refactor of issue 17 left the training numbers alone: five small runs (plain energy +
forces, energy-only PIWSL second order, Δ on ZBL and on GFN2-xTB, the physics variants) give
bit-identical per-step losses, logged terms, epoch metrics and final weights to the reference
recorded with the code of commit 8074771 (``tests/data/loss_reference.json``, written by
``python tests/loss_identity.py --record``) — with the old config keys the reference was recorded
with, and written in the new form of the loss section. The Δ run on ZBL is not bit-identical by
design (ZBL moved into the model, float32 positions): its losses agree to 1e-5 relative.

Bit identity is demanded against the record of this machine's CPU kind (float32 kernels round
differently by vendor and instruction set); on a kind without a record the losses must agree
with every record to ``CROSS_CPU_RTOL`` and the test warns that bit identity went unchecked."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
from loss_identity import CASES, NEW_FORM, against_old_code, run_case

REFERENCE = Path(__file__).parent / "data" / "loss_reference.json"


def assert_same_as_old_code(case: str, got: dict) -> None:
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert len(got["steps"]) == len(reference["references"][0]["cases"][case]["steps"]) > 0
    verdict = against_old_code(case, got, reference)
    assert verdict.problem is None, verdict.problem
    if not verdict.exact:
        warnings.warn(f"{case}: {verdict.checked}; bit identity unchecked", stacklevel=2)


@pytest.mark.parametrize("case", list(CASES))
def test_losses_bit_identical_to_reference(case, tmp_path):
    if case == "delta_gfn2_xtb":
        pytest.importorskip("tblite")
    assert_same_as_old_code(case, run_case(case, tmp_path))


@pytest.mark.parametrize("case", list(NEW_FORM))
def test_new_form_of_the_loss_section_gives_the_same_numbers(case, tmp_path):
    assert_same_as_old_code(case, run_case(case, tmp_path, new_form=True))


def _with_loss_scaled(record: dict, step: int, factor: float) -> dict:
    changed = copy.deepcopy(record)
    loss = changed["steps"][step]["loss"]
    changed["steps"][step]["loss"] = (float.fromhex(loss) * factor).hex()
    return changed


@pytest.mark.parametrize("kind", ["AuthenticAMD AVX2", "NoSuchVendor AVX512"])
def test_a_changed_loss_is_caught_on_recorded_and_unrecorded_cpu_kinds(kind, monkeypatch):
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    amd = next(r for r in reference["references"] if r["cpu_kind"] == "AuthenticAMD AVX2")
    record = amd["cases"]["plain_energy_forces"]
    monkeypatch.setattr("piwsl.io.machine.cpu_kind", lambda: kind)
    unchanged = against_old_code("plain_energy_forces", record, reference)
    assert unchanged.problem is None
    assert unchanged.exact  # bit-identical to a record, whichever kind this machine is
    rounding = _with_loss_scaled(record, 3, 1 + 1e-7)  # what another CPU kind's rounding does
    verdict = against_old_code("plain_energy_forces", rounding, reference)
    assert (verdict.problem is None) == (
        kind not in {r["cpu_kind"] for r in reference["references"]}
    )
    changed = _with_loss_scaled(record, 3, 1 + 1e-3)
    assert "step 3" in against_old_code("plain_energy_forces", changed, reference).problem
