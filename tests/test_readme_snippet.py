"""The README's plain-PyTorch inference snippet, executed as written, on images of any size."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torchvision.io import encode_jpeg, write_file, write_png

from conftest import ROOT, run_cli
from d2l_lightning.cli import train
from d2l_lightning.models import fit_image, prepare_images

WITHOUT_LIGHTNING = str(ROOT / "tests" / "without_lightning.py")


def readme_block(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{len(found)} README python blocks use {marker}"
    return found[0]


@pytest.mark.parametrize("model", ["lenet"])
def test_readme_inference_block_runs_as_written(data_root, tmp_path, model) -> None:
    run = tmp_path / "runs" / "RUN"
    assert train.main(["--model", model, "--data", "fashion_mnist", "--data-dir", str(data_root),
                       "--run-dir", str(run), "--fast-dev-run", "--no-progress-bar"]) == 0
    g = torch.Generator().manual_seed(0)
    write_png(torch.randint(0, 256, (3, 200, 200), dtype=torch.uint8, generator=g),
              str(tmp_path / "shoe.png"))  # RGB, 200x200
    write_file(str(tmp_path / "photo.jpg"),
               encode_jpeg(torch.randint(0, 256, (1, 17, 31), dtype=torch.uint8, generator=g)))
    code = readme_block("prepare_images")
    (tmp_path / "snippet.py").write_text(code + "import json\nprint(json.dumps(labels))\n")
    proc = run_cli(WITHOUT_LIGHTNING, str(tmp_path / "snippet.py"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = json.loads(proc.stdout.strip().splitlines()[-1])
    names = json.loads((run / "export" / "config.json").read_text())["class_names"]
    assert len(labels) == 2 and set(labels) <= set(names)


def test_fit_image_layouts_channels_and_sizes() -> None:
    g = torch.Generator().manual_seed(1)
    chw = torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=g)
    rgb = fit_image(chw, 28, 3)
    assert rgb.shape == (3, 28, 28) and rgb.dtype == torch.uint8
    assert torch.equal(fit_image(chw.permute(1, 2, 0).numpy(), 28, 3), rgb)  # (H, W, C)
    rgba = torch.cat([chw, torch.zeros(1, 40, 30, dtype=torch.uint8)])
    assert torch.equal(fit_image(rgba, 28, 3), rgb)  # alpha dropped
    square = chw[:, :30]
    gray = fit_image(square, 30, 1)[0].float()  # no resize: exactly the luma of each pixel
    luma = 0.299 * square[0].float() + 0.587 * square[1].float() + 0.114 * square[2].float()
    assert (gray - luma).abs().max() <= 0.5
    plain = torch.randint(0, 256, (28, 28), dtype=torch.uint8, generator=g)
    assert torch.equal(fit_image(plain, 28, 1), plain[None])  # nothing to do
    assert torch.equal(fit_image(plain, 28, 3), plain.expand(3, 28, 28))
    with pytest.raises(ValueError, match="got shape"):
        fit_image(torch.zeros(2, 5, 5, 5, dtype=torch.uint8), 28, 1)


def test_prepare_images_matches_training_preprocessing() -> None:
    from d2l_lightning.models import preprocess_images

    pre = {"image_size": 28, "in_channels": 1, "mean": [0.5], "std": [0.25], "resize": 32}
    batch = torch.randint(0, 256, (2, 28, 28), dtype=torch.uint8)
    expected = preprocess_images(batch, [0.5], [0.25], 32)
    assert torch.equal(prepare_images(list(batch), pre), expected)
    assert prepare_images(batch[0], pre).shape == (1, 1, 32, 32)


def test_readme_notebook_cell_trains_tests_and_loads(data_root, tmp_path, monkeypatch,
                                                     capsys) -> None:
    """The README's library cell, run as written (on the tiny fixture via D2L_DATA_DIR)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("D2L_DATA_DIR", str(data_root))
    cell = readme_block("training.fit(")
    scope: dict = {}
    exec(compile(cell, "README.md", "exec"), scope)  # noqa: S102 (the README's own cell)
    results, again = scope["results"], scope["again"]
    assert again == {k: results[k] for k in again} and set(again) == {
        "test/loss", "test/acc", "test/f1"}
    assert type(scope["model"]).__name__ == "LeNet" and scope["cfg"]["arch"] == "lenet"
    assert (tmp_path / "runs" / "notebook-lenet" / "config.yaml").is_file()
