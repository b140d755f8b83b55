"""Generated face-like data for the no-data path: MS1MV2-layout records and verification ``.bin`` sets.

Each identity is a code of discrete trait levels (face width and height, eye spacing/size/height, nose
length, mouth width, eyebrow thickness, skin tone, hair colour and style, iris colour, skin texture and
facial hair); any two identities differ in at least ``MIN_TRAIT_DIFF`` traits. Every image re-draws the
identity under nuisance: in-plane rotation, scale, shift, yaw-like squash, expression, small trait drift,
strong colour casts and lighting gradients, blur, noise, occlusion patches and background clutter, so that
raw pixel statistics do not identify a person and verification has to be learnt. Verification sets use
identities that are not in the training set. Everything is deterministic from ``seed`` (each image has its
own random stream keyed by ``(seed, set, identity, image)``, so worker count does not matter). Files are
written through :class:`datasets.recordio.MS1MV2Writer` and :func:`datasets.verification_bin.write_bin`, so
the default run exercises the real readers.

``renderer="cheap"`` is for the dataset's *shape* rather than its content, e.g. MS1MV2's 85,742 identities
(``tools/make_synthetic.py DIR --identities 85742 --images-per-identity 3 --renderer cheap``, a few minutes):
a few hundred base faces drawn once at 112×112 by the full renderer, each identity a base face with its own
colour tint and skin marks, and every image that identity's face under a cheap nuisance (rotation, scale,
shift, lighting, background gradient, noise). The records are the same valid 112×112 JPEGs in the same
MS1MV2 layout with a real class structure (every image of an identity shows that identity); what it gives up
is the variety that makes the full renderer a learning problem. Verification sets keep the full renderer.
"""
import json
import multiprocessing
import os
import shutil
import tempfile
import time

import cv2
import numpy as np

from .errors import DataError
from .recordio import MS1MV2Writer
from .verification_bin import IMAGE_SIZE, write_bin

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

# per-set nuisance strengths. Lighting / colour cast / background are strong (they defeat raw pixel
# statistics and untrained networks); geometry, blur, noise and occlusion are moderate so that a small
# network can learn the traits in a few epochs.
NUISANCE = {
    "train": dict(rotate=12, scale=0.07, shift=4, yaw=0.18, light=0.45, blur=0.9, noise=7, occlude=0.1,
                  drift=0.12, clutter=6, age=0.5),
    "synth_lfw": dict(rotate=10, scale=0.06, shift=4, yaw=0.12, light=0.40, blur=0.8, noise=6, occlude=0.1,
                      drift=0.1, clutter=6),
    "synth_cfp_fp": dict(rotate=10, scale=0.06, shift=4, yaw=0.25, light=0.40, blur=0.8, noise=6, occlude=0.1,
                         drift=0.1, clutter=6),
    "synth_agedb_30": dict(rotate=10, scale=0.06, shift=4, yaw=0.12, light=0.45, blur=0.9, noise=7, occlude=0.15,
                           drift=0.15, clutter=6, age=1.0),
}
EVAL_SETS = ("synth_lfw", "synth_cfp_fp", "synth_agedb_30")
DEFAULTS = dict(num_identities=400, images_per_identity=14, pairs_per_set=600, eval_identities=120)
RENDERERS = ("full", "cheap")
CHEAP_BASE_FACES = 1024  # base faces of the cheap renderer (identities share one in groups)
CHEAP_NUISANCE = dict(rotate=10.0, scale=0.06, shift=3.0, light=0.3, noise=5.0)
_CHEAP_SET_ID = 8  # random streams of the cheap renderer: (seed, 8, kind, ...), apart from the full renderer's
GENERATOR_VERSION = 5  # bump when the rendering changes, so cached datasets are regenerated
_SET_IDS = {"train": 0, "synth_lfw": 1, "synth_cfp_fp": 2, "synth_agedb_30": 3}

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


def _identity_params(code, identity_seed):
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


def _ellipse(canvas, centre, axes, colour, angle=0.0):
    cv2.ellipse(canvas, (int(centre[0]), int(centre[1])), (max(int(axes[0]), 1), max(int(axes[1]), 1)), angle, 0, 360,
                colour, -1, cv2.LINE_AA)


def _draw_face(p, rng, nz, yaw):
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
    ell = _ellipse
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
    """Render one RGB uint8 ``(112, 112, 3)`` image of an identity (``_identity_params``) under nuisance."""
    nz = nuisance
    yaw = rng.uniform(-nz["yaw"], nz["yaw"])
    face, mask = _draw_face(params, rng, nz, yaw)
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


def _encode_jpeg(rgb, quality):
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes()


def _render_job(job):
    """Worker: render a list of (set_name, identity_index, image_index, code) -> JPEG bytes."""
    seed, quality, items = job
    cv2.setNumThreads(1)
    out = []
    params_cache = {}
    for set_name, ident, image_idx, code in items:
        key = (set_name, ident)
        if key not in params_cache:
            params_cache[key] = _identity_params(np.asarray(code), [seed, _SET_IDS[set_name], ident, 7])
        rng = np.random.default_rng([seed, _SET_IDS[set_name], ident, image_idx])
        out.append(_encode_jpeg(render_image(params_cache[key], rng, NUISANCE[set_name]), quality))
    return out


def _render_all(items, seed, quality, workers, desc):
    from tqdm import tqdm
    chunk = 64
    jobs = [(seed, quality, items[i:i + chunk]) for i in range(0, len(items), chunk)]
    results = []
    with tqdm(total=len(items), desc=desc, unit="img", leave=False, disable=None) as bar:
        if workers > 1:
            ctx = multiprocessing.get_context("fork")
            with ctx.Pool(workers) as pool:
                for r in pool.imap(_render_job, jobs):
                    results.extend(r)
                    bar.update(len(r))
        else:
            for job in jobs:
                r = _render_job(job)
                results.extend(r)
                bar.update(len(r))
    return results


# ------------------------------------------------------------------------------- cheap renderer
def _cheap_base(code, seed, base):
    """Base face ``base`` at 112×112: (BGR float32 face, float32 mask), canonical pose, no nuisance."""
    params = _identity_params(np.asarray(code), [seed, _CHEAP_SET_ID, 0, base])
    rng = np.random.default_rng([seed, _CHEAP_SET_ID, 1, base])
    face, mask = _draw_face(params, rng, {"drift": 0.0, "age": 0.0}, 0.0)
    return cv2.pyrDown(face), cv2.pyrDown(mask)


def _cheap_identity(face, seed, ident):
    """Identity ``ident``'s face: its base face with its own colour tint and three skin marks."""
    rng = np.random.default_rng([seed, _CHEAP_SET_ID, 2, ident])
    face = np.ascontiguousarray(face * rng.uniform(0.75, 1.25, 3).astype(np.float32))
    c = IMAGE_SIZE / 2.0
    for _ in range(3):
        centre = (c + rng.uniform(-20, 20), c + 3 + rng.uniform(-22, 22))
        axes = rng.uniform(1.5, 6.0, 2)
        colour = tuple(float(v) for v in rng.uniform(0, 255, 3))
        _ellipse(face, centre, axes, colour, float(rng.uniform(0, 180)))
    return face


def _cheap_image(face, mask, rng, noise_bank):
    """One cheap training image (RGB uint8 112×112) of a prepared identity face."""
    nz = CHEAP_NUISANCE
    c = IMAGE_SIZE / 2.0
    m = cv2.getRotationMatrix2D((c, c), rng.uniform(-nz["rotate"], nz["rotate"]),
                                1 + rng.uniform(-nz["scale"], nz["scale"]))
    m[:, 2] += rng.uniform(-nz["shift"], nz["shift"], 2)
    face = cv2.warpAffine(face, m, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(mask, m, (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR)
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    ramp = _XX[::2, ::2] / np.float32(_S) if rng.random() < 0.5 else _YY[::2, ::2] / np.float32(_S)
    background = cv2.merge([c0[k] + (c1[k] - c0[k]) * ramp for k in range(3)])
    img = cv2.blendLinear(face, background, alpha, 1.0 - alpha)
    gain = rng.uniform(1 - nz["light"], 1 + nz["light"]) * rng.uniform(0.9, 1.1, 3)
    oy, ox = (int(v) for v in rng.integers(0, noise_bank.shape[0] - IMAGE_SIZE, 2))
    sigma = np.float32(rng.uniform(0, nz["noise"]))
    img = cv2.scaleAdd(noise_bank[oy:oy + IMAGE_SIZE, ox:ox + IMAGE_SIZE], float(sigma),
                       cv2.multiply(img, tuple(float(g) for g in gain) + (0.0,)))
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8)[..., ::-1])  # BGR -> RGB


def _cheap_job(job):
    """Worker: identities ``[start, end)`` of the cheap renderer -> list of (identity, JPEG bytes)."""
    seed, quality, start, end, per_identity, group, base_codes = job
    cv2.setNumThreads(1)
    noise_bank = np.random.default_rng([seed, _CHEAP_SET_ID, 3]).standard_normal(
        (IMAGE_SIZE + 48, IMAGE_SIZE + 48, 3), dtype=np.float32)
    bases, out = {}, []
    for ident in range(start, end):
        base = ident // group
        if base not in bases:
            bases[base] = _cheap_base(base_codes[base - start // group], seed, base)
        face, mask = bases[base]
        identity_face = _cheap_identity(face, seed, ident)
        for j in range(per_identity):
            rng = np.random.default_rng([seed, _CHEAP_SET_ID, 4, ident, j])
            out.append((ident, _encode_jpeg(_cheap_image(identity_face, mask, rng, noise_bank), quality)))
    return out


def _write_cheap_train(writer, base_codes, num_identities, per_identity, seed, quality, workers):
    """Render the training identities with the cheap renderer straight into ``writer`` (streamed, in order)."""
    from tqdm import tqdm
    group = -(-num_identities // len(base_codes))  # identities per base face
    chunk = max(group, 256 // group * group)  # whole groups per job: each job draws its base faces once
    jobs = []
    for start in range(0, num_identities, chunk):
        end = min(start + chunk, num_identities)
        codes = base_codes[start // group:(end - 1) // group + 1].tolist()
        jobs.append((seed, quality, start, end, per_identity, group, codes))
    with tqdm(total=num_identities * per_identity, desc="synthetic train (cheap)", unit="img", leave=False,
              disable=None) as bar:
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for part in pool.imap(_cheap_job, jobs):
                    for ident, buf in part:
                        writer.add(ident, buf)
                    bar.update(len(part))
        else:
            for job in jobs:
                part = _cheap_job(job)
                for ident, buf in part:
                    writer.add(ident, buf)
                bar.update(len(part))


def _pairs_plan(set_name, codes, pairs, seed):
    """Pairs for one set: 10 folds, each half same / half different (as LFW); returns items and issame."""
    rng = np.random.default_rng([seed, _SET_IDS[set_name], 1234])
    n_ids = len(codes)
    per_fold = pairs // 10
    items, issame = [], []
    counter = np.zeros(n_ids, dtype=np.int64)

    def take(ident):
        items.append((set_name, int(ident), int(counter[ident]), codes[ident].tolist()))
        counter[ident] += 1

    for _ in range(10):
        for k in range(per_fold):
            same = k < per_fold // 2
            a = rng.integers(n_ids)
            b = a if same else (a + rng.integers(1, n_ids)) % n_ids
            take(a)
            take(b)
            issame.append(same)
    return items, issame


def generate_dataset(out_dir, num_identities=DEFAULTS["num_identities"],
                     images_per_identity=DEFAULTS["images_per_identity"], pairs_per_set=DEFAULTS["pairs_per_set"],
                     seed=0, eval_identities=DEFAULTS["eval_identities"], workers=None, quality=90,
                     sets=EVAL_SETS, renderer="full", base_faces=CHEAP_BASE_FACES):
    """Write a synthetic dataset into ``out_dir``; returns a summary dict (also saved as ``synthetic.json``).

    Files: ``train.rec``/``train.idx``/``property`` (MS1MV2 layout, ``num_identities`` x ``images_per_identity``
    JPEG images) and one ``<set>.bin`` per name in ``sets`` (``pairs_per_set`` pairs, a multiple of 20: ten
    folds each half same / half different), drawn from ``eval_identities`` identities per set that are not
    in the training set. Deterministic from ``seed``; ``workers`` processes render (default: CPU count).
    ``renderer``: ``full`` (every image drawn under the full nuisance) or ``cheap`` (see the module docstring;
    ``base_faces`` base faces shared by the identities, for class counts such as MS1MV2's 85,742, where the
    pairwise-distinct trait codes of the full renderer would also take long to draw).
    """
    if num_identities < 2 or images_per_identity < 2:
        raise ValueError("need at least 2 identities with 2 images each")
    if pairs_per_set <= 0 or pairs_per_set % 20:
        raise ValueError(f"pairs_per_set must be a positive multiple of 20 (10 balanced folds), got {pairs_per_set}")
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be one of {', '.join(RENDERERS)}, got {renderer!r}")
    unknown = [s for s in sets if s not in NUISANCE or s == "train"]
    if unknown:
        raise ValueError(f"unknown synthetic sets {unknown}; choose from {list(EVAL_SETS)}")
    workers = workers or min(os.cpu_count() or 1, 8)
    start = time.time()
    os.makedirs(out_dir, exist_ok=True)
    num_images = num_identities * images_per_identity
    train_count = num_identities if renderer == "full" else min(int(base_faces), num_identities)
    codes = make_identity_codes(train_count + eval_identities * len(sets), seed)
    num_identities_codes = train_count
    writer = MS1MV2Writer(out_dir, num_images, num_identities)
    if renderer == "full":
        items = [("train", i, j, codes[i].tolist()) for i in range(num_identities)
                 for j in range(images_per_identity)]
        encoded = _render_all(items, seed, quality, workers, "synthetic train")
        for (_, ident, _, _), buf in zip(items, encoded):
            writer.add(ident, buf)
    else:
        _write_cheap_train(writer, codes[:train_count], num_identities, images_per_identity, seed, quality,
                           workers)
    writer.close()
    for k, name in enumerate(sets):
        pool = codes[num_identities_codes + k * eval_identities:num_identities_codes + (k + 1) * eval_identities]
        pair_items, issame = _pairs_plan(name, pool, pairs_per_set, seed)
        encoded = _render_all(pair_items, seed, quality, workers, name)
        write_bin(os.path.join(out_dir, name + ".bin"), encoded, issame)
    summary = dict(version=GENERATOR_VERSION, seed=seed, num_identities=num_identities,
                   images_per_identity=images_per_identity,
                   num_images=num_images, pairs_per_set=pairs_per_set, eval_identities=eval_identities,
                   sets=list(sets), quality=quality, seconds=round(time.time() - start, 1))
    if renderer != "full":
        summary.update(renderer=renderer, base_faces=train_count)
    with open(os.path.join(out_dir, "synthetic.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _complete(folder, expected=None):
    names = ["train.rec", "train.idx", "property", "synthetic.json"] + [s + ".bin" for s in EVAL_SETS]
    if not all(os.path.isfile(os.path.join(folder, n)) for n in names):
        return False
    if expected is not None:
        with open(os.path.join(folder, "synthetic.json")) as f:
            summary = json.load(f)
        return all(summary.get(k) == v for k, v in expected.items())
    return True


def ensure_default_dataset(root=".cache/synthetic", seed=0, **sizes):
    """Generate the default synthetic dataset into ``root`` once and return ``root``.

    Reuses ``root`` when it holds a complete dataset made with the same seed and sizes; otherwise generates
    into a temporary folder next to it and renames it into place (atomic, safe against interruption).
    ``sizes`` override :data:`DEFAULTS`.
    """
    settings = dict(DEFAULTS, **sizes)
    expected = dict(settings, seed=seed, version=GENERATOR_VERSION)
    if _complete(root, expected):
        return root
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"{root}: exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".synthetic-", dir=parent)
    try:
        generate_dataset(tmp, seed=seed, **settings)
        if os.path.isdir(root) and not _complete(root, expected):  # stale or partial: move it aside
            old = tempfile.mkdtemp(prefix=".synthetic-old-", dir=parent)
            os.replace(root, os.path.join(old, "data"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:
            if not _complete(root, expected):  # another process finished first: use its copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
