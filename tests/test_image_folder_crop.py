"""The centre crop of folder images (``datamodules/folder.py``, ``_to_square``): the middle of
the longer side is kept, the shorter side is resized first, never a stretch."""

from __future__ import annotations

import numpy as np
import pytest

from d2l_lightning.datamodules.folder import _to_square

Image = pytest.importorskip("PIL.Image")

# ------------------------------------------------------------------ the centre crop


def columns(width: int, height: int) -> np.ndarray:
    """A grey image whose pixel at column ``c`` is ``10 c``."""
    return np.tile(np.arange(width, dtype=np.uint8) * 10, (height, 1))


def to_square(pixels: np.ndarray, side: int, portrait: bool) -> np.ndarray:
    """``_to_square`` of ``pixels`` (or of its transpose), read back as it was turned."""
    out = np.asarray(_to_square(Image.fromarray(pixels.T.copy() if portrait else pixels), side))
    return out.T if portrait else out


@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
@pytest.mark.parametrize("shape, side, kept", [
    ((4, 12), 4, [40, 50, 60, 70]),  # the middle third
    ((4, 7), 4, [10, 20, 30, 40]),  # an odd margin: one column more after than before
    ((3, 5), 3, [10, 20, 30]),
])
def test_image_folder_to_square_keeps_the_centre_without_resizing(shape, side, kept,
                                                                  portrait) -> None:
    out = to_square(columns(shape[1], shape[0]), side, portrait)
    assert out.shape == (side, side) and (out == np.array(kept, dtype=np.uint8)).all()


@pytest.mark.parametrize("portrait", [False, True], ids=["landscape", "portrait"])
def test_image_folder_to_square_shrinks_the_shorter_side_then_crops(portrait) -> None:
    # 24x8 in three 8-column stripes (0, 200, 50) to side 4: 12x4, columns 4..7 kept, all
    # from the middle stripe; its edges blend a quarter-weighted neighbour (175 = 200 * 7/8;
    # 181 = (7 * 200 + 50) / 8). A stretch to 4x4 would keep all three stripes.
    img = np.repeat(np.array([0, 200, 50], np.uint8), 8)[None].repeat(8, axis=0)
    out = to_square(img, 4, portrait)
    assert out.shape == (4, 4) and (out == np.array([175, 200, 200, 181], np.uint8)).all()


def test_image_folder_to_square_grows_a_small_image_and_leaves_a_square_one() -> None:
    img = Image.fromarray(np.full((2, 3), 90, np.uint8))
    assert np.asarray(_to_square(img, 6)).tolist() == [[90] * 6] * 6
    square = Image.fromarray(columns(4, 4))
    assert _to_square(square, 4) is square
