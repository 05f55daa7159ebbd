"""Tests of sparse_eoc.data.augment: random crop with zero padding and random flip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparse_eoc.train.augment import random_crop_flip

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def images(B: int = 6, C: int = 3, H: int = 5, W: int = 4) -> torch.Tensor:
    """(B, C, H, W) with every pixel distinct and nonzero, so crops are distinguishable."""
    return torch.arange(1, B * C * H * W + 1, dtype=torch.float32).reshape(B, C, H, W)


def candidates(img: torch.Tensor, p: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every allowed output for one (C, H, W) image: (dy, dx, flip, crop), by slicing."""
    C, H, W = img.shape
    padded = F.pad(img, (p, p, p, p))  # (C, H + 2p, W + 2p)
    out = []
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            crop = padded[:, dy : dy + H, dx : dx + W]  # (C, H, W)
            out += [(dy, dx, False, crop), (dy, dx, True, crop.flip(-1))]
    return out


def which(out: torch.Tensor, img: torch.Tensor, p: int) -> tuple[int, int, bool]:
    matches = [(dy, dx, f) for dy, dx, f, c in candidates(img, p) if torch.equal(out, c)]
    assert len(matches) == 1, f"output matches {len(matches)} allowed crops/flips"
    return matches[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_shape_dtype_device_and_input_untouched(device, dtype):
    x = images().to(device, dtype)
    before = x.clone()
    out = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
    assert torch.equal(x, before)


@pytest.mark.parametrize("p", [0, 1, 4])
def test_every_output_is_an_allowed_crop_or_flip(p):
    x = images(B=64, H=6, W=5)  # p < H, W: every window shows pixels, so outputs are distinct
    out = random_crop_flip(x, padding=p, generator=torch.Generator().manual_seed(1))
    seen = {which(out[b], x[b], p) for b in range(len(x))}  # one crop for all channels
    if p == 0:
        assert seen == {(0, 0, False), (0, 0, True)}  # padding=0 only flips


def test_matches_the_documented_draws():
    """Offsets (dy, dx) then flips, from the generator, applied by plain slicing."""
    p, x = 2, images(B=16)
    out = random_crop_flip(x, padding=p, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    dy, dx = torch.randint(0, 2 * p + 1, (2, len(x)), generator=g)
    flips = torch.randint(0, 2, (len(x),), generator=g)
    for b in range(len(x)):
        assert which(out[b], x[b], p) == (int(dy[b]), int(dx[b]), bool(flips[b]))


def test_centre_crop_without_flip_is_identity_and_shift_fills_zeros():
    x = images(B=1, C=1, H=3, W=3)
    p = 1
    by_draw = {(dy, dx, f): c for dy, dx, f, c in candidates(x[0], p)}
    assert torch.equal(by_draw[(1, 1, False)], x[0])
    # (dy, dx) = (p + 1, p): content moves up one row, a zero row enters at the bottom
    expected = torch.tensor([[[4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [0.0, 0.0, 0.0]]])
    assert torch.equal(by_draw[(2, 1, False)], expected)
    assert torch.equal(by_draw[(1, 1, True)], x[0].flip(-1))


def test_covers_all_crops_and_both_flips():
    p, x = 1, images(B=1, C=1, H=3, W=3).expand(400, 1, 3, 3)  # (400, 1, 3, 3)
    out = random_crop_flip(x, padding=p, generator=torch.Generator().manual_seed(3))
    seen = {which(out[b], x[b], p) for b in range(len(x))}
    assert len(seen) == 2 * (2 * p + 1) ** 2  # 18 outcomes, each p = 1/18: miss ~ 1e-8


def test_seeded_generator_is_deterministic():
    x = images(B=32)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(5))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_empty_batch():
    x = images(B=0)
    assert random_crop_flip(x, generator=torch.Generator()).shape == (0, 3, 5, 4)


@pytest.mark.parametrize("shape", [(3, 5, 4), (2, 1, 3, 5, 4)])
def test_rejects_non_4d(shape):
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, H, W\), 4 dimensions"):
        random_crop_flip(torch.zeros(shape), generator=torch.Generator())


@pytest.mark.parametrize("padding", [-1, 1.5, True])
def test_rejects_bad_padding(padding):
    with pytest.raises(ValueError, match=rf"padding must be an integer >= 0, got padding={padding!r}"):
        random_crop_flip(images(), padding=padding, generator=torch.Generator())
