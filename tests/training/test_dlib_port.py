"""The dlib port: the file reader, the network's shapes, and parity with dlib itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.backbones.dlib_format import (
    AffineRecord,
    ConvRecord,
    DlibFormatError,
    FcRecord,
    read_records,
)
from training.backbones.dlib_resnet import DlibResNet29, add_zero_padded, default_weights_path


@pytest.fixture(scope="module")
def records():
    return read_records(default_weights_path())


@pytest.fixture(scope="module")
def net():
    return DlibResNet29().load_dlib().eval()


def test_file_holds_29_convs_with_affines_and_one_fc(records):
    convs = [r for r in records if isinstance(r, ConvRecord)]
    assert len(convs) == 29
    assert sum(isinstance(r, AffineRecord) for r in records) == 29
    assert isinstance(records[-1], FcRecord) and records[-1].weight.shape == (128, 256)
    assert records[-1].bias is None
    assert (
        convs[0].weight.shape == (32, 3, 7, 7)
        and convs[0].stride == (2, 2)
        and convs[0].padding == (0, 0)
    )
    downs = [c.weight.shape[:2] for c in convs if c.stride == (2, 2)][1:]
    assert downs == [(64, 32), (128, 64), (256, 128), (256, 256)]


def test_network_shapes(net):
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(5.6e6, rel=0.02)
    x = torch.zeros(2, 3, 150, 150)
    shapes = []
    for _, stage in net.stages():
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [
        (32, 35, 35),
        (32, 35, 35),
        (64, 17, 17),
        (128, 8, 8),
        (256, 4, 4),
        (256, 2, 2),
    ]
    assert net.embed(x).shape == (2, 128)


def test_zero_padded_add_pads_channels_and_cells_at_the_end():
    a = torch.ones(1, 4, 3, 3)
    b = torch.full((1, 2, 4, 4), 2.0)
    out = add_zero_padded(a, b)
    assert out.shape == (1, 4, 4, 4)
    assert (
        out[0, 0, 0, 0] == 3
        and out[0, 3, 0, 0] == 1
        and out[0, 0, 3, 3] == 2
        and out[0, 3, 3, 3] == 0
    )


def test_embeddings_match_dlib(net, celebs_root):
    dlib = pytest.importorskip("dlib")
    from PIL import Image

    reference = dlib.face_recognition_model_v1(str(default_weights_path()))
    files = [
        sorted((celebs_root / c).glob("*.png"))[3]
        for c in ("tom_hanks", "halle_berry", "keanu_reeves")
    ]
    chips = [
        np.asarray(Image.open(f).convert("RGB").resize((150, 150), Image.BILINEAR)) for f in files
    ]
    x = DlibResNet29.preprocessing.standardise(
        torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2)
    )
    with torch.no_grad():
        ours = net(x).numpy()
    theirs = np.stack([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    assert np.abs(ours - theirs).max() <= 1e-4
    # and the embeddings are not all alike: different people are far apart
    assert np.linalg.norm(theirs[0] - theirs[1]) > 0.5


def test_reader_rejects_a_file_that_is_not_a_dlib_network(tmp_path):
    bogus = tmp_path / "bogus.dat"
    bogus.write_bytes(b"\x00" * 1000)
    with pytest.raises(DlibFormatError, match="no dlib network layers"):
        read_records(bogus)


def test_reader_rejects_a_truncated_file(tmp_path):
    data = default_weights_path().read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DlibFormatError):
        DlibResNet29().load_dlib(cut)


def test_folded_norm_scales_are_moved_out_of_the_filters(net):
    """Filters get He-initialisation scale (so Adam's fixed-size steps suit them); the
    function itself is unchanged, which ``test_embeddings_match_dlib`` checks."""
    for conv, _ in net.conv_affine_pairs():
        rms = conv.weight.detach().pow(2).mean(dim=(1, 2, 3)).sqrt()
        expected = (2.0 / conv.weight[0].numel()) ** 0.5
        assert torch.allclose(rms, torch.full_like(rms, expected), rtol=1e-4)
