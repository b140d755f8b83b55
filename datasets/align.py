"""Face alignment to the standard ArcFace 112×112 crop (the networks' input is aligned from 5 landmarks).

A similarity transform (rotation, uniform scale, translation; Umeyama's least-squares estimate) maps the
five landmarks — left eye, right eye, nose tip, left mouth corner, right mouth corner, in image pixel
coordinates (x, y), "left" as seen in the image — onto :data:`ARCFACE_TEMPLATE`.
"""
import os

import numpy as np

__all__ = ["ARCFACE_TEMPLATE", "CROP_SIZE", "similarity_transform", "align_face", "read_image",
           "parse_landmarks", "prepare_face"]

CROP_SIZE = 112
# insightface's arcface_src for a 112×112 crop.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src, dst):
    """Least-squares similarity transform (Umeyama 1991) taking points ``src`` (K, 2) to ``dst`` (K, 2).

    Returns the 2×3 matrix ``M`` with ``dst ≈ src @ M[:, :2].T + M[:, 2]`` (no reflection).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"landmarks must be matching (K, 2) arrays with K >= 2, got {src.shape} and {dst.shape}")
    mean_s, mean_d = src.mean(0), dst.mean(0)
    s, d = src - mean_s, dst - mean_d
    var_s = (s ** 2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("the landmarks coincide; cannot estimate an alignment")
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1
    rot = u @ np.diag(sign) @ vt
    scale = (sigma * sign).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mean_d - scale * rot @ mean_s
    return m


def parse_landmarks(values):
    """Five (x, y) landmarks from 10 numbers (a flat list, a (5, 2) array or a string ``"x1,y1,...,x5,y5"``)."""
    if isinstance(values, str):
        parts = values.replace(",", " ").split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"landmarks must be 10 numbers x1,y1,...,x5,y5; got {values!r}") from None
    points = np.asarray(values, dtype=np.float64)
    if points.size != 10:
        raise ValueError(f"expected 5 landmarks (10 numbers: eyes, nose, mouth corners), got {points.size} numbers")
    points = points.reshape(5, 2)
    if not np.all(np.isfinite(points)):
        raise ValueError("landmarks must be finite numbers")
    return points


def align_face(image, landmarks, size=CROP_SIZE):
    """Warp ``image`` (H, W, 3) uint8 so its 5 ``landmarks`` land on the ArcFace template.

    Returns the (size, size, 3) crop in the image's channel order. ``size`` other than 112 scales the
    template.
    """
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) colour image, got shape {image.shape}")
    matrix = similarity_transform(parse_landmarks(landmarks), ARCFACE_TEMPLATE * (size / CROP_SIZE))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def read_image(path):
    """Read an image file as RGB uint8 (H, W, 3). Raises FileNotFoundError / ValueError with the path."""
    import cv2

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image (could not decode it as JPEG/PNG/BMP/...)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def prepare_face(path, landmarks=None, size=CROP_SIZE):
    """RGB uint8 (size, size, 3) face crop from an image file.

    With ``landmarks`` the image is aligned to the template. Without, it must already be an aligned
    ``size``×``size`` crop; anything else is refused with a message saying what to supply.
    """
    image = read_image(path)
    if landmarks is not None:
        return align_face(image, landmarks, size)
    if image.shape[:2] != (size, size):
        raise ValueError(f"{path}: image is {image.shape[1]}×{image.shape[0]}, not an aligned {size}×{size} "
                         "face crop; give its 5 landmarks (eyes, nose, mouth corners) to align it")
    return image
