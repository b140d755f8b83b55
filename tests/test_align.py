"""datasets/align.py: similarity alignment to the ArcFace 112×112 template."""
import numpy as np
import pytest

from datasets.align import ARCFACE_TEMPLATE, align_face, parse_landmarks, similarity_transform


def test_template_maps_onto_itself():
    m = similarity_transform(ARCFACE_TEMPLATE, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    image = np.random.RandomState(0).randint(0, 255, (112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(image, ARCFACE_TEMPLATE), image)


def test_recovers_rotation_scale_and_shift():
    angle, scale, shift = 0.4, 1.8, np.array([30.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_TEMPLATE @ rot.T + shift
    m = similarity_transform(points, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(points @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE, atol=1e-9)


def test_aligned_crop_puts_marks_on_template():
    """Draw dots at landmarks in a larger, scaled and shifted image; after alignment they sit on the template."""
    import cv2

    image = np.zeros((300, 260, 3), np.uint8)
    points = ARCFACE_TEMPLATE * 2.0 + [20, 40]
    for x, y in points:
        cv2.circle(image, (int(round(x)), int(round(y))), 3, (255, 255, 255), -1)
    crop = align_face(image, points)
    assert crop.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert crop[int(round(y)), int(round(x))].max() > 128


def test_bad_landmarks_are_refused():
    with pytest.raises(ValueError, match="10 numbers"):
        parse_landmarks("1,2,3")
    with pytest.raises(ValueError, match="coincide"):
        similarity_transform(np.zeros((5, 2)), ARCFACE_TEMPLATE)
