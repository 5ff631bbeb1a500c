"""Pooling and normalisation formulas on hand-made tensors; head options and errors."""

from __future__ import annotations

import math

import pytest
import torch

from fairdml.models.heads import (
    BetaNormalization,
    Head,
    L2Normalization,
    NoNormalization,
    PoincareBallProjection,
    normalization_names,
    pooling_names,
)

# One channel 2x2 map [[1, 2], [3, 6]] and a second channel [[0, 0], [0, 4]].
MAP = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]]]])


def close(actual: torch.Tensor, expected: list[list[float]]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype))


def pooled(name: str, x: torch.Tensor = MAP) -> torch.Tensor:
    head = Head(x.shape[1], pooling=name, embedding_dim=None, normalization="none")
    return head(x)


def test_registered_names() -> None:
    assert pooling_names() == ["avg", "avg+max", "cls", "gem", "max", "mixed"]
    assert normalization_names() == ["beta", "l2", "none", "poincare"]


@pytest.mark.parametrize(("name", "expected"), [
    ("avg", [3.0, 1.0]),
    ("max", [6.0, 4.0]),
    ("avg+max", [9.0, 5.0]),
    ("mixed", [4.5, 2.5]),  # sigmoid(0) = 0.5: the midpoint of avg and max
])
def test_pooling_formulas(name: str, expected: list[float]) -> None:
    assert pooled(name).tolist() == [expected]


def test_gem_is_the_generalised_mean_with_learnable_p() -> None:
    head = Head(2, pooling="gem", embedding_dim=None, normalization="none")
    assert head.pooling.p.item() == 3.0
    out = head(MAP)
    eps = 1e-6
    expected0 = ((1 + 8 + 27 + 216) / 4) ** (1 / 3)
    expected1 = ((3 * eps**3 + 64) / 4) ** (1 / 3)
    assert out[0, 0].item() == pytest.approx(expected0, rel=1e-5)
    assert out[0, 1].item() == pytest.approx(expected1, rel=1e-5)
    out.sum().backward()
    assert head.pooling.p.grad is not None and head.pooling.p.grad.abs() > 0
    # p = 1 is average pooling, large p tends to max pooling
    head.pooling.p.data.fill_(1.0)
    assert head(MAP)[0, 0].item() == pytest.approx(3.0, rel=1e-5)
    head.pooling.p.data.fill_(200.0)
    assert head(MAP)[0, 0].item() == pytest.approx(6.0, rel=1e-2)


def test_mixed_pooling_weight_is_learnable_and_bounded() -> None:
    head = Head(2, pooling="mixed", embedding_dim=None, normalization="none")
    head.pooling.mix_logit.data.fill_(50.0)  # sigmoid -> 1: average pooling
    close(head(MAP), [[3.0, 1.0]])
    head.pooling.mix_logit.data.fill_(-50.0)  # sigmoid -> 0: max pooling
    close(head(MAP), [[6.0, 4.0]])
    head(MAP).sum().backward()
    assert head.pooling.mix_logit.grad is not None


def test_token_pooling_cls_and_patch_tokens_without_prefix() -> None:
    # tokens (B=1, T=4, C=2): CLS, distillation token, then two patch tokens
    tokens = torch.tensor([[[10.0, 20.0], [100.0, 200.0], [1.0, 3.0], [3.0, -5.0]]])
    cls = Head(2, pooling="cls", embedding_dim=None, normalization="none",
               input_format="tokens", num_prefix_tokens=2)
    assert cls(tokens).tolist() == [[10.0, 20.0]]
    avg = Head(2, pooling="avg", embedding_dim=None, normalization="none",
               input_format="tokens", num_prefix_tokens=2)
    assert avg(tokens).tolist() == [[2.0, -1.0]]
    mx = Head(2, pooling="max", embedding_dim=None, normalization="none",
              input_format="tokens", num_prefix_tokens=2)
    assert mx(tokens).tolist() == [[3.0, 3.0]]


def test_pooling_incompatible_with_the_trunk_output_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a token trunk"):
        Head(4, pooling="cls")
    with pytest.raises(ValueError, match="signed"):
        Head(4, pooling="gem", input_format="tokens", num_prefix_tokens=1)
    with pytest.raises(ValueError, match="feature map"):
        Head(2, pooling="avg")(torch.zeros(1, 2, 3))


def test_beta_normalisation_on_a_hand_made_vector() -> None:
    phi = torch.tensor([[3.0, 4.0]])
    out = BetaNormalization(beta=0.5)(phi)
    close(out, [[0.6 + 1.5, 0.8 + 2.0]])
    close(BetaNormalization(beta=0.0)(phi), [[0.6, 0.8]])
    head = Head(2, pooling="avg", embedding_dim=None, normalization="beta", beta=0.5)
    close(head(phi.view(1, 2, 1, 1)), [[2.1, 2.8]])


def test_l2_and_none_normalisation() -> None:
    phi = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    close(L2Normalization()(phi), [[0.6, 0.8], [0.0, -1.0]])
    assert NoNormalization()(phi).tolist() == phi.tolist()


def test_poincare_projection_matches_the_closed_form_and_stays_in_the_ball() -> None:
    c, r = 0.1, 2.3
    projection = PoincareBallProjection(curvature=c, clip_radius=r)
    torch.manual_seed(0)
    z = torch.randn(64, 16, dtype=torch.float64) * torch.logspace(-3, 3, 64,
                                                                   dtype=torch.float64)[:, None]
    y = projection(z)
    norms = z.norm(dim=1)
    expected_norm = torch.tanh(math.sqrt(c) * norms.clamp(max=r)) / math.sqrt(c)
    torch.testing.assert_close(y.norm(dim=1), expected_norm)
    # direction preserved
    torch.testing.assert_close(torch.nn.functional.normalize(y, dim=1),
                               torch.nn.functional.normalize(z, dim=1))
    assert (y.norm(dim=1) < 1 / math.sqrt(c)).all()
    # a hand-made point: ||z|| = 5 > r, clipped to 2.3 then tanh(sqrt(0.1) * 2.3) / sqrt(0.1)
    point = projection(torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    radius = math.tanh(math.sqrt(0.1) * 2.3) / math.sqrt(0.1)
    close(point, [[0.6 * radius, 0.8 * radius]])


def test_poincare_without_clipping_keeps_a_margin_inside_the_ball() -> None:
    projection = PoincareBallProjection(curvature=1.0, clip_radius=None)
    y = projection(torch.full((3, 8), 1e4))
    assert torch.isfinite(y).all()
    assert (y.norm(dim=1) < 1.0).all()


def test_normalisation_averages() -> None:
    views = torch.tensor([[[2.0, 0.0]], [[0.0, 4.0]]])  # two views of one item
    s = 1 / math.sqrt(2)
    close(L2Normalization().average(views), [[s, s]])
    assert NoNormalization().average(views).tolist() == [[1.0, 2.0]]
    close(BetaNormalization(0.5).average(views), [[s + 0.5, s + 1.0]])
    poincare = PoincareBallProjection(curvature=0.1, clip_radius=2.3)
    torch.testing.assert_close(poincare.average(views),
                               poincare(torch.tensor([[1.0, 1.15]])))


def test_layer_norm_options_and_linear_embedding() -> None:
    x = torch.randn(4, 8, 3, 3)
    plain = Head(8, embedding_dim=32)
    assert isinstance(plain.layer_norm, torch.nn.Identity)
    assert plain(x).shape == (4, 32)
    assert plain.embedding_dim == 32
    affine = Head(8, embedding_dim=32, layer_norm=True)
    assert affine.layer_norm.weight is not None
    no_affine = Head(8, embedding_dim=32, layer_norm="no_affine")
    assert isinstance(no_affine.layer_norm, torch.nn.LayerNorm)
    assert no_affine.layer_norm.weight is None
    assert sum(p.numel() for p in no_affine.parameters()) == 8 * 32 + 32
    # the LayerNorm output (before the linear layer) has zero mean and unit variance
    pooled = no_affine.layer_norm(no_affine.pool(x))
    torch.testing.assert_close(pooled.mean(dim=1), torch.zeros(4), atol=1e-5, rtol=0)
    identity = Head(8, embedding_dim=None, normalization="none")
    assert identity.embedding_dim == 8
    assert list(identity.parameters()) == []


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "128"])
def test_bad_embedding_dim_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match="embedding_dim must be a positive int"):
        Head(8, embedding_dim=bad)  # type: ignore[arg-type]


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="unknown pooling 'mean'.*avg, avg\\+max, cls, gem"):
        Head(8, pooling="mean")
    with pytest.raises(KeyError, match="unknown normalization 'L2'.*beta, l2, none, poincare"):
        Head(8, normalization="L2")
    with pytest.raises(ValueError, match="layer_norm must be one of"):
        Head(8, layer_norm="yes")
    with pytest.raises(ValueError, match="layer_norm must be one of"):
        Head(8, layer_norm=1)  # type: ignore[arg-type]


def test_inconsistent_or_invalid_normalisation_parameters() -> None:
    with pytest.raises(ValueError, match="beta=0.5 is only used by normalization='beta'"):
        Head(8, beta=0.5)
    with pytest.raises(ValueError, match="curvature must be a positive float"):
        Head(8, normalization="poincare", curvature=0.0)
    with pytest.raises(ValueError, match="clip_radius must be a positive float"):
        Head(8, normalization="poincare", clip_radius=-1.0)
    with pytest.raises(ValueError, match="beta must be a finite float"):
        Head(8, normalization="beta", beta=float("nan"))


def test_gem_overflow_safe_form_has_the_textbook_value_and_gradients() -> None:
    from fairdml.models.heads import GeMPooling

    gem = GeMPooling().double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    gem(x).sum().backward()
    grad_x, grad_p = x.grad.clone(), gem.p.grad.clone()
    x.grad, gem.p.grad = None, None
    textbook = x.clamp(min=1e-6).pow(gem.p).mean(dim=(-2, -1)).pow(1 / gem.p)
    textbook.sum().backward()
    torch.testing.assert_close(grad_x, x.grad)
    torch.testing.assert_close(grad_p, gem.p.grad)
    # float32 with p = 60 and activations of 20: the textbook form overflows, this one does not
    gem32 = GeMPooling(p=60.0)
    big = torch.full((1, 1, 2, 2), 20.0)
    assert torch.isinf(big.pow(60.0).mean()).item()
    assert gem32(big).item() == pytest.approx(20.0, rel=1e-5)
