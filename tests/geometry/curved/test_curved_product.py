"""Products: signatures, the product metric by hand, factor-wise maps."""

import math

import pytest
import torch

from moescope.geometry.curved import (
    Euclidean,
    Lorentz,
    PoincareBall,
    ProductManifold,
    Sphere,
    format_signature,
    parse_signature,
    poincare,
    spherical,
)

F64 = torch.float64


@pytest.mark.parametrize(("text", "kinds", "width"), [
    ("H2xS1", [("H", 2), ("S", 1)], 4),
    ("H²×S¹", [("H", 2), ("S", 1)], 4),
    ("H^2 x S^1 x E^2", [("H", 2), ("S", 1), ("E", 2)], 6),
    ("E3", [("E", 3)], 3),
    ("S3", [("S", 3)], 4),
])
def test_parse_signature(text, kinds, width):
    m = parse_signature(text)
    assert [(f.name, n) for f, n in m.factors] == kinds
    assert m.width == width and m.dim == sum(n for _, n in kinds)
    assert parse_signature(format_signature(m)).factors == m.factors
    assert format_signature(parse_signature("H2xS1"), pretty=True) == "H²×S¹"


def test_lorentz_factors_on_request():
    m = parse_signature("H2xE1", hyperbolic="lorentz", curvatures=[2.0, 1.0])
    assert isinstance(m.factors[0][0], Lorentz) and m.factors[0][0].c == 2.0 and m.width == 4


@pytest.mark.parametrize("bad", ["", "H0", "X2", "H2xx", "H-1", "2H"])
def test_bad_signatures(bad):
    with pytest.raises(ValueError, match="cannot read signature"):
        parse_signature(bad)


def test_bad_products():
    with pytest.raises(ValueError, match="one value per factor"):
        parse_signature("H2xS1", curvatures=[1.0])
    with pytest.raises(ValueError, match="at least one factor"):
        ProductManifold(())
    with pytest.raises(ValueError, match="dimension n >= 1"):
        ProductManifold(((Euclidean(), 0),))
    with pytest.raises(ValueError, match="have 4 coordinates"):
        parse_signature("H2xS1").dist(torch.zeros(3, dtype=F64), torch.zeros(3, dtype=F64))


def test_product_metric_by_hand():
    """H² × S¹ × E²: d² = d_H² + d_S² + d_E², each factor's distance derived by hand."""
    m = ProductManifold(((PoincareBall(), 2), (Sphere(), 1), (Euclidean(), 2)))
    # H²: 0 to (1/2, 0) is 2·artanh(1/2) = ln 3. S¹: a quarter turn is π/2. E²: a 3-4-5 triangle.
    x = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=F64)
    y = torch.tensor([0.5, 0.0, 0.0, 1.0, 3.0, 4.0], dtype=F64)
    expected = [math.log(3.0), math.pi / 2, 5.0]
    torch.testing.assert_close(m.component_dist(x, y), torch.tensor(expected, dtype=F64), rtol=1e-15, atol=0)
    assert m.dist(x, y).item() == pytest.approx(math.sqrt(sum(e * e for e in expected)), rel=1e-15)


def test_maps_act_factor_by_factor():
    g = torch.Generator().manual_seed(0)
    m = parse_signature("H2xS2xE1")
    x, y = m.random(6, generator=g), m.random(6, generator=g)
    m.check(x)
    u = m.logmap(x, y)
    hx, sx, ex = m.split(x)
    hy, sy, ey = m.split(y)
    torch.testing.assert_close(m.split(u)[0], poincare.logmap(hx, hy))
    torch.testing.assert_close(m.split(u)[1], spherical.logmap(sx, sy))
    torch.testing.assert_close(m.split(u)[2], ey - ex)
    torch.testing.assert_close(m.dist(m.expmap(x, u), y), torch.zeros(6, dtype=F64), atol=1e-9, rtol=0)
    v = m.proju(x, torch.randn(6, m.width, generator=g, dtype=F64))
    new, moved = m.expmap_transp(x, 0.1 * v, v)
    m.check(new)
    torch.testing.assert_close(m.inner(new, moved, moved), m.inner(x, v, v), rtol=1e-9, atol=0)
    pd = m.component_pdist(x)
    assert pd.shape == (6, 6, 3)
    torch.testing.assert_close(pd[1, 4], m.component_dist(x[1], x[4]))
