"""Drawing of the generated faces: identity codes of discrete traits and one image of an identity under nuisance.

An identity is a code of trait levels (face width and height, eye spacing/size/height, nose length, mouth
width, eyebrow thickness, skin tone, hair colour and style, iris colour, skin texture, facial hair); any two
identities of :func:`make_identity_codes` differ in at least ``MIN_TRAIT_DIFF`` traits. :func:`render_image`
draws one at 2x and returns a (112, 112, 3) uint8 RGB image. Used by :mod:`datasets.synthetic`.
"""
import cv2
import numpy as np

from .verification_bin import IMAGE_SIZE


# trait name -> number of levels
TRAITS = {
    "face_width": 3, "face_height": 3, "eye_spacing": 3, "eye_size": 3, "eye_height": 3, "nose_length": 3,
    "mouth_width": 3, "brow": 3, "skin": 5, "hair_colour": 6, "hair_style": 6, "iris": 4, "texture": 4,
    "facial_hair": 3,
}
TRAIT_NAMES = list(TRAITS)
MIN_TRAIT_DIFF = 4

SKIN = np.array([[236, 200, 170], [214, 170, 130], [188, 140, 100], [150, 100, 70], [105, 70, 50]], np.float32)
HAIR = np.array([[25, 20, 20], [95, 60, 35], [215, 185, 110], [170, 70, 30], [170, 170, 170], [60, 80, 170]],
                np.float32)
IRIS = np.array([[70, 45, 25], [60, 120, 190], [60, 140, 70], [40, 40, 40]], np.float32)

_S = 224  # drawing resolution (2x), downsampled to 112
_YY, _XX = np.mgrid[0:_S, 0:_S].astype(np.float32)


def make_identity_codes(count, seed, min_diff=MIN_TRAIT_DIFF):
    """``count`` trait codes (int array ``(count, len(TRAITS))``), pairwise differing in ``>= min_diff`` traits."""
    rng = np.random.default_rng([seed, 99])
    levels = np.array(list(TRAITS.values()))
    codes = np.empty((count, len(levels)), dtype=np.int64)
    n = 0
    tries = 0
    while n < count:
        cand = (rng.random((256, len(levels))) * levels).astype(np.int64)
        for c in cand:
            tries += 1
            if n == 0 or ((codes[:n] != c).sum(axis=1) >= min_diff).all():
                codes[n] = c
                n += 1
                if n == count:
                    break
        if tries > 200 * count + 10000:
            raise ValueError(f"cannot draw {count} identities differing in {min_diff} traits")
    return codes


def identity_params(code, identity_seed):
    """Continuous drawing parameters of one identity from its trait code."""
    t = dict(zip(TRAIT_NAMES, code.tolist()))
    rng = np.random.default_rng(identity_seed)
    lv = lambda name, lo, hi: lo + (hi - lo) * (t[name] + rng.uniform(-0.12, 0.12)) / max(TRAITS[name] - 1, 1)
    p = {
        "fw": lv("face_width", 54, 86), "fh": lv("face_height", 72, 104),
        "es": lv("eye_spacing", 20, 42), "er": lv("eye_size", 6, 14), "ey": lv("eye_height", 6, 26),
        "nl": lv("nose_length", 12, 38), "mw": lv("mouth_width", 12, 38), "brow": lv("brow", 1, 8),
        "skin": SKIN[t["skin"]] + rng.uniform(-8, 8, 3), "hair": HAIR[t["hair_colour"]] + rng.uniform(-10, 10, 3),
        "iris": IRIS[t["iris"]], "style": t["hair_style"], "texture": t["texture"], "facial_hair": t["facial_hair"],
        "brow_tilt": rng.uniform(-4, 4),
        "marks": rng.uniform(-1, 1, (40, 2)).astype(np.float32),
    }
    return p


def _color(c):
    r, g, b = (min(max(float(v), 0.0), 255.0) for v in c)
    return (b, g, r)  # RGB -> BGR for cv2


def ellipse(canvas, centre, axes, colour, angle=0.0):
    cv2.ellipse(canvas, (int(centre[0]), int(centre[1])), (max(int(axes[0]), 1), max(int(axes[1]), 1)), angle, 0, 360,
                colour, -1, cv2.LINE_AA)


def draw_face(p, rng, nz, yaw):
    """Draw one face at 224x224 (BGR float canvas, mask) in canonical position with expression/drift."""
    d = nz["drift"]
    jit = lambda v, rel: v * (1 + rng.uniform(-d, d) * rel)
    fw, fh = jit(p["fw"], 0.12), jit(p["fh"], 0.10)
    es, er, ey = jit(p["es"], 0.12), jit(p["er"], 0.15), p["ey"] + rng.uniform(-2, 2) * d * 4
    nl, mw = jit(p["nl"], 0.12), jit(p["mw"], 0.12)
    age = nz.get("age", 0.0) * rng.uniform(0, 1)
    skin = p["skin"] * (1 + rng.uniform(-0.06, 0.06) * d * 4)
    hair = p["hair"] * (1 - 0.3 * age) + 170 * 0.3 * age
    cx, cy = _S / 2.0, _S / 2.0 + 6
    fx = cx + yaw * fw * 0.35  # features slide towards the turned side
    img = np.zeros((_S, _S, 3), np.float32)
    mask = np.zeros((_S, _S), np.float32)
    style = p["style"]
    ell = ellipse
    hcol, scol = _color(hair), _color(skin)
    if style == 2:  # long hair behind the head
        pts = np.array([[cx - fw * 1.25, cy - fh * 0.3], [cx + fw * 1.25, cy - fh * 0.3],
                        [cx + fw * 1.35, cy + fh * 1.1], [cx - fw * 1.35, cy + fh * 1.1]], np.int32)
        cv2.fillPoly(img, [pts], hcol, cv2.LINE_AA)
        cv2.fillPoly(mask, [pts], 1.0, cv2.LINE_AA)
    if style != 0:
        ell(img, (cx, cy - fh * 0.25), (fw * 1.12, fh * 0.85), hcol)
        ell(mask, (cx, cy - fh * 0.25), (fw * 1.12, fh * 0.85), 1.0)
    for side in (-1, 1):  # ears
        ell(img, (cx + side * fw * 0.98, cy), (fw * 0.16, fh * 0.2), _color(skin * 0.9))
        ell(mask, (cx + side * fw * 0.98, cy), (fw * 0.16, fh * 0.2), 1.0)
    ell(img, (cx, cy), (fw, fh), scol)
    ell(mask, (cx, cy), (fw, fh), 1.0)
    inside = ((_XX - cx) / fw) ** 2 + ((_YY - cy) / fh) ** 2 < 1.0
    u = (_XX - cx) / fw
    top = cy - fh
    if style in (1, 2, 3, 4, 5):  # hairline over the forehead, clipped to the head
        if style == 1:
            line = top + fh * 0.42 + fh * 0.25 * u ** 2
        elif style == 2:
            line = top + fh * 0.5 + fh * 0.3 * np.abs(u)
        elif style == 3:  # bangs with a jagged edge
            line = top + fh * 0.72 + fh * 0.06 * np.sign(np.sin(_XX * 0.45))
        elif style == 4:  # side part: diagonal
            line = top + fh * 0.35 + fh * 0.35 * (u + 1) / 2
        else:  # receding with a crest
            line = top + fh * 0.22 + fh * 0.15 * np.abs(np.sin(u * 6))
        sel = inside & (_YY < line)
        img[sel] = hcol
    tex = p["texture"]
    marks = p["marks"]
    if tex == 1:  # freckles on cheeks
        for m in marks[:30]:
            x, y = fx + m[0] * fw * 0.7, cy + fh * 0.15 + m[1] * fh * 0.18
            cv2.circle(img, (int(x), int(y)), 2, _color(skin * 0.72), -1, cv2.LINE_AA)
    elif tex == 2:  # cheek stripes
        for side in (-1, 1):
            for k in range(3):
                y = cy + fh * (0.05 + 0.12 * k)
                cv2.line(img, (int(fx + side * fw * 0.45), int(y)), (int(fx + side * fw * 0.85), int(y - side * 0)),
                         _color(skin * 0.6), 3, cv2.LINE_AA)
    elif tex == 3:  # a large mark at an identity-specific place
        m = marks[0]
        ell(img, (fx + m[0] * fw * 0.55, cy + m[1] * fh * 0.35), (fw * 0.16, fh * 0.11), _color(skin * 0.55))
    eye_y = cy - ey
    blink = rng.uniform(0.55, 1.0)
    for side in (-1, 1):
        ex = fx + side * es
        ell(img, (ex, eye_y), (er * 1.5, er * blink), (245, 245, 245))
        cv2.circle(img, (int(ex), int(eye_y)), int(er * 0.8 * blink + 1), _color(p["iris"]), -1, cv2.LINE_AA)
        cv2.circle(img, (int(ex), int(eye_y)), int(er * 0.35 + 1), (10, 10, 10), -1, cv2.LINE_AA)
        by = eye_y - er * 1.6 - 3
        tilt = side * p["brow_tilt"]
        cv2.line(img, (int(ex - er * 1.6), int(by + tilt)), (int(ex + er * 1.6), int(by - tilt)),
                 _color(hair * 0.8), int(p["brow"] + 1), cv2.LINE_AA)
        if age > 0.4:  # wrinkles at the eye corners
            cv2.line(img, (int(ex + side * er * 1.8), int(eye_y)), (int(ex + side * er * 2.6), int(eye_y + 4)),
                     _color(skin * 0.75), 1, cv2.LINE_AA)
    nose_top, nose_bot = eye_y + 4, eye_y + 4 + nl
    cv2.line(img, (int(fx), int(nose_top)), (int(fx + 3), int(nose_bot)), _color(skin * 0.75), 3, cv2.LINE_AA)
    ell(img, (fx, nose_bot), (7, 4), _color(skin * 0.7))
    mouth_y = nose_bot + (cy + fh - nose_bot) * 0.38
    smile = rng.uniform(-0.3, 1.0)
    open_ = max(0.0, rng.uniform(-0.5, 1.0))
    lip = _color(skin * np.array([1.0, 0.55, 0.55]))
    if p["facial_hair"] == 2:  # beard
        sel = inside & (_YY > mouth_y - 6) & ((_XX - fx) ** 2 / (fw * 0.95) ** 2 + 0 < 1.0)
        img[sel] = hcol
    if p["facial_hair"] >= 1:  # moustache
        ell(img, (fx, mouth_y - 7), (mw * 0.75, 4), hcol)
    ell(img, (fx, mouth_y + smile * 2), (mw, 3 + open_ * 5), lip)
    if open_ > 0.3:
        ell(img, (fx, mouth_y + smile * 2), (mw * 0.8, open_ * 4), (40, 30, 60))
    return img, mask


def _background(rng, nz):
    size = IMAGE_SIZE
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(a) * _XX[::2, ::2] + np.sin(a) * _YY[::2, ::2]) / _S + 0.5
    bg = c0 + (c1 - c0) * ramp[..., None]
    bg = np.ascontiguousarray(bg.astype(np.float32))
    for _ in range(rng.integers(0, nz["clutter"] + 1)):
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(bg, (x, y), int(rng.integers(4, 20)), col, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(bg, (x, y), (x + int(rng.integers(5, 30)), y + int(rng.integers(5, 30))), col, -1)
        else:
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(bg, (x, y), (x2, y2), col, int(rng.integers(1, 5)), cv2.LINE_AA)
    return bg


def render_image(params, rng, nuisance):
    """Render one RGB uint8 ``(112, 112, 3)`` image of an identity (``identity_params``) under nuisance."""
    nz = nuisance
    yaw = rng.uniform(-nz["yaw"], nz["yaw"])
    face, mask = draw_face(params, rng, nz, yaw)
    face = cv2.pyrDown(face)
    mask = cv2.pyrDown(mask)
    angle = rng.uniform(-nz["rotate"], nz["rotate"])
    scale = 1 + rng.uniform(-nz["scale"], nz["scale"])
    shift = rng.uniform(-nz["shift"], nz["shift"], 2)
    c = IMAGE_SIZE / 2.0
    m = cv2.getRotationMatrix2D((c, c), angle, scale)
    squash = np.array([[1 - abs(yaw) * 0.6, 0, c * abs(yaw) * 0.6], [0, 1, 0], [0, 0, 1]], np.float64)
    m = (np.vstack([m, [0, 0, 1]]) @ squash)[:2]
    m[:, 2] += shift
    face = cv2.warpAffine(face, m, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, m, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR)[..., None]
    img = _background(rng, nz) * (1 - mask) + face * mask
    if rng.random() < nz["occlude"]:
        w, h = (int(v) for v in rng.integers(14, 36, 2))
        x, y = (int(v) for v in rng.integers(10, IMAGE_SIZE - 30, 2))
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + w, y + h), col, -1)
        else:
            cv2.ellipse(img, (x, y), (w // 2, h // 2), float(rng.uniform(0, 180)), 0, 360, col, -1, cv2.LINE_AA)
    light = nz["light"]
    gain = rng.uniform(1 - light, 1 + light) * rng.uniform(1 - light * 0.3, 1 + light * 0.3, 3)
    a = rng.uniform(0, 2 * np.pi)
    grad = 1 + rng.uniform(0, light * 1.5) * ((np.cos(a) * _XX[::2, ::2] + np.sin(a) * _YY[::2, ::2]) / _S)
    img = img * gain.astype(np.float32) * grad[..., None] + rng.uniform(-30, 30) * light
    sigma = rng.uniform(0, nz["blur"])
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0, nz["noise"]))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., ::-1])  # BGR -> RGB


def encode_jpeg(rgb, quality):
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes()
