"""The Embedder: shapes, options, parameter groups, flip averaging, errors."""

from __future__ import annotations

import math

import pytest
import torch

from fairdml.models import Embedder, create_embedder


def small(**options) -> Embedder:
    options.setdefault("pretrained", False)
    return create_embedder(trunk="small_cnn", **options)


def test_default_embedder_is_small_cnn_128_l2() -> None:
    model = create_embedder().eval()
    assert model.embedding_dim == 128 and model.preprocessing is model.trunk.preprocessing
    out = model(torch.randn(4, 3, 28, 28))
    assert out.shape == (4, 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max", "gem", "mixed"])
@pytest.mark.parametrize("normalization", ["l2", "none", "beta", "poincare"])
def test_every_pooling_and_normalisation_runs_and_trains(pooling: str,
                                                         normalization: str) -> None:
    model = small(pooling=pooling, normalization=normalization, embedding_dim=16,
                  beta=0.3 if normalization == "beta" else 0.0, layer_norm="no_affine")
    out = model(torch.rand(4, 3, 8, 8))
    assert out.shape == (4, 16) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert model.head.linear.weight.grad is not None
    assert model.trunk.blocks[0].conv.weight.grad is not None


def test_embedding_dim_none_uses_the_pooled_features() -> None:
    model = small(embedding_dim=None, normalization="none").eval()
    assert model.embedding_dim == 64
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(images), model.trunk(images).mean(dim=(2, 3)))


def test_embedding_dim_zero_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="embedding_dim must be a positive int.*got 0"):
        small(embedding_dim=0)


def test_bad_head_options_fail_before_building_the_trunk(monkeypatch) -> None:
    import fairdml.models.embedder as embedder_module

    def no_trunk(*args, **kwargs):
        raise AssertionError("the trunk must not be built")

    monkeypatch.setattr(embedder_module, "create_trunk", no_trunk)
    with pytest.raises(KeyError, match="unknown pooling"):
        create_embedder(trunk="resnet50", pooling="sum")
    with pytest.raises(KeyError, match="unknown normalization"):
        create_embedder(trunk="resnet50", normalization="unit")


def test_unknown_trunk_error() -> None:
    with pytest.raises(KeyError, match="unknown trunk 'resnet'; valid names:"):
        create_embedder(trunk="resnet")


def test_cls_pooling_on_a_cnn_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a token trunk"):
        small(pooling="cls")


def test_parameter_groups_split_trunk_and_head_and_skip_frozen() -> None:
    model = small(layer_norm=True)
    groups = model.parameter_groups()
    assert set(groups) == {"trunk", "head"}
    assert {id(p) for p in groups["head"]} == {id(p) for p in model.head.parameters()}
    assert {id(p) for p in groups["trunk"]} == {id(p) for p in model.trunk.parameters()}
    frozen = small(freeze_batchnorm=True, freeze_batchnorm_affine=True)
    trunk_ids = {id(p) for p in frozen.parameter_groups()["trunk"]}
    bn = frozen.trunk.blocks[0].bn
    assert id(bn.weight) not in trunk_ids and id(bn.bias) not in trunk_ids
    assert id(frozen.trunk.blocks[0].conv.weight) in trunk_ids


def test_frozen_batchnorm_through_the_embedder_train_call() -> None:
    model = small(freeze_batchnorm=True)
    model.train()
    assert model.training and all(not m.training for m in model.trunk.batchnorm_layers())


@pytest.mark.parametrize("normalization", ["l2", "none", "beta", "poincare"])
def test_flip_average_is_the_normalisations_average_of_both_views(normalization: str) -> None:
    model = small(normalization=normalization, beta=0.5 if normalization == "beta" else 0.0,
                  embedding_dim=8).eval()
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        views = torch.stack([model.head.project(model.trunk(images)),
                             model.head.project(model.trunk(images.flip(-1)))])
    averaged = model.embed(images, flip_average=True)
    torch.testing.assert_close(averaged, model.head.normalization.average(views))
    # the same for an image and its mirror image
    torch.testing.assert_close(averaged, model.embed(images.flip(-1), flip_average=True))
    assert not averaged.requires_grad
    torch.testing.assert_close(model.embed(images), model(images))


def test_flip_average_l2_on_hand_made_views() -> None:
    """l2: the renormalised mean of the two unit vectors."""
    model = small(embedding_dim=None, normalization="l2").eval()
    images = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        a = torch.nn.functional.normalize(model.head.project(model.trunk(images)), dim=1)
        b = torch.nn.functional.normalize(
            model.head.project(model.trunk(images.flip(-1))), dim=1)
    expected = torch.nn.functional.normalize(a + b, dim=1)
    torch.testing.assert_close(model.embed(images, flip_average=True), expected)
    assert model.embed(images, flip_average=True).norm().item() == pytest.approx(1.0)


def test_poincare_embedder_lands_inside_the_ball() -> None:
    model = small(normalization="poincare", curvature=0.1, clip_radius=2.3).eval()
    out = model(torch.randn(16, 3, 8, 8) * 100)
    radius = math.tanh(math.sqrt(0.1) * 2.3) / math.sqrt(0.1)
    assert (out.norm(dim=1) <= radius + 1e-5).all()


def test_vit_embedder_with_cls_token() -> None:
    model = create_embedder(trunk="deit_s_distilled", pretrained=False, pooling="cls",
                            embedding_dim=32, normalization="poincare").eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        out = model(images)
        tokens = model.trunk(images)
    assert out.shape == (1, 32)
    expected = model.head.normalization(model.head.linear(tokens[:, 0]))
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="signed"):
        create_embedder(trunk="deit_s", pretrained=False, pooling="gem")


def test_grayscale_embedder() -> None:
    model = small(in_channels=1).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 128)
