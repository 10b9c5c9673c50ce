from dataclasses import replace

import pytest
import torch

from splatkern import data, stroke_render
from splatkern.models import ARTICLE_GESTURE, Commands, GestureDecoder, ModelConfig, build_model, draw
from splatkern.models.gesture import START, SWEEP_END_X
from splatkern.models.markers import VAR_FLOOR, VARCOEF, sigma_pixels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "test", limit=6).images


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("model,points", [("gesture", 25), ("static", 10), ("gesture", 7)])
def test_shapes_and_output_ranges(digits, model, points, encoder):
    torch.manual_seed(0)
    autoencoder = build_model(ModelConfig(model=model, encoder=encoder, points=points, strokes=1))
    image, commands = autoencoder(digits)
    batch = len(digits)
    assert image.shape == (batch, 28, 28)
    assert float(image.detach().min()) >= 0.0 and float(image.detach().max()) <= 1.0
    assert commands.positions.shape == (batch, points, 2)
    assert commands.sizes.shape == commands.intensities.shape == (batch, points)
    assert ((commands.sizes > 0) & (commands.sizes < 1)).all()
    assert ((commands.intensities > 0) & (commands.intensities <= 1)).all()
    assert commands.features.shape == (batch, 3 * points)  # (vx, vy, intensity) or (x, y, size)
    if model == "static":
        assert ((commands.positions > 0) & (commands.positions < 1)).all()
        assert (commands.intensities == 1).all()
    image.sum().backward()  # gradients reach the encoder's first layer
    first = next(autoencoder.encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_gesture_starts_at_the_start_point_and_moves_by_an_exclusive_cumsum():
    torch.manual_seed(0)
    decoder = GestureDecoder(in_features=5, points=6, step_size=3.0)
    features = torch.randn(4, 5) * 10  # large logits: steps near the step-size bound
    commands = decoder(features)
    logits = decoder.head(features).view(4, 6, 4)
    velocities = torch.tanh(logits[..., [1, 0]]) * 3.0 / 28  # (vx, vy) in image units
    assert torch.equal(commands.positions[:, 0], torch.tensor(START).expand(4, 2))
    expected = torch.tensor(START) + torch.cumsum(velocities, dim=1)[:, :-1]  # the last velocity is not used
    torch.testing.assert_close(commands.positions[:, 1:], expected)
    steps = commands.positions.diff(dim=1).abs()
    assert (steps <= 3.0 / 28 + 1e-7).all()


def test_marker_size_follows_the_article_variance_in_normalised_coordinates():
    """The article draws amp * exp(-d^2 / VAR2) with d in image units (pixel j at j / 28)."""
    positions = torch.tensor([[[0.31, 0.62], [0.7, 0.2]]])
    sizes = torch.tensor([[0.9, 0.2]])
    intensities = torch.tensor([[0.8, 1.0]])
    commands = Commands(positions, sizes, intensities, features=torch.empty(1, 0))
    grid = torch.arange(28) / 28
    dx = grid[None, None, :] - positions[0, :, 0, None, None]
    dy = grid[None, :, None] - positions[0, :, 1, None, None]
    d2 = dx**2 + dy**2
    var2 = sizes[0, :, None, None] * VARCOEF + VAR_FLOOR
    article = (intensities[0, :, None, None] * torch.exp(-d2 / var2)).amax(dim=0)
    torch.testing.assert_close(draw(commands, 28)[0], article, atol=1e-6, rtol=1e-5)


def test_sweep_init_starts_every_image_with_one_line_across_the_canvas(digits):
    torch.manual_seed(3)
    with torch.no_grad():
        _, commands = build_model(ModelConfig(model="gesture", init="sweep", strokes=1))(digits)
    xs, ys = commands.positions[..., 0], commands.positions[..., 1]
    assert torch.allclose(xs[:, -1], torch.full((len(digits),), SWEEP_END_X), atol=0.05)
    assert torch.allclose(ys, torch.full_like(ys, START[1]), atol=0.05)  # within 1.4 px of the middle row
    assert (xs.diff(dim=1) > 0).all()  # left to right


def test_commands_redraw_at_any_resolution(digits):
    torch.manual_seed(0)
    model = build_model(ModelConfig())
    with torch.no_grad():
        commands = model.commands(digits)
    small, large = draw(commands, 28), draw(commands, 112)
    assert large.shape == (len(digits), 112, 112)
    # pixel (i, j) at 28 is pixel (4i, 4j) at 112: the same point of the image, the same value
    torch.testing.assert_close(large[:, ::4, ::4], small, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("field,value", [("model", "spline"), ("encoder", "vit"), ("init", "zeros")])
def test_unknown_choices_are_refused(field, value):
    with pytest.raises(ValueError, match=f"unknown {field}"):
        build_model(ModelConfig(**{field: value}))


@pytest.mark.parametrize("composite", ["softor", "over", "smoothmax"])
def test_the_model_draws_with_its_composite(digits, composite):
    """ModelConfig.composite (train --composite) reaches splat_render: the model's image is its commands
    drawn in that mode, and every marker gets gradient."""
    torch.manual_seed(0)
    model = build_model(replace(ARTICLE_GESTURE, composite=composite, temperature=0.3, points=9))
    images, commands = model(digits[:4])
    torch.testing.assert_close(images, draw(commands, 28, composite=composite, temperature=0.3))
    assert not torch.allclose(images, draw(commands, 28))
    images.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("settings, message", [(dict(composite="sum"), "composite must be one of"),
                                               (dict(composite="smoothmax", temperature=0.0), "temperature must be")])
def test_bad_composite_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        build_model(ModelConfig(**settings))


def test_the_stroke_primitive_draws_each_stroke_as_one_polyline(digits):
    """--primitive stroke: the model's image is stroke_render of its markers as one stroke's vertices (vertex
    sigmas and amps from the markers' sizes and intensities); unlike points, the line has no gaps."""
    torch.manual_seed(0)
    model = build_model(replace(ARTICLE_GESTURE, primitive="stroke", points=6, step_size=5.0))
    images, commands = model(digits[:3])
    positions, sizes, intensities = commands.as_strokes()
    assert positions.shape == (3, 1, 6, 2) and sizes.shape == intensities.shape == (3, 1, 6)
    expected = stroke_render(positions * 28, sigma_pixels(sizes, 28), intensities, height=28, width=28)
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    dots = draw(commands, 28)  # the same commands as points
    assert (images >= dots - 1e-6).all() and (images - dots).amax() > 0.1  # the line fills between the dots
    images.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_multi_stroke_gestures_lift_the_pen_between_strokes(digits):
    """--strokes K: K strokes of `points` markers, each from its own learned start point; drawing them is
    the max of drawing each stroke alone (no segment joins one stroke's end to the next one's start)."""
    torch.manual_seed(1)
    model = build_model(ModelConfig(primitive="stroke", strokes=3, points=5, init="default", composite="max"))
    images, commands = model(digits[:4])
    assert commands.positions.shape == (4, 15, 2) and commands.features.shape == (4, 15 * 3 + 3 * 2)
    positions, sizes, intensities = commands.as_strokes()
    starts = torch.sigmoid(model.decoder.start_head(model.encoder(digits[:4]))).view(4, 3, 2)
    torch.testing.assert_close(positions[:, :, 0], starts)
    alone = [draw(Commands(positions[:, k], sizes[:, k], intensities[:, k], commands.features, strokes=1), 28,
                  primitive="stroke") for k in range(3)]
    torch.testing.assert_close(images, torch.stack(alone).amax(dim=0), rtol=0, atol=0)
    images.sum().backward()
    assert model.decoder.start_head.weight.grad.abs().sum() > 0  # the start points are learned


def test_sweep_init_of_k_strokes_draws_k_parallel_lines(digits):
    torch.manual_seed(3)
    with torch.no_grad():
        _, commands = build_model(ModelConfig(strokes=3, points=12))(digits)
    positions = commands.as_strokes()[0]
    xs, ys = positions[..., 0], positions[..., 1]
    heights = torch.tensor([1 / 6, 3 / 6, 5 / 6])[None, :, None]
    assert torch.allclose(ys, heights.expand_as(ys), atol=0.05)
    assert torch.allclose(xs[:, :, 0], torch.full_like(xs[:, :, 0], START[0]), atol=0.05)
    assert torch.allclose(xs[:, :, -1], torch.full_like(xs[:, :, -1], SWEEP_END_X), atol=0.05)


def test_strokes_redraw_as_lines_at_any_resolution(digits):
    torch.manual_seed(0)
    model = build_model(ModelConfig(primitive="stroke", strokes=2, points=7))
    with torch.no_grad():
        commands = model.commands(digits)
        small, large = model.draw(commands, 28), model.draw(commands, 112)
    torch.testing.assert_close(large[:, ::4, ::4], small, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("settings, message", [
    (dict(primitive="spline"), "primitive must be one of"),
    (dict(model="static", primitive="stroke"), "need the gesture model"),
    (dict(model="static", strokes=2), "need the gesture model"),
    (dict(strokes=0), "strokes must be at least 1"),
])
def test_bad_primitive_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        build_model(ModelConfig(**settings))


def test_unordered_markers_do_not_draw_as_strokes(digits):
    torch.manual_seed(0)
    with torch.no_grad():
        commands = build_model(ModelConfig(model="static")).commands(digits)
    with pytest.raises(ValueError, match="unordered markers"):
        draw(commands, 28, primitive="stroke")
