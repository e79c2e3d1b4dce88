"""The README's first command stays true: the demo runs the whole loop and leaves a label map on the phantom's grid."""

from __future__ import annotations

import subprocess
import sys

import SimpleITK as sitk
from test_cli_serve import ROOT


def test_demo_discovers_predicts_and_saves(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/demo.py", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "$ tomaat discover http://127.0.0.1:" in result.stdout
    assert "   any / any / segmentation\n     Threshold " in result.stdout
    assert "$ tomaat predict http://127.0.0.1:" in result.stdout and "--set threshold=250 --out" in result.stdout
    assert "(on the input's grid: yes)" in result.stdout
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert labels.GetSize() == (64, 64, 48)
    assert int(sitk.GetArrayViewFromImage(labels).sum()) > 0
